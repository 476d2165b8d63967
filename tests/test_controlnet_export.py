"""`latentrt export --controlnet`: the folder layout, the UNet's weights stored once for its two graphs, both graphs
and the ControlNets against PyTorch, SD 2.x / SDXL / inpainting / DeepCache variants, and the refusals (before
anything is written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from controlnet_models import (  # noqa: F401
    build_controlnet_source,
    controlnet_folder,
    tiny_sd1_controlnet,
)
from typer.testing import CliRunner

from latentrt.cli import app
from latentrt.export.controlnet import parse_controlnet_arg
from latentrt.export.exporter import ExportError, export_pipeline
from latentrt.export.quantize import QuantizeError, check_model
from latentrt.runtime.folder import ModelFolder, ModelFolderError
from latentrt.runtime.info import describe, render


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _unet_feeds(rng: np.random.Generator, batch: int = 2, side: int = 16, width: int = 32) -> dict[str, np.ndarray]:
    return {
        "sample": rng.standard_normal((batch, 4, side, side), dtype=np.float32),
        "timestep": np.array([700.0, 300.0][:batch], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, width), dtype=np.float32),
    }


def test_layout_manifest_and_folder_api(tiny_sd1_controlnet):  # noqa: F811
    source, out = tiny_sd1_controlnet
    assert sorted(p.name for p in (out / "controlnet").iterdir()) == ["canny", "depth"]
    for name in ("canny", "depth"):
        assert (out / "controlnet" / name / "model.onnx").is_file()
        assert json.loads((out / "controlnet" / name / "config.json").read_text())["_class_name"] == "ControlNetModel"
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", "model.onnx", "model.onnx_data",
                                                              "model_controlnet.onnx"]
    manifest = json.loads((out / "manifest.json").read_text())["components"]
    assert {"unet", "unet_controlnet", "controlnet/canny", "controlnet/depth"} <= set(manifest)
    residual = manifest["unet_controlnet"]
    assert residual["file"] == "model_controlnet.onnx" and set(residual["files"]) == {"model_controlnet.onnx", "model.onnx_data"}
    assert residual["files"]["model.onnx_data"] == manifest["unet"]["files"]["model.onnx_data"]
    names = [t["name"] for t in residual["inputs"]]
    assert names[:3] == ["sample", "timestep", "encoder_hidden_states"]
    assert names[3:] == [f"down_block_additional_residual_{i}" for i in range(4)] + ["mid_block_additional_residual"]
    cn = manifest["controlnet/canny"]
    assert [t["name"] for t in cn["inputs"]] == ["sample", "timestep", "encoder_hidden_states", "controlnet_cond"]
    assert [t["name"] for t in cn["outputs"]] == [f"down_block_res_sample_{i}" for i in range(4)] + ["mid_block_res_sample"]
    assert cn["source"]["path"] == str(source.controlnets["canny"].resolve())
    for entry in (residual, manifest["unet"], cn):
        assert entry["validation"] and all(v["max_rel_error"] < 1e-4 for v in entry["validation"])

    folder = ModelFolder.open(out)
    assert list(folder.controlnets) == ["canny", "depth"]
    assert folder.controlnets["depth"].name == "controlnet/depth"
    assert folder.controlnets["depth"].model == out / "controlnet" / "depth" / "model.onnx"
    assert folder.unet_controlnet.name == "unet" and folder.unet_controlnet.model == out / "unet" / "model_controlnet.onnx"
    assert folder.components["unet"].model == out / "unet" / "model.onnx"  # optimum's layout, unchanged
    info = describe(out, verify=True)
    assert info["controlnets"] == ["canny", "depth"]
    assert {"unet_controlnet", "controlnet/canny", "controlnet/depth"} <= set(info["components"])
    assert "ControlNet    canny, depth" in render(info)


def test_unet_weights_are_stored_once(tiny_sd1_controlnet, tiny_sd1):  # noqa: F811
    _, out = tiny_sd1_controlnet
    unet = out / "unet"
    plain_size = sum(p.stat().st_size for p in (tiny_sd1[1] / "unet").glob("model.onnx*"))  # the same UNet, no ControlNet
    total = sum(p.stat().st_size for p in unet.glob("model*"))
    assert total < 1.2 * plain_size, (total, plain_size)  # one copy of the weights plus two graphs' structure
    graphs = [onnx.load(str(unet / name), load_external_data=False) for name in ("model.onnx", "model_controlnet.onnx")]

    def where(graph):  # every initializer's (file, offset, length): all in the shared data file
        found = {}
        for init in graph.graph.initializer:
            assert init.data_location == onnx.TensorProto.EXTERNAL, init.name
            info = {e.key: e.value for e in init.external_data}
            found[init.name] = (info["location"], info.get("offset"), info.get("length"))
        return found

    plain, residual = (where(g) for g in graphs)
    assert plain == residual and {loc for loc, _, _ in plain.values()} == {"model.onnx_data"}


def test_plain_graph_is_the_residual_graph_fed_zeros(tiny_sd1_controlnet):  # noqa: F811
    _, out = tiny_sd1_controlnet
    plain, residual = _session(out / "unet" / "model.onnx"), _session(out / "unet" / "model_controlnet.onnx")
    assert [i.name for i in plain.get_inputs()] == ["sample", "timestep", "encoder_hidden_states"]
    feeds = _unet_feeds(np.random.default_rng(3))
    sides = {0: 16, 1: 16, 2: 8, 3: 8}  # conv_in, resnet, downsampler, resnet; the mid block at 8
    zeros = {i.name: np.zeros((2, i.shape[1], sides.get(k, 8), sides.get(k, 8)), np.float32)
             for k, i in enumerate(residual.get_inputs()[3:])}
    # Exact on every CPU kind: the two graphs hold the same nodes but for the Adds of the residuals, so ONNX Runtime
    # runs the same kernels on the same values, and x + 0.0 is x in IEEE arithmetic.
    np.testing.assert_array_equal(plain.run(None, feeds)[0], residual.run(None, {**feeds, **zeros})[0])


def test_controlnet_into_residual_unet_matches_diffusers(tiny_sd1_controlnet):  # noqa: F811
    """The two exported graphs chained (ControlNet -> residuals -> UNet) against diffusers' UNet2DConditionModel fed
    its ControlNetModel's residuals: what StableDiffusionControlNetPipeline does in one step, at scale 1."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    source, out = tiny_sd1_controlnet
    rng = np.random.default_rng(5)
    feeds = _unet_feeds(rng, side=12)  # 12: not a multiple of the UNet's downsampling (any multiple of 8 px works)
    image = rng.uniform(0, 1, (2, 3, 48, 48)).astype(np.float32)
    residuals = _session(out / "controlnet" / "depth" / "model.onnx").run(None, {**feeds, "controlnet_cond": image})
    names = [i.name for i in _session(out / "unet" / "model_controlnet.onnx").get_inputs()[3:]]
    got = _session(out / "unet" / "model_controlnet.onnx").run(None, {**feeds, **dict(zip(names, residuals))})[0]

    unet = UNet2DConditionModel.from_pretrained(source.src / "unet").eval()
    controlnet = ControlNetModel.from_pretrained(source.controlnets["depth"]).eval()
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        down, mid = controlnet(t["sample"], t["timestep"], t["encoder_hidden_states"], torch.from_numpy(image),
                               return_dict=False)
        expected = unet(t["sample"], t["timestep"], t["encoder_hidden_states"], down_block_additional_residuals=down,
                        mid_block_additional_residual=mid, return_dict=False)[0].numpy()
        plain = unet(t["sample"], t["timestep"], t["encoder_hidden_states"], return_dict=False)[0].numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert np.abs(expected - plain).max() > 0.05 * np.abs(plain).max()  # the random ControlNet really steers the UNet


