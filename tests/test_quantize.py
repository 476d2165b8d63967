"""`latentrt quantize`: static QDQ int8 UNet, calibrated on the folder's own generations (the shipped model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from latentrt.cli import app
from latentrt.export.quantize import QuantizeError, plan_samples, quantize_folder
from latentrt.export.validate import image_psnr
from latentrt.models import default_model_path
from latentrt.runtime.folder import file_sha256
from latentrt.runtime.pipeline import Pipeline

runner = CliRunner()
SHAPES = default_model_path()
PROMPTS = [
    "a red circle at the top left on a white background",
    "a blue triangle at the bottom right on a gray background",
    "a yellow square at the middle center on a black background",
    "a green triangle at the top center on a white background",
]
# Measured on these four prompts (seed 7) with the fixture's calibration (8 samples, calibration seeds 0 and 1): 52.8-57.0 dB;
# on the 537 images of training/shapes/int8.py (default calibration): median 55 dB, min 43 dB.
MIN_PSNR_DB = 45.0


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "shapes-int8"
    quantize_folder(SHAPES, out, samples=8, steps=4)
    return out


def test_int8_folder_generates_close_to_fp32(int8_folder):
    fp32 = Pipeline.from_folder(SHAPES, provider="cpu")
    int8 = Pipeline.from_folder(int8_folder, provider="cpu")
    a = fp32(PROMPTS, seed=7).arrays
    b = int8(PROMPTS, seed=7).arrays
    assert np.isfinite(int8(PROMPTS[:1], seed=7).latents).all()
    psnr = [image_psnr(x, y) for x, y in zip(a, b)]
    assert min(psnr) >= MIN_PSNR_DB, psnr
    assert max(psnr) < 100, "the int8 folder draws exactly the fp32 images: nothing was quantized"


def test_unet_graph_is_qdq_int8_with_edges_in_float(int8_folder):
    model = onnx.load(str(int8_folder / "unet" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    int8_weights = [t for t in inits.values() if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) >= 70  # 41 convolutions + 40 matmuls minus the edges
    quantized_zero_points = [inits[n.input[2]] for n in model.graph.node
                             if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert quantized_zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in quantized_zero_points)
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    # conv_in and conv_out read float weights; the others read dequantized int8 weights (per channel)
    for name in ("/model/conv_in/Conv", "/model/conv_out/Conv"):
        assert inits[convs[name].input[1]].data_type == onnx.TensorProto.FLOAT
    inner = producer[convs["/model/down_blocks.0/resnets.0/conv1/Conv"].input[1]]
    assert inner.op_type == "DequantizeLinear" and inits[inner.input[0]].data_type == onnx.TensorProto.INT8
    assert len(inits[inner.input[1]].dims) == 1 and inits[inner.input[1]].dims[0] > 1  # one scale per channel
    assert not any(n.op_type == "QuantizeLinear" and "time_embedding" in n.name for n in model.graph.node)


def test_manifest_records_quantization_and_verifies(int8_folder):
    manifest = json.loads((int8_folder / "manifest.json").read_text())
    source = json.loads((SHAPES / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["calibration"]["samples"] == 8 and q["calibration"]["steps"] == 4
    assert q["calibration"]["height"] == q["calibration"]["width"] == 64  # the native size (< 256)
    assert q["calibration"]["prompts_count"] >= 8 and q["calibration"]["guidance_scale"] > 1
    assert q["calibration"]["scheduler"] == "dpm++2m" and q["calibration"]["method"] == "MinMax"
    assert len(q["calibration"]["timesteps"]) >= 4  # spread over the trajectory, not only the first step
    assert q["float_nodes"]["conv_in"] == ["/model/conv_in/Conv"]
    assert q["float_nodes"]["conv_out"] == ["/model/conv_out/Conv"]
    assert len(q["float_nodes"]["time_embedding"]) == 13
    assert q["versions"]["onnxruntime"]
    unet = manifest["components"]["unet"]
    assert unet["precision"] == "int8-qdq" and source["components"]["unet"]["precision"] == "fp32"
    assert unet["files"]["model.onnx"]["sha256"] == file_sha256(int8_folder / "unet" / "model.onnx")
    assert unet["files"]["model.onnx"]["sha256"] != source["components"]["unet"]["files"]["model.onnx"]["sha256"]
    for name in ("text_encoder", "vae_decoder", "vae_encoder"):
        assert manifest["components"][name] == source["components"][name]
    for rel in ("tokenizer/tokenizer.json", "scheduler/scheduler_config.json", "text_encoder/model.onnx", "unet/config.json"):
        assert (int8_folder / rel).read_bytes() == (SHAPES / rel).read_bytes()
    assert manifest["defaults"] == source["defaults"]
    result = runner.invoke(app, ["info", str(int8_folder), "--verify"])
    assert result.exit_code == 0, result.output
    assert "int8-qdq" in result.output and "all files match" in result.output


def test_deepcache_shallow_unet_is_quantized_too(int8_folder):
    """The shipped model can cache (DeepCache): its shallow UNet, run on the cached steps, is int8 as well, and
    caching on the int8 folder draws close to caching on the fp32 one."""
    manifest = json.loads((int8_folder / "manifest.json").read_text())
    assert manifest["quantization"]["components"] == ["unet", "unet_shallow"]
    shallow = manifest["components"]["unet_shallow"]
    assert shallow["precision"] == "int8-qdq" and "validation" not in shallow
    assert shallow["files"]["model.onnx"]["sha256"] == file_sha256(int8_folder / "unet_shallow" / "model.onnx")
    assert shallow["float_nodes"]["conv_in"] == ["/conv_in/Conv"] and shallow["float_nodes"]["conv_out"] == ["/conv_out/Conv"]
    convs = [n for n in onnx.load(str(SHAPES / "unet_shallow" / "model.onnx")).graph.node if n.op_type == "Conv"]
    assert shallow["quantized_nodes"]["Conv"] == len(convs) - 2  # all but conv_in and conv_out
    assert shallow["quantization_check"]["max_rel_error"] < 0.1
    graph = onnx.load(str(int8_folder / "unet_shallow" / "model.onnx"))
    assert [n.op_type for n in graph.graph.node].count("DequantizeLinear") >= 6
    assert manifest["deepcache"] == json.loads((SHAPES / "manifest.json").read_text())["deepcache"]

    fp32 = Pipeline.from_folder(SHAPES, provider="cpu")(PROMPTS, seed=7, cache_interval=3)
    int8 = Pipeline.from_folder(int8_folder, provider="cpu")(PROMPTS, seed=7, cache_interval=3)
    assert int8.unet_calls == fp32.unet_calls and int8.unet_calls["shallow"] > 0
    psnr = [image_psnr(x, y) for x, y in zip(fp32.arrays, int8.arrays)]
    assert min(psnr) >= MIN_PSNR_DB - 5, psnr


def test_a_lora_on_an_int8_folder_is_refused_clearly(int8_folder):
    """LoRAs merge into float weights: an int8 folder says to use the fp32 one (it once read int8 bytes as floats)."""
    from latentrt.runtime.lora import LoraError

    lora = Path(__file__).resolve().parents[1] / "training" / "shapes" / "loras" / "red-to-blue.safetensors"
    manifest = json.loads((int8_folder / "manifest.json").read_text())
    assert "weights" not in manifest["components"]["unet"] and "weights" not in manifest["components"]["unet_shallow"]
    assert manifest["components"]["text_encoder"]["weights"]  # the float text encoder keeps its map
    pipe = Pipeline.from_folder(int8_folder, provider="cpu")
    with pytest.raises(LoraError, match="int8 weights in unet, unet_shallow.*fp32 folder"):
        pipe.set_loras([(lora, 1.0)])
    result = runner.invoke(app, ["generate", "a red circle", "-m", str(int8_folder), "--lora", str(lora),
                                 "-o", str(int8_folder.parent / "x.png")])
    assert result.exit_code == 2 and "fp32 folder" in result.output and not (int8_folder.parent / "x.png").exists()


def test_refuses_an_already_quantized_folder(int8_folder, tmp_path):
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_folder(int8_folder, tmp_path / "again")
    # a manifest that does not say so: the graph's QuantizeLinear nodes do
    copy = tmp_path / "unlabelled"
    shutil.copytree(int8_folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["quantization"]
    manifest["components"]["unet"]["precision"] = "fp32"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["quantize", str(copy), str(tmp_path / "again")])
    assert result.exit_code == 2 and "QuantizeLinear" in result.output
    assert not (tmp_path / "again").exists()


def test_failure_leaves_no_out_and_keeps_an_existing_one(tmp_path, monkeypatch):
    import onnxruntime.quantization

    def broken(*args, **kwargs):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", broken)
    out = tmp_path / "int8"
    with pytest.raises(RuntimeError, match="exploded"):
        quantize_folder(SHAPES, out, samples=2, steps=2)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="exploded"):
        quantize_folder(SHAPES, out, samples=2, steps=2, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["int8"] and (out / "keep.txt").read_text() == "mine"


def test_bad_input_gives_clear_errors(tmp_path):
    def run(*args):
        result = runner.invoke(app, ["quantize", *map(str, args)])
        assert result.exit_code == 2, result.output
        return result.output

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no unet/model.onnx" in run(empty, tmp_path / "o1") and "latentrt export" in run(empty, tmp_path / "o1")
    assert "is not a folder" in run(tmp_path / "missing", tmp_path / "o1")
    existing = tmp_path / "existing"
    existing.mkdir()
    assert "--force" in run(SHAPES, existing)
    assert "must be a new folder outside MODEL" in run(SHAPES, SHAPES, "--force")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    assert "no prompts" in run(SHAPES, tmp_path / "o2", "--prompts", blank)
    assert "does not exist" in run(SHAPES, tmp_path / "o2", "--prompts", tmp_path / "nope.txt")
    assert "samples must be an integer of at least 1" in run(SHAPES, tmp_path / "o2", "--samples", 0)
    assert "more prompts or more --steps" in run(SHAPES, tmp_path / "o2", "--samples", 1000, "--steps", 2)
    assert "unknown float parts" in run(SHAPES, tmp_path / "o2", "--keep-float", "conv_in,attention")
    assert not any(p.name.startswith(("o1", "o2", ".o1", ".o2")) for p in tmp_path.iterdir())


def test_plan_spreads_samples_over_prompts_and_the_whole_trajectory():
    plan = plan_samples(prompts=4, calls=10, samples=8)
    assert sorted(plan) == [0, 1, 2, 3]  # every prompt
    calls = sorted(c for cs in plan.values() for c in cs)
    assert calls[0] == 0 and calls[-1] == 9 and len(set(calls)) == 8  # first and last step, no repeats
    assert all(len(cs) == 2 for cs in plan.values())
    full = plan_samples(prompts=2, calls=3, samples=6)  # every (prompt, call) pair once
    assert full == {0: [0, 1, 2], 1: [0, 1, 2]}
    with pytest.raises(QuantizeError, match="more prompts"):
        plan_samples(prompts=2, calls=3, samples=7)


def test_reads_weights_from_a_hard_linked_data_file(tmp_path):
    """onnx.load refuses external data with several hard links (a bench cache links exported folders)."""
    import os

    from latentrt.export.quantize import load_float_unet

    model = onnx.load(str(SHAPES / "unet" / "model.onnx"))
    onnx.save_model(model, str(tmp_path / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=1024)
    os.link(tmp_path / "model.onnx_data", tmp_path / "linked.onnx_data")
    with pytest.raises(Exception, match="hard link"):
        onnx.load(str(tmp_path / "model.onnx"))
    loaded = load_float_unet(tmp_path / "model.onnx")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    reference = load_float_unet(SHAPES / "unet" / "model.onnx")
    assert len(weights) == len(reference.graph.initializer) > 100
    for t in reference.graph.initializer:
        np.testing.assert_array_equal(weights[t.name], onnx.numpy_helper.to_array(t))


def test_quantize_imports_no_torch(tmp_path):
    """The quantizer is onnx + onnxruntime + latentrt's runtime: it runs without torch, diffusers, transformers."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from latentrt.export.quantize import quantize_folder; "
        "from latentrt.models import default_model_path; "
        f"quantize_folder(default_model_path(), Path({str(tmp_path / 'o')!r}), samples=2, steps=2); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "o" / "unet" / "model.onnx").is_file()


