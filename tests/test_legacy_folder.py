"""diffusers' legacy OnnxStableDiffusionPipeline folders: int32 input_ids, a (1,)-shaped timestep,
no manifest, tokenizer without tokenizer.json. The runtime reads each graph's declared inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latentrt import Pipeline
from latentrt.export.validate import image_psnr


def _legacy_copy(src, dst):
    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(src, dst)
    (dst / "manifest.json").unlink()
    (dst / "tokenizer" / "tokenizer.json").unlink()
    index = json.loads((dst / "model_index.json").read_text())
    index["_class_name"] = "OnnxStableDiffusionPipeline"
    (dst / "model_index.json").write_text(json.dumps(index))

    # text encoder: int32 input_ids, cast to int64 inside the graph
    path = dst / "text_encoder" / "model.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    graph.input[0].type.tensor_type.elem_type = TensorProto.INT32
    for node in graph.node:
        node.input[:] = ["input_ids_i64" if i == "input_ids" else i for i in node.input]
    graph.node.insert(0, helper.make_node("Cast", ["input_ids"], ["input_ids_i64"], to=TensorProto.INT64))
    onnx.save(model, str(path))

    # unet: timestep of fixed shape (1,)
    path = dst / "unet" / "model.onnx"
    model = onnx.load(str(path))
    timestep = next(i for i in model.graph.input if i.name == "timestep")
    dim = timestep.type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1
    onnx.save(model, str(path))


def test_legacy_layout_gives_the_same_image(tiny_sd1, tmp_path):
    _, ours = tiny_sd1
    legacy = tmp_path / "legacy"
    _legacy_copy(ours, legacy)
    pipe = Pipeline.from_folder(legacy, provider="cpu")
    assert pipe.text_encoder.inputs["input_ids"].dtype == np.int32
    assert pipe.unet.inputs["timestep"].shape == (1,)
    latents = np.random.default_rng(5).standard_normal((1, 4, 16, 16), dtype=np.float32)
    kwargs = dict(steps=6, guidance_scale=7.5, scheduler="ddim", latents=latents)
    got = pipe("a red circle", **kwargs).arrays
    expected = Pipeline.from_folder(ours, provider="cpu")("a red circle", **kwargs).arrays
    assert image_psnr(got, expected) == float("inf")


def test_missing_vae_config_says_what_to_do(tiny_sd1, tmp_path):
    from latentrt.runtime.folder import ModelFolderError

    folder = tmp_path / "m"
    shutil.copytree(tiny_sd1[1], folder)
    (folder / "vae_decoder" / "config.json").unlink()
    with pytest.raises(ModelFolderError, match=r"vae_decoder/config.json.*scaling_factor.*vae/config.json"):
        Pipeline.from_folder(folder)
