"""`export --precision fp16`: fp16 graphs with fp32 islands, float32 IO, the VAE kept fp32 under force_upcast,
validated against PyTorch at fp16 thresholds, and still runnable on the CPU (with a warning)."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app
from latentrt.export.exporter import ExportError, export_pipeline
from latentrt.export.validate import COMPONENT_MAX_REL_ERROR, FP16_MAX_REL_ERROR, IMAGE_MIN_PSNR_DB, image_psnr

FP16_PARTS = ("text_encoder", "unet")


def _export(src, out, **options):
    export_pipeline(src, out, precision="fp16", report=logging.getLogger("test-export").info, **options)
    return out


@pytest.fixture(scope="module")
def fp16_sd1(tiny_sd1, tmp_path_factory):
    """SD 1 in fp16 with DeepCache's shallow UNet (fused attention)."""
    return _export(tiny_sd1[0], tmp_path_factory.mktemp("fp16") / "sd1", cache_branch=0)


@pytest.fixture(scope="module")
def fp16_sd2(tiny_sd2, tmp_path_factory):
    """SD 2 (upcast_attention) in fp16, fused attention."""
    return _export(tiny_sd2[0], tmp_path_factory.mktemp("fp16") / "sd2")


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _elem_types(model) -> dict[str, int]:
    """Element type of every tensor of a graph, as ONNX Runtime will see it (inputs, initializers, value_info)."""
    inferred = onnx.shape_inference.infer_shapes(model)  # tiny graphs: in memory
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _float_inputs(model, op_types) -> list[tuple[str, str, int]]:
    """(op, tensor, element type) of the inputs of every node of ``op_types`` (op types or node names); a com.microsoft
    node's inputs are
    typed by their producer (onnx's inference stops at that domain)."""
    types = _elem_types(model)
    casts = {n.output[0]: next(a.i for a in n.attribute if a.name == "to") for n in model.graph.node if n.op_type == "Cast"}
    found = []
    for node in model.graph.node:
        if node.op_type in op_types or node.name in op_types:
            for name in node.input[:3]:
                found.append((node.op_type, name, casts.get(name, types.get(name))))
    return found


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_manifest_precision_and_fp16_validation(family, request):
    folder = request.getfixturevalue(f"fp16_{family}")
    manifest = _manifest(folder)
    assert manifest["precision"] == "fp16"
    components = manifest["components"]
    for name in FP16_PARTS + (("unet_shallow",) if family == "sd1" else ()):
        entry = components[name]
        assert entry["precision"] == "fp16"
        for figure in entry["validation"]:  # the fp16 graph against PyTorch
            assert figure["max_rel_error"] <= FP16_MAX_REL_ERROR[name], figure
        for figure in entry["validation_fp32"]:  # the same export before its conversion
            assert figure["max_rel_error"] <= COMPONENT_MAX_REL_ERROR, figure
        assert all(t["dtype"] == "float32" for t in entry["inputs"] + entry["outputs"] if t["dtype"].startswith("float"))
    for name in ("vae_decoder", "vae_encoder"):  # the tiny VAE says force_upcast (diffusers' default), as SD's do
        assert components[name]["precision"] == "fp32"
        assert "force_upcast" in components[name]["kept_fp32"]
    unet_weights = components["unet"]["weights"]  # the LoRA map follows the weights into fp16
    assert unet_weights and all(w[2] == "float16" for w in unet_weights.values())


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_graph_dtypes_fp16_with_fp32_islands(family, request):
    folder = request.getfixturevalue(f"fp16_{family}")
    unet = onnx.load(str(folder / "unet" / "model.onnx"))
    weights = [t for t in unet.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(t.dims) >= 2]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)  # every Conv / MatMul weight
    assert {i.type.tensor_type.elem_type for i in unet.graph.input} == {TensorProto.FLOAT}  # float32 interface
    assert {o.type.tensor_type.elem_type for o in unet.graph.output} == {TensorProto.FLOAT}
    # the timestep sinusoid is fp32 all the way from the float32 input: its Mul is never fed an fp16 value
    assert {t for _, _, t in _float_inputs(unet, {"Sin", "Cos"})} == {TensorProto.FLOAT}
    attention = _float_inputs(unet, {"MultiHeadAttention"})
    assert len(attention) == 3 * 8  # q, k, v of the 8 fused attentions
    # SD 2's upcast_attention: the fused attention runs in fp32; SD 1's in fp16 (ONNX Runtime's kernels keep the
    # softmax in fp32 inside)
    assert {t for _, _, t in attention} == {TensorProto.FLOAT if family == "sd2" else TensorProto.FLOAT16}
    text = onnx.load(str(folder / "text_encoder" / "model.onnx"))
    assert {t for _, _, t in _float_inputs(text, {"Softmax"})} == {TensorProto.FLOAT}
    assert {t for _, _, t in _float_inputs(text, {"MatMul"})} == {TensorProto.FLOAT16}
    decoder = onnx.load(str(folder / "vae_decoder" / "model.onnx"))
    assert not [t.name for t in decoder.graph.initializer if t.data_type == TensorProto.FLOAT16]