@pytest.mark.parametrize("family, options", [
    ("sd2", {"precision": "fp16"}),  # v-prediction, linear projections, upcast attention; fp16 (GPU) export
    ("sdxl", {}),  # text_embeds / time_ids into the ControlNet too; 9 -> 6 residuals in small (SDXL's is 9)
    # a 9-channel UNet with a 4-channel ControlNet, and DeepCache: the residual graph also outputs deepcache_feature
    ("sd1", {"inpaint": True, "cache_branch": 1}),
], ids=["sd2-fp16", "sdxl", "sd1-inpaint-deepcache"])
def test_families(family, options):
    _, out = controlnet_folder(family, ("ctl",), **options)
    manifest = json.loads((out / "manifest.json").read_text())["components"]
    unet_in = [t["name"] for t in manifest["unet"]["inputs"]]
    residual = manifest["unet_controlnet"]
    assert [t["name"] for t in residual["inputs"]][: len(unet_in)] == unet_in  # the UNet's inputs, same order
    assert [t["name"] for t in residual["outputs"]] == [t["name"] for t in manifest["unet"]["outputs"]]
    assert all(v["max_rel_error"] < 1e-4 for v in manifest["controlnet/ctl"]["validation"])
    fp16 = options.get("precision") == "fp16"
    assert residual["precision"] == manifest["unet"]["precision"] == ("fp16" if fp16 else "fp32")
    assert all(v["max_rel_error"] < (2e-2 if fp16 else 1e-4) for v in residual["validation"])
    if fp16:  # converted once, then the plain graph derived from it: still one data file, now in fp16
        assert all(v["max_rel_error"] < 1e-4 for v in residual["validation_fp32"])
        assert manifest["controlnet/ctl"]["precision"] == "fp32"
        assert residual["files"]["model.onnx_data"] == manifest["unet"]["files"]["model.onnx_data"]
        plain, full = _session(out / "unet" / "model.onnx"), _session(out / "unet" / "model_controlnet.onnx")
        feeds = _unet_feeds(np.random.default_rng(0), width=64)
        zeros = {i.name: np.zeros((2, i.shape[1], *([16, 16] if k < 2 else [8, 8])), np.float32)
                 for k, i in enumerate(full.get_inputs()[3:])}
        # exact on every CPU kind, fp16 too: the same nodes but the residual Adds (x + 0 is x), the same kernels
        np.testing.assert_array_equal(plain.run(None, feeds)[0], full.run(None, {**feeds, **zeros})[0])
    cn_inputs = [t["name"] for t in manifest["controlnet/ctl"]["inputs"]]
    if family == "sdxl":
        assert unet_in[3:] == ["text_embeds", "time_ids"] and cn_inputs[4:] == ["text_embeds", "time_ids"]
    if options.get("inpaint"):
        assert manifest["unet"]["inputs"][0]["name"] == "sample" and ModelFolder.open(out).unet.in_channels == 9
        assert json.loads((out / "controlnet" / "ctl" / "config.json").read_text())["in_channels"] == 4
    if "cache_branch" in options:
        assert [t["name"] for t in residual["outputs"]] == ["out_sample", "deepcache_feature"]
        assert len(residual["validation"]) == 2 and "unet_shallow" in manifest
    down = [t for t in residual["inputs"] if t["name"].startswith("down_block_additional_residual_")]
    assert len(down) == len(manifest["controlnet/ctl"]["outputs"]) - 1
    assert [t["axes"][1] for t in down] == [t["axes"][1] for t in manifest["controlnet/ctl"]["outputs"][:-1]]


