"""The OpenVINO backend: same folders, same images at fp32, bf16 where the CPU has it (its cache: test_openvino_ir_cache.py).

Parity figures measured here on the tiny SD 1.x model and the shipped shapes model: fp32 under OpenVINO
gives the same uint8 images as ONNX Runtime (PSNR inf on both); bf16 gives 54 dB on the shapes model.
"""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app
from latentrt.export.validate import image_psnr
from latentrt.runtime import backend as backend_module
from latentrt.runtime.backends import openvino as ov_backend
from latentrt.runtime.images import read_parameters

pytest.importorskip("openvino", reason="the openvino extra is not installed")
HAS_BF16 = ov_backend.supports_bf16()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 for OpenVINO (AMX or AVX512-BF16)")
SHAPES_PROMPT = "a blue triangle at the bottom right on a gray background"
BF16_MIN_PSNR_DB = 35.0  # measured 54 dB on the shapes model at its defaults


def test_fp32_matches_onnxruntime(tiny_sd1, tmp_path):
    kwargs = dict(steps=3, guidance_scale=7.5, scheduler="ddim", seed=3, height=64, width=48)
    ours = Pipeline.from_folder(tiny_sd1[1], provider="openvino", precision="fp32", cache_dir=tmp_path)
    reference = Pipeline.from_folder(tiny_sd1[1], provider="cpu")
    assert (ours.provider, ours.precision) == ("openvino", "fp32")
    psnr = image_psnr(ours("a red circle", **kwargs).arrays, reference("a red circle", **kwargs).arrays)
    print(f"OpenVINO fp32 vs ONNX Runtime, tiny SD 1.x: PSNR {psnr:.1f} dB")
    assert psnr >= 60.0


@needs_bf16
def test_bf16_on_the_shipped_model(tmp_path):
    from training.shapes.judge import judge

    fast = Pipeline.default(provider="openvino", precision="bf16", cache_dir=tmp_path)
    exact = Pipeline.default(provider="cpu")
    prompts = [SHAPES_PROMPT, "a red circle at the top left on a white background"]
    a, b = fast(prompts, seed=0), exact(prompts, seed=0)
    psnr = image_psnr(a.arrays, b.arrays)
    print(f"OpenVINO bf16 vs ONNX Runtime fp32, shapes model: PSNR {psnr:.1f} dB")
    assert psnr >= BF16_MIN_PSNR_DB
    verdict = judge(a.arrays[0])
    assert (verdict.color, verdict.shape, verdict.background) == ("blue", "triangle", "gray")
    assert a.parameters[0].precision == "bf16" and a.parameters[0].backend == "openvino"


def test_auto_picks_openvino_and_the_native_precision(tmp_path):
    assert Pipeline.default(cache_dir=tmp_path).provider == "cpu"  # the shipped model is small: ONNX Runtime (test_auto_backend)
    pipe = Pipeline.default(provider="openvino", cache_dir=tmp_path)
    assert pipe.precision == ("bf16" if HAS_BF16 else "fp32")
    assert Pipeline.default(provider="cpu").precision == "fp32"  # ONNX Runtime: fp32 is its native precision


def test_precision_in_png_and_cli(tmp_path):
    out = tmp_path / "a.png"
    args = ["generate", SHAPES_PROMPT, "-o", str(out), "--seed", "0", "--provider", "openvino", "--precision", "fp32",
            "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "openvino fp32" in result.output
    assert "Backend: openvino, Precision: fp32" in read_parameters(out)


def test_bad_precision_and_provider_choices(tiny_sd1, monkeypatch):
    with pytest.raises(ValueError, match="unknown precision 'fp8': choose one of auto, fp32, bf16"):
        Pipeline.from_folder(tiny_sd1[1], precision="fp8")
    with pytest.raises(ValueError, match="ONNX Runtime has no bf16 kernels.*--provider openvino"):
        Pipeline.from_folder(tiny_sd1[1], provider="cpu", precision="bf16")
    monkeypatch.setattr(ov_backend, "supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16 needs a CPU with bf16 instructions .*use precision fp32"):
        Pipeline.from_folder(tiny_sd1[1], provider="openvino", precision="bf16")
    assert Pipeline.from_folder(tiny_sd1[1], provider="openvino", use_cache=False).precision == "fp32"  # auto


def test_openvino_not_installed(tiny_sd1, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    monkeypatch.setattr(ov_backend, "_CORE", None)
    monkeypatch.setattr(backend_module, "openvino_installed", lambda: False)
    with pytest.raises(ValueError, match=r'needs the openvino extra: pip install "latentrt\[openvino\]"'):
        Pipeline.from_folder(tiny_sd1[1], provider="openvino")
    assert Pipeline.from_folder(tiny_sd1[1]).provider == "cpu"  # auto falls back to ONNX Runtime
    result = CliRunner().invoke(app, ["generate", "x", "-m", str(tiny_sd1[1]), "-o", "/nonexistent/x.png", "--provider", "openvino"])
    assert result.exit_code == 2 and "latentrt[openvino]" in result.output


def test_info_says_what_auto_runs(tiny_sd1):
    import json

    result = CliRunner().invoke(app, ["info", str(tiny_sd1[1]), "--json"])
    assert result.exit_code == 0, result.output
    runtime = json.loads(result.output)["runtime"]
    assert runtime["auto"] == {"provider": "cpu", "precision": "fp32"}  # a tiny UNet: OpenVINO's compile would dominate
    assert "small model" in runtime["auto_reason"]
    assert runtime["exact"] == {"provider": "cpu", "precision": "fp32"} and runtime["bf16"] == HAS_BF16
