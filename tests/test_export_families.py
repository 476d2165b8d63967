"""Exporter, per family: SDXL base and refiner, LCM, SD-Turbo, SDXL-Turbo, and SD 1.x's hidden states.

The graph names asserted here are the folder contract the runtime relies on (optimum's SDXL layout).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latentrt.export.exporter import ExportError, export_pipeline
from latentrt.export.validate import COMPONENT_MAX_REL_ERROR

pytest.importorskip("torch")
pytest.importorskip("onnx")

VAE = {
    "vae_decoder": (["latent_sample"], ["sample"]),
    "vae_encoder": (["sample"], ["latent_parameters"]),
}
UNET_INPUTS = ["sample", "timestep", "encoder_hidden_states"]


def _hidden(layers: int) -> list[str]:
    return [f"hidden_states.{i}" for i in range(layers + 1)]


def _clip(layers: int) -> tuple[list[str], list[str]]:
    return ["input_ids"], ["last_hidden_state", "pooler_output", *_hidden(layers)]


def _clip_projection(layers: int) -> tuple[list[str], list[str]]:
    return ["input_ids"], ["text_embeds", "last_hidden_state", *_hidden(layers)]


# fixture -> {component: (graph inputs, graph outputs)}, exactly, in order
SDXL = {
    "text_encoder": _clip(2),
    "text_encoder_2": _clip_projection(3),
    "unet": ([*UNET_INPUTS, "text_embeds", "time_ids"], ["out_sample"]),
    **VAE,
}
CONTRACTS = {
    "tiny_sdxl": SDXL,
    "tiny_sdxl_turbo": SDXL,
    "tiny_sdxl_refiner": {
        "text_encoder_2": _clip_projection(3),
        "unet": ([*UNET_INPUTS, "text_embeds", "time_ids"], ["out_sample"]),
        **VAE,
    },
    "tiny_lcm": {"text_encoder": _clip(2), "unet": ([*UNET_INPUTS, "timestep_cond"], ["out_sample"]), **VAE},
    "tiny_sd_turbo": {"text_encoder": _clip(2), "unet": (UNET_INPUTS, ["out_sample"]), **VAE},
    "tiny_sd1": {"text_encoder": _clip(2), "unet": (UNET_INPUTS, ["out_sample"]), **VAE},
}
# fixture -> the exported model_index.json's _class_name and the scheduler it carries
CLASSES = {
    "tiny_sdxl": ("ORTStableDiffusionXLPipeline", "EulerDiscreteScheduler", "leading"),
    "tiny_sdxl_turbo": ("ORTStableDiffusionXLPipeline", "EulerAncestralDiscreteScheduler", "trailing"),
    "tiny_sdxl_refiner": ("ORTStableDiffusionXLImg2ImgPipeline", "EulerDiscreteScheduler", "leading"),
    "tiny_lcm": ("ORTLatentConsistencyModelPipeline", "LCMScheduler", "leading"),
    "tiny_sd_turbo": ("ORTStableDiffusionPipeline", "EulerDiscreteScheduler", "trailing"),
}


def _graph_names(path) -> tuple[list[str], list[str]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


@pytest.mark.parametrize("fixture", list(CONTRACTS))
def test_every_family_exports_the_contract_and_validates(fixture, request):
    _, out = request.getfixturevalue(fixture)
    contract = CONTRACTS[fixture]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["components"]) == set(contract)
    for name, (inputs, outputs) in contract.items():
        assert _graph_names(out / name / "model.onnx") == (inputs, outputs), name
        entry = manifest["components"][name]
        assert [t["name"] for t in entry["inputs"]] == inputs
        assert [t["name"] for t in entry["outputs"]] == outputs
        assert [v["name"] for v in entry["validation"]] == [f"{name}.{o}" for o in outputs]  # every output compared
        assert all(v["max_rel_error"] <= COMPONENT_MAX_REL_ERROR for v in entry["validation"]), entry["validation"]
        assert (out / name / "config.json").is_file()
    for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        assert (out / tokenizer / "tokenizer.json").is_file() == (encoder in contract)
        assert (out / encoder).is_dir() == (encoder in contract)
        if encoder in contract:  # the final layer norm beside every text encoder, covered by the manifest
            assert "final_layer_norm.npz" in manifest["components"][encoder]["files"]
    assert "flops" in manifest["components"]["unet"]


@pytest.mark.parametrize("fixture", ["tiny_sdxl", "tiny_sdxl_turbo", "tiny_sdxl_refiner"])
def test_sdxl_unet_inputs_model_index_and_vae(fixture, request):
    import onnx

    src, out = request.getfixturevalue(fixture)
    refiner = fixture == "tiny_sdxl_refiner"
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == CLASSES[fixture][0]
    assert index["text_encoder_2"] == ["optimum", "ORTModelTextEncoder"]
    assert index["tokenizer_2"] == ["transformers", "CLIPTokenizer"]
    assert index["text_encoder"] == ([None, None] if refiner else ["optimum", "ORTModelTextEncoder"])
    assert index["tokenizer"] == ([None, None] if refiner else ["transformers", "CLIPTokenizer"])
    assert index["force_zeros_for_empty_prompt"] is True
    assert index["requires_aesthetics_score"] is refiner

    shapes = {
        i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
        for i in onnx.load(str(out / "unet" / "model.onnx")).graph.input
    }
    assert shapes["text_embeds"] == ["batch_size", 32]  # text_encoder_2's projection_dim
    assert shapes["time_ids"] == ["batch_size", 5 if refiner else 6]
    assert shapes["timestep"] == ["steps"]
    manifest = json.loads((out / "manifest.json").read_text())
    time_ids = next(t for t in manifest["components"]["unet"]["inputs"] if t["name"] == "time_ids")
    assert time_ids == {"name": "time_ids", "dtype": "float32", "axes": ["batch_size", 5 if refiner else 6]}

    vae = json.loads((out / "vae_decoder" / "config.json").read_text())
    assert vae["force_upcast"] is True and vae["scaling_factor"] == pytest.approx(0.13025)
    tokenizer_2 = json.loads((out / "tokenizer_2" / "special_tokens_map.json").read_text())
    assert tokenizer_2["pad_token"] == "!"  # OpenCLIP bigG's, unlike the first tokenizer's


def test_sdxl_attention_is_fused(tiny_sdxl):
    import onnx

    _, out = tiny_sdxl
    manifest = json.loads((out / "manifest.json").read_text())
    ops = [n.op_type for n in onnx.load(str(out / "unet" / "model.onnx")).graph.node]
    assert manifest["components"]["unet"]["fused_attention"] == ops.count("MultiHeadAttention") == 16
    assert "Softmax" not in ops


@pytest.mark.parametrize("fixture", list(CLASSES))
def test_schedulers_are_the_published_ones(fixture, request):
    _, out = request.getfixturevalue(fixture)
    class_name, scheduler, spacing = CLASSES[fixture]
    index = json.loads((out / "model_index.json").read_text())
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert index["_class_name"] == class_name
    assert index["scheduler"] == ["diffusers", scheduler] and config["_class_name"] == scheduler
    assert config["timestep_spacing"] == spacing and config["steps_offset"] == 1
    assert (config["beta_schedule"], config["beta_start"], config["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    if fixture == "tiny_lcm":
        assert json.loads((out / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 32
        assert (config["original_inference_steps"], config["timestep_scaling"]) == (50, 10.0)


def test_sd1_hidden_states_and_final_layer_norm_reproduce_transformers(tiny_sd1):
    """clip_skip's ingredients: hidden_states.i are transformers' hidden_states[i], and the saved final layer norm
    applied in NumPy to the last of them gives last_hidden_state."""
    import onnxruntime as ort
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    from latentrt.runtime.folder import file_sha256

    src, out = tiny_sd1
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    ids = tokenizer(["a red cube on a table", ""], padding="max_length", max_length=77, return_tensors="np").input_ids
    session = ort.InferenceSession(str(out / "text_encoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input_ids": ids.astype(np.int64)})))
    model = CLIPTextModel.from_pretrained(src / "text_encoder").eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
    assert len(expected.hidden_states) == model.config.num_hidden_layers + 1
    for i, reference in enumerate(expected.hidden_states):
        np.testing.assert_allclose(got[f"hidden_states.{i}"], reference.numpy(), rtol=0, atol=1e-5 * np.abs(reference.numpy()).max())

    norm = np.load(out / "text_encoder" / "final_layer_norm.npz")
    assert norm["weight"].shape == norm["bias"].shape == (model.config.hidden_size,)
    assert float(norm["eps"]) == pytest.approx(model.config.layer_norm_eps)
    last = got[f"hidden_states.{model.config.num_hidden_layers}"].astype(np.float64)
    mean = last.mean(-1, keepdims=True)
    normed = (last - mean) / np.sqrt(last.var(-1, keepdims=True) + float(norm["eps"])) * norm["weight"] + norm["bias"]
    np.testing.assert_allclose(normed, got["last_hidden_state"], rtol=0, atol=1e-5)

    entry = json.loads((out / "manifest.json").read_text())["components"]["text_encoder"]["files"]["final_layer_norm.npz"]
    assert entry["sha256"] == file_sha256(out / "text_encoder" / "final_layer_norm.npz")


def _edited_copy(src, tmp_path, remove=(), **index_changes):
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    for part in remove:
        shutil.rmtree(copy / part)
    index = json.loads((copy / "model_index.json").read_text())
    index.update(index_changes)
    (copy / "model_index.json").write_text(json.dumps(index))
    return copy


@pytest.mark.parametrize("part", ["text_encoder_2", "tokenizer_2"])
def test_sdxl_folder_without_its_second_encoder_is_refused(tiny_sdxl, tmp_path, part):
    src = _edited_copy(tiny_sdxl[0], tmp_path, remove=[part])
    with pytest.raises(ExportError, match=f"lacks {part}: an SDXL folder needs text_encoder_2, tokenizer_2"):
        export_pipeline(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sdxl_base_without_its_first_encoder_is_refused(tiny_sdxl, tmp_path):
    half = _edited_copy(tiny_sdxl[0], tmp_path, remove=["tokenizer"])
    with pytest.raises(ExportError, match="lacks tokenizer: an SDXL folder .*text_encoder with tokenizer, or neither"):
        export_pipeline(half, tmp_path / "out")
    shutil.rmtree(half)
    both = _edited_copy(tiny_sdxl[0], tmp_path, remove=["text_encoder", "tokenizer"])
    with pytest.raises(ExportError, match=r"attends to 96 text features .* 64 \(text_encoder_2\)"):
        export_pipeline(both, tmp_path / "out")


def test_refiner_model_index_must_match_its_time_ids(tiny_sdxl_refiner, tmp_path):
    src = _edited_copy(tiny_sdxl_refiner[0], tmp_path, requires_aesthetics_score=False)
    with pytest.raises(ExportError, match="takes 5 time ids but model_index.json has requires_aesthetics_score=False"):
        export_pipeline(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_pipeline_class_is_refused_naming_the_supported_ones(tiny_sdxl, tmp_path):
    src = _edited_copy(tiny_sdxl[0], tmp_path, _class_name="KandinskyV22Pipeline")
    with pytest.raises(ExportError, match="KandinskyV22Pipeline .* does not export: the supported classes are .*StableDiffusionXLPipeline"):
        export_pipeline(src, tmp_path / "out")