def test_plain_attention_keeps_the_score_path_fp32_with_upcast(tiny_sd2, tmp_path):
    folder = _export(tiny_sd2[0], tmp_path / "sd2-plain", fused_attention=False)
    islands = _manifest(folder)["components"]["unet"]["fp32_islands"]
    assert islands["softmax"] == 8 and islands["attention_scores"] == 8  # the 8 attentions
    unet = onnx.load(str(folder / "unet" / "model.onnx"))
    producer = {o: n for n in unet.graph.node for o in n.output}
    softmax_inputs = _float_inputs(unet, {"Softmax"})
    assert {t for _, _, t in softmax_inputs} == {TensorProto.FLOAT}
    scores = [producer[name] for _, name, _ in softmax_inputs]
    assert {n.op_type for n in scores} == {"MatMul"}  # no Cast between: the score MatMul itself is fp32 ...
    assert {t for _, _, t in _float_inputs(unet, {n.name for n in scores})} == {TensorProto.FLOAT}  # ... from q, k


def test_fractional_timestep_stays_exact(tiny_sd1, fp16_sd1):
    """981.3 is 981.5 in fp16: rounded, it moved the tiny UNet's output by 5% of its range (fp16.py)."""
    import onnxruntime as ort
    import torch
    from diffusers import UNet2DConditionModel

    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
             "timestep": np.array([981.3, 20.7], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32)}
    session = ort.InferenceSession(str(fp16_sd1 / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1[0] / "unet").eval()
    with torch.no_grad():
        expected = unet(*(torch.from_numpy(feeds[k]) for k in ("sample", "timestep", "encoder_hidden_states"))).sample.numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() <= FP16_MAX_REL_ERROR["unet"]


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_fp16_folder_runs_on_cpu_with_a_warning(tiny_sd1, fp16_sd1, provider, caplog):
    pytest.importorskip("openvino") if provider == "openvino" else None
    options = dict(steps=4, seed=1, height=64, width=64, guidance_scale=7.5)
    with caplog.at_level(logging.WARNING):
        pipe = Pipeline.from_folder(fp16_sd1, provider=provider, precision="fp32", use_cache=False)
    assert "fp16 graph" in caplog.text and "fp32 folder" in caplog.text
    assert pipe.precision == "fp16"
    image = np.asarray(pipe("a cat", **options).images[0])
    reference = np.asarray(Pipeline.from_folder(tiny_sd1[1], provider="cpu", precision="fp32").__call__("a cat", **options).images[0])
    assert image_psnr(image, reference) >= IMAGE_MIN_PSNR_DB  # measured ~57 dB on the tiny models
    cached = np.asarray(pipe("a cat", cache_interval=2, **options).images[0])  # DeepCache's fp16 shallow UNet
    assert cached.shape == image.shape and cached.std() > 0


def test_info_shows_precision(fp16_sd1):
    result = CliRunner().invoke(app, ["info", str(fp16_sd1)])
    assert result.exit_code == 0, result.output
    assert "precision     fp16" in result.output
    assert any(line.strip().startswith("unet ") and " fp16 " in line for line in result.output.splitlines())


def test_bad_precision_is_refused(tiny_sd1, tmp_path):
    with pytest.raises(ExportError, match="unknown export precision 'int4': choose fp32"):
        export_pipeline(tiny_sd1[0], tmp_path / "out", precision="int4")
    with pytest.raises(ExportError, match="--compact-weights is for fp32"):
        export_pipeline(tiny_sd1[0], tmp_path / "out", precision="fp16", compact_weights=True)
    result = CliRunner().invoke(app, ["export", str(tiny_sd1[0]), str(tmp_path / "out"), "--precision", "int4"])
    assert result.exit_code != 0 and "unknown export precision 'int4'" in result.output
    assert not (tmp_path / "out").exists()
