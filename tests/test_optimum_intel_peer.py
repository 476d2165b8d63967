"""optimum-intel as a peer: its own venv exports the tiny model with `optimum-cli export openvino`, and
`latentrt bench --systems ...,optimum-intel` runs OVStableDiffusionPipeline reshaped to static shapes.

Marked `optimum`: the first run builds optimum-intel's virtual environment (about 3 minutes with the local
torch wheel, cached in $LATENTRT_CACHE/optimum-intel-venv afterwards); the export takes about 40 s.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from latentrt.cli import app

pytestmark = pytest.mark.optimum

METRICS = ("load", "text_encoder", "unet_step", "vae_decode", "end_to_end")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One bench run on the tiny SD1 model: latentrt, diffusers (the image reference) and optimum-intel."""
    from latentrt.export.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("optimum-intel")
    src = root / "tiny-sd1"
    build_tiny_pipeline(src, "sd1")
    out = root / "bench.json"
    args = ["bench", str(src), "--runs", "1", "--steps", "2", "--threads", "1",
            "--systems", "latentrt,diffusers,optimum-intel", "--cache", str(root / "cache"),
            "--json", str(out), "--markdown", str(root / "bench.md")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(out.read_text()) | {"_markdown": (root / "bench.md").read_text()}


def test_export_layout(report):
    from pathlib import Path

    folder = Path(report["folders"]["optimum-intel"])
    for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (folder / name / "openvino_model.xml").is_file(), name
        assert (folder / name / "openvino_model.bin").is_file(), name
        assert (folder / name / "config.json").is_file(), name
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["_name_or_path"] == report["source"]  # the real source, not the export's temporary view
    assert not folder.with_name(folder.name + ".partial").exists()


def test_runs_static_in_openvino_default_precision(report):
    system = report["systems"]["optimum-intel"]
    for key in METRICS:
        assert system[key] > 0, key
    info = system["info"]
    assert info["static_shapes"] is True
    assert info["unet_input_shapes"]["sample"] == "[2,4,16,16]"  # CFG batch, 64 px through the tiny 4x VAE
    assert info["inference_num_threads"] == {"text_encoder": 1, "unet": 1, "vae_decoder": 1}
    assert info["precision"] in ("bf16", "fp32")  # bf16 where the CPU has it: OpenVINO's default
    assert set(info["inference_precision"]) == {"text_encoder", "unet", "vae_decoder"}
    assert info["model_cache"].startswith("none")
    assert info["versions"]["optimum-intel"] == "2.2.0" and info["versions"]["openvino"]
    assert "torch" in system["modules_imported"]
    assert system["deterministic_across_runs"]


def test_agreement_and_ratios(report):
    # fp32 it matches diffusers at ~86 dB on this model (checked by hand with INFERENCE_PRECISION_HINT=f32);
    # bf16 in every network of this amplified random model gives ~30 dB. A text encoder loaded without its
    # weights (benchmarks/peers/compat.py) would give far less.
    assert report["agreement_vs_reference"]["optimum-intel"]["psnr_db"] > 20
    assert set(report["ratios"]["optimum-intel"]["speedup"]) == set(METRICS)
    figures = {(f["metric"], f["vs"]): f for f in report["fast_path"]["figures"]}
    assert figures[("unet_step", "optimum-intel")]["speedup"] == report["ratios"]["optimum-intel"]["speedup"]["unet_step"]
    assert figures[("load", "optimum-intel")]["met"] in (True, False)
    assert "| optimum-intel |" in report["_markdown"]