# --- refusals: before anything is written ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A tiny SD1 source with one ControlNet, and a tiny SD2 one (another cross-attention width) with one."""
    root = tmp_path_factory.mktemp("cn-sources")
    return build_controlnet_source(root / "sd1", "sd1", ("canny",)), build_controlnet_source(root / "sd2", "sd2", ("depth",))


def _refused(tmp_path, src, controlnets, match, **options):
    out = tmp_path / "out"
    with pytest.raises((ExportError, ValueError), match=match):
        export_pipeline(src, out, controlnets=controlnets, **options)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_refusals(sources, tmp_path):
    sd1, sd2 = sources
    canny = sd1.controlnets["canny"]
    _refused(tmp_path, sd1.src, [sd2.controlnets["depth"]], r"does not fit the UNet: .*cross_attention_dim 64 \(the UNet's: 32\)")
    _refused(tmp_path, sd1.src, [canny, f"canny={sd2.controlnets['depth']}"], "two ControlNets are named 'canny'")
    _refused(tmp_path, sd1.src, [("bad name", canny)], "is not usable")
    _refused(tmp_path, sd1.src, [sd1.src / "unet"], "holds a UNet2DConditionModel, not a ControlNetModel")
    _refused(tmp_path, sd1.src, [tmp_path / "nowhere"], "not a folder")
    empty = tmp_path / "empty"
    shutil.copytree(canny, empty, ignore=lambda d, names: [n for n in names if n.endswith((".safetensors", ".bin"))])
    _refused(tmp_path, sd1.src, [empty], "has no weights")


def test_parse_controlnet_arg(tmp_path):
    assert parse_controlnet_arg("canny=./a/b") == ("canny", Path("./a/b"))
    assert parse_controlnet_arg("./a/b") == (None, Path("./a/b"))
    odd = tmp_path / "x=y"  # an existing folder whose name has '=' is a DIR, not NAME=DIR
    odd.mkdir()
    assert parse_controlnet_arg(str(odd)) == (None, odd)


def test_cli_refuses_before_writing(sources, tmp_path):
    sd1, sd2 = sources
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, ["export", str(sd1.src), str(out), "--controlnet", f"d={sd2.controlnets['depth']}"])
    assert result.exit_code != 0 and "does not fit the UNet" in result.output and not out.exists()
    result = CliRunner().invoke(app, ["export", str(sd1.src), str(out), "--int8", "--controlnet", str(sd1.controlnets["canny"])])
    assert result.exit_code != 0 and "--int8 does not combine with --controlnet" in result.output and not out.exists()


def test_quantize_refuses_a_controlnet_folder(tiny_sd1_controlnet):  # noqa: F811
    with pytest.raises(QuantizeError, match="does not quantize a ControlNet folder"):
        check_model(tiny_sd1_controlnet[1])


def test_folder_with_controlnets_but_no_residual_unet(tiny_sd1_controlnet, tmp_path):  # noqa: F811
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd1_controlnet[1], copy)
    (copy / "unet" / "model_controlnet.onnx").unlink()
    with pytest.raises(ModelFolderError, match="no unet/model_controlnet.onnx"):
        ModelFolder.open(copy)