def test_quantize_without_the_export_extra_says_which_to_install(monkeypatch, tmp_path):
    import sys

    from typer.testing import CliRunner

    from latentrt.cli import app

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    monkeypatch.delitem(sys.modules, "latentrt.export.quantize")  # imported afresh by the command
    result = CliRunner().invoke(app, ["quantize", "latentrt/models/shapes", str(tmp_path / "out")])
    assert result.exit_code == 2 and "latentrt[export]" in result.output
    assert not (tmp_path / "out").exists()


# --- latentrt export SRC OUT --int8 -----------------------------------------------------------------------


def test_export_int8_writes_a_quantized_folder_and_no_fp32_copy(tiny_sd1, tmp_path):
    out = tmp_path / "sd1-int8"
    result = runner.invoke(app, ["export", str(tiny_sd1[0]), str(out), "--int8"])
    assert result.exit_code == 0, result.output
    assert "step 1/2" in result.output and "step 2/2" in result.output and f"wrote {out} in" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["components"]["unet"]["precision"] == "int8-qdq"
    assert manifest["components"]["text_encoder"]["precision"] == "fp32" and manifest["source"]["path"]
    assert "export --int8" in manifest["quantization"]["source"]
    assert [p.name for p in tmp_path.iterdir()] == ["sd1-int8"]  # the fp32 export is gone
    pipe = Pipeline.from_folder(out, provider="cpu")
    assert pipe.precision == "int8+fp32"
    reference = Pipeline.from_folder(tiny_sd1[1], provider="cpu")
    args = dict(steps=4, seed=3, height=64, width=64)
    psnr = image_psnr(pipe("a cat", **args).arrays[0], reference("a cat", **args).arrays[0])
    assert 20 < psnr < 100, psnr  # close to the fp32 images, and not them (the UNet is int8)


def test_export_int8_failure_midway_leaves_nothing(tiny_sd1, tmp_path, monkeypatch):
    import latentrt.export.quantize as quantize_module

    def broken(*args, **kwargs):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(quantize_module, "gather_samples", broken)
    out = tmp_path / "int8"
    result = runner.invoke(app, ["export", str(tiny_sd1[0]), str(out), "--int8"])
    assert isinstance(result.exception, RuntimeError) and "step 1/2 done" in result.output  # exported, then failed
    assert list(tmp_path.iterdir()) == []  # no OUT, no fp32 folder, no partial folder
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "--force" in runner.invoke(app, ["export", str(tiny_sd1[0]), str(out), "--int8"]).output
    runner.invoke(app, ["export", str(tiny_sd1[0]), str(out), "--int8", "--force"])
    assert [p.name for p in tmp_path.iterdir()] == ["int8"] and (out / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, ["export", str(tiny_sd1[0]), str(tmp_path / "o"), "--int8", "--precision", "fp16"])
    assert result.exit_code == 2 and "--int8 quantizes an fp32 export" in result.output
