"""Exporter: the folder contract, atomicity, refusals, validation failures."""

from __future__ import annotations

import json

import pytest

from latentrt.export import exporter
from latentrt.export.exporter import ExportError, export_pipeline
from latentrt.export.validate import ValidationError, compare_arrays, check_component


def test_folder_layout_and_manifest(tiny_sd1):
    _, out = tiny_sd1
    for part in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (out / part / "model.onnx").is_file()
        assert (out / part / "config.json").is_file()
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["optimum", "ORTModelUnet"]
    manifest = json.loads((out / "manifest.json").read_text())
    unet = manifest["components"]["unet"]
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["files"]["model.onnx"]["bytes"] == (out / "unet" / "model.onnx").stat().st_size
    assert len(unet["files"]["model.onnx"]["sha256"]) == 64
    for entry in manifest["components"].values():
        for figure in entry["validation"]:
            assert figure["max_rel_error"] <= 1e-4
    assert manifest["exporter"]["latentrt"]
    assert not list(out.parent.glob(".*partial*"))


def test_source_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(ExportError, match="no model_index.json"):
        export_pipeline(tmp_path / "src", tmp_path / "out")
    (tmp_path / "src" / "model_index.json").write_text('{"_class_name": "AudioLDMPipeline", "vae": ["diffusers", "AutoencoderKL"]}')
    with pytest.raises(ExportError, match="lacks text_encoder, tokenizer, unet"):
        export_pipeline(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_out_is_refused_without_force(tiny_sd1, tmp_path):
    src, _ = tiny_sd1
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        export_pipeline(src, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_failure_leaves_no_folder_and_keeps_the_old_one(tiny_sd1, tmp_path, monkeypatch):
    src, _ = tiny_sd1
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def broken(spec, module, path, seed=0):
        if spec.name == "unet":
            raise ValidationError("unet.out_sample: simulated disagreement")
        return []

    monkeypatch.setattr(exporter, "validate_component", broken)
    with pytest.raises(ValidationError, match="simulated"):
        export_pipeline(src, out, force=True)
    assert (out / "keep.txt").read_text() == "mine"  # --force replaces only after success
    assert not list(tmp_path.glob(".*partial*"))
    with pytest.raises(ValidationError):
        export_pipeline(src, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_force_replaces(tiny_sd1, tmp_path):
    src, _ = tiny_sd1
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_pipeline(src, out, force=True, validate=False)
    assert not (out / "stale.txt").exists()
    assert (out / "manifest.json").is_file()


def test_thresholds_reject_a_real_difference():
    import numpy as np

    ref = np.linspace(-1, 1, 1000, dtype=np.float32)
    check_component(compare_arrays("ok", ref + 1e-6, ref))
    with pytest.raises(ValidationError, match="exceeds the fp32 threshold"):
        check_component(compare_arrays("bad", ref * 1.01, ref))


def test_compact_weights_halve_an_fp16_checkpoint_and_change_nothing(tiny_sd1, tmp_path):
    """A checkpoint saved in fp16 exports at about half the size with --compact-weights, same outputs."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from latentrt.runtime.session import OnnxModel

    src, _ = tiny_sd1
    half = tmp_path / "fp16-diffusers"
    StableDiffusionPipeline.from_pretrained(src, safety_checker=None).to(torch.float16).save_pretrained(half)
    plain, compact = tmp_path / "plain", tmp_path / "compact"
    export_pipeline(half, plain, validate=False)
    export_pipeline(half, compact, compact_weights=True, defaults={"steps": 12, "scheduler": "euler"})

    manifest = json.loads((compact / "manifest.json").read_text())
    assert manifest["defaults"] == {"steps": 12, "scheduler": "euler"}
    assert manifest["components"]["unet"]["fp16_stored_weights"] > 10
    size = lambda folder: (folder / "unet" / "model.onnx").stat().st_size  # noqa: E731
    assert size(compact) < 0.6 * size(plain)

    rng = np.random.default_rng(0)
    feed = {
        "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        "timestep": np.array([999.0, 10.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    run = lambda folder: OnnxModel("unet", folder / "unet" / "model.onnx", ["CPUExecutionProvider"])(**feed)  # noqa: E731
    a, b = run(plain)["out_sample"], run(compact)["out_sample"]
    np.testing.assert_array_equal(a, b)


def test_bad_generation_defaults_are_refused_before_any_work(tiny_sd1, tmp_path):
    src, _ = tiny_sd1
    with pytest.raises(ExportError, match="unknown default scheduler 'fast'"):
        export_pipeline(src, tmp_path / "out", defaults={"scheduler": "fast"})
    with pytest.raises(ExportError, match="steps must be a positive integer"):
        export_pipeline(src, tmp_path / "out", defaults={"steps": 0})
    assert not (tmp_path / "out").exists()


def test_attention_is_fused_unless_plain_is_asked_for(tiny_models, tmp_path):
    """Every UNet attention becomes one MultiHeadAttention; --plain-attention keeps standard ops only."""
    import onnx

    for family, (src, out) in tiny_models.items():
        manifest = json.loads((out / "manifest.json").read_text())
        graph = onnx.load(str(out / "unet" / "model.onnx")).graph
        ops = [n.op_type for n in graph.node]
        assert manifest["rewrites"]["fused_attention"] is True
        assert manifest["components"]["unet"]["fused_attention"] == ops.count("MultiHeadAttention") > 0, family
        assert "Softmax" not in ops, family  # every attention in the UNet matched
    src, _ = tiny_models["sd1"]
    export_pipeline(src, tmp_path / "plain", fused_attention=False, validate=False)
    graph = onnx.load(str(tmp_path / "plain" / "unet" / "model.onnx")).graph
    assert {n.domain for n in graph.node} <= {""}
