"""DeepCache: the export's split (validated against the full torch UNet), the runtime's cache_interval, parity with
a DeepCache loop run on diffusers, the step plan, bad input, LoRAs on the shallow copy, the bench rows."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from latentrt import Pipeline
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
from latentrt.runtime.deepcache import full_calls
from latentrt.runtime.observers import OPEN
from test_schedulers import REFERENCE

PROMPT, NEGATIVE = "a red circle at the top left on a white background", "blurry"


def _export(src, out, branch):
    from latentrt.export.exporter import export_pipeline

    export_pipeline(src, out, cache_branch=branch, report=logging.getLogger("test-export").info)
    return out


@pytest.fixture(scope="module")
def deepcache_sd1(tiny_sd1, tmp_path_factory):
    """{branch: the tiny SD 1 model exported with --deepcache at that branch} (0: shallowest, 2: deepest here)."""
    root = tmp_path_factory.mktemp("deepcache")
    return {branch: _export(tiny_sd1[0], root / f"branch{branch}", branch) for branch in (0, 2)}


def _latents(pipe, seed=0, batch=1):
    return np.random.default_rng(seed).standard_normal((batch, *pipe.latent_shape()), dtype=np.float32)


# --- export --------------------------------------------------------------------------------------------------
def test_export_writes_the_split_validated_against_the_full_unet(deepcache_sd1):
    for branch, folder in deepcache_sd1.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        entry = manifest["deepcache"]
        assert entry["branch"] == branch and entry["shallow"] == "unet_shallow" and entry["feature"] == "deepcache_feature"
        unet, shallow = manifest["components"]["unet"], manifest["components"]["unet_shallow"]
        assert [o["name"] for o in unet["outputs"]] == ["out_sample", "deepcache_feature"]
        assert "deepcache_feature" in [i["name"] for i in shallow["inputs"]]
        # the shallow graph, fed the feature the full torch UNet computed, reproduces the full UNet's output
        (check,) = shallow["validation"]
        assert check["name"] == "unet_shallow.out_sample" and check["max_rel_error"] < 1e-5
        assert {c["name"] for c in unet["validation"]} == {"unet.out_sample", "unet.deepcache_feature"}
        assert all(c["max_rel_error"] < 1e-4 for c in unet["validation"])
        assert shallow["weights"], "the shallow UNet has a weight map (LoRAs adapt it too)"
    sizes = {b: sum(f["bytes"] for f in json.loads((f / "manifest.json").read_text())["components"]["unet_shallow"]["files"].values())
             for b, f in deepcache_sd1.items()}
    assert sizes[0] < sizes[2], "a deeper split keeps more of the UNet in the shallow graph"


def test_a_branch_the_unet_does_not_have_is_refused(tiny_sd1, tmp_path):
    from latentrt.export.exporter import ExportError

    with pytest.raises(ExportError, match=r"cache branch 7 .* choose 0 .* to 2"):
        _export(tiny_sd1[0], tmp_path / "out", 7)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="whole number"):
        _export(tiny_sd1[0], tmp_path / "out", -1)


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_the_shallow_graph_reproduces_the_full_unet_from_the_same_step_feature(deepcache_sd1, provider):
    pytest.importorskip(provider) if provider == "openvino" else None
    pipe = Pipeline.from_folder(deepcache_sd1[2], provider=provider, precision="fp32", use_cache=False)
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((2, *pipe.latent_shape()), dtype=np.float32)
    conditioning = {"encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)}
    with pipe.denoiser(conditioning, shallow=True) as unet:
        full, feature = unet(sample, 500.0, keep_feature=True)
        shallow = unet.shallow(sample, 500.0, feature)
    assert np.abs(shallow - full).max() <= 1e-5 * np.abs(full).max()


# --- runtime -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler,guidance", [("dpm++2m", 7.5), ("pndm", 7.5), ("ddim", 1.0), ("heun", 7.5)])
def test_interval_one_gives_exactly_todays_images(tiny_sd1, deepcache_sd1, scheduler, guidance):
    plain = Pipeline.from_folder(tiny_sd1[1], provider="cpu", use_cache=False)
    cached = Pipeline.from_folder(deepcache_sd1[0], provider="cpu", use_cache=False)
    latents = _latents(plain)
    a = plain(PROMPT, NEGATIVE, steps=8, guidance_scale=guidance, scheduler=scheduler, latents=latents)
    b = cached(PROMPT, NEGATIVE, steps=8, guidance_scale=guidance, scheduler=scheduler, latents=latents, cache_interval=1)
    assert np.array_equal(a.arrays, b.arrays)
    assert b.unet_calls == {"full": a.unet_calls["full"], "shallow": 0}


def diffusers_deepcache_images(src, latents, scheduler, steps, guidance, interval, branch):
    """diffusers' StableDiffusionPipeline with DeepCache done in torch: the UNet's forward replaced by the full UNet
    (feature recorded) on the plan's full calls and latentrt's torch shallow forward on the others."""
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    from latentrt.export import deepcache

    pipe = StableDiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cls_name, overrides = REFERENCE[scheduler]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)
    unet, split = pipe.unet, deepcache.locate_split(pipe.unet, branch)
    stock, state = unet.forward, {"call": 0, "feature": None, "plan": None}

    def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        if state["plan"] is None:
            state["plan"] = full_calls(len(pipe.scheduler.timesteps), interval)
        full = state["plan"][state["call"]]
        state["call"] += 1
        if full:
            with deepcache.FeatureTap(unet, split) as tap:
                out = stock(sample, timestep, encoder_hidden_states, *args, **kwargs)
            state["feature"] = tap.value
            return out
        t = timestep.expand(sample.shape[0]) if timestep.ndim == 0 else timestep
        return (deepcache.shallow_forward(unet, split, sample, t, encoder_hidden_states, state["feature"]),)

    unet.forward = forward
    with torch.no_grad():
        out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance,
                   latents=torch.from_numpy(latents), height=latents.shape[2] * pipe.vae_scale_factor,
                   width=latents.shape[3] * pipe.vae_scale_factor,
                   output_type="np").images
    assert state["call"] == len(state["plan"])
    return (out * 255).round().astype(np.uint8)


@pytest.mark.parametrize(
    "scheduler,steps,guidance,interval,branch",
    [("dpm++2m", 10, 7.5, 3, 0), ("ddim", 8, 7.5, 2, 2), ("pndm", 10, 1.0, 5, 0), ("heun", 5, 7.5, 3, 2)],
)
def test_cached_images_match_deepcache_on_diffusers(tiny_sd1, deepcache_sd1, scheduler, steps, guidance, interval, branch):
    pipe = Pipeline.from_folder(deepcache_sd1[branch], provider="cpu", use_cache=False)
    latents = _latents(pipe, seed=3)
    ours = pipe(PROMPT, NEGATIVE, steps=steps, guidance_scale=guidance, scheduler=scheduler, latents=latents,
                cache_interval=interval)
    calls = ours.unet_calls["full"] + ours.unet_calls["shallow"]
    assert ours.unet_calls["full"] == math.ceil(calls / interval) and ours.unet_calls["shallow"] > 0
    reference = diffusers_deepcache_images(tiny_sd1[0], latents, scheduler, steps, guidance, interval, branch)
    assert image_psnr(ours.arrays, reference) >= IMAGE_MIN_PSNR_DB
    uncached = pipe(PROMPT, NEGATIVE, steps=steps, guidance_scale=guidance, scheduler=scheduler, latents=latents)
    assert not np.array_equal(uncached.arrays, ours.arrays), "the shallow calls changed nothing: caching did not run"
    assert "DeepCache interval: %d" % interval in ours.parameters[0].a1111()


def test_stochastic_schedulers_and_image_tasks_cache_too(deepcache_sd1):
    pipe = Pipeline.from_folder(deepcache_sd1[0], provider="cpu", use_cache=False)
    first = pipe(PROMPT, steps=6, scheduler="euler-a", seed=5, cache_interval=2)
    again = pipe(PROMPT, steps=6, scheduler="euler-a", seed=5, cache_interval=2)
    assert np.array_equal(first.arrays, again.arrays) and first.unet_calls == {"full": 3, "shallow": 3}
    image = first.images[0]
    edited = pipe(PROMPT, image=image, strength=0.8, steps=10, seed=1, scheduler="ddim", cache_interval=3,
                  cache_schedule="nonuniform")
    assert edited.unet_calls == {"full": 3, "shallow": 5}  # int(10 x 0.8) = 8 calls


def test_step_plans():
    assert full_calls(7, 3) == [True, False, False, True, False, False, True]
    assert full_calls(5, 1) == [True] * 5 and full_calls(3, 10) == [True, False, False]
    for calls, interval in ((20, 2), (20, 3), (50, 5), (50, 3), (21, 3), (4, 3)):
        plan = full_calls(calls, interval, "nonuniform")
        assert len(plan) == calls and plan[0] and sum(plan) == math.ceil(calls / interval)
    plan = full_calls(50, 5, "nonuniform")
    gaps = np.diff(np.flatnonzero(plan))
    assert gaps.min() < 5 < gaps.max(), "non-uniform: denser full calls near the centre, sparser at the ends"


def test_bad_input(tiny_sd1, deepcache_sd1, caplog):
    pipe = Pipeline.from_folder(deepcache_sd1[0], provider="cpu", use_cache=False)
    for bad in (0, -2, 1.5, "3", True, None):
        with pytest.raises(ValueError, match="cache_interval must be an integer >= 1"):
            pipe(PROMPT, steps=4, cache_interval=bad)
    with pytest.raises(ValueError, match="unknown cache_schedule 'random'"):
        pipe(PROMPT, steps=4, cache_interval=2, cache_schedule="random")
    plain = Pipeline.from_folder(tiny_sd1[1], provider="cpu", use_cache=False)
    with pytest.raises(ValueError, match=r"no DeepCache shallow UNet .*`latentrt export --deepcache`"):
        plain(PROMPT, steps=4, cache_interval=2)
    plain(PROMPT, steps=4, cache_interval=1)  # no caching asked: any folder
    with caplog.at_level(logging.WARNING, logger="latentrt.runtime.pipeline"):
        result = pipe(PROMPT, steps=4, seed=0, scheduler="ddim", cache_interval=10)
    assert result.unet_calls == {"full": 1, "shallow": 3}
    assert "cache_interval 10 is more than the 4 UNet calls" in caplog.text and "only the first runs the full UNet" in caplog.text


def test_openvino_compiles_and_runs_the_shallow_unet(deepcache_sd1):
    pytest.importorskip("openvino")
    pipe = Pipeline.from_folder(deepcache_sd1[2], provider="openvino", precision="fp32", use_cache=False)
    pipe.compile(guidance_scale=7.5)
    feature = pipe.folder.deepcache["feature"]
    assert pipe.resident_networks["unet_shallow"].compiled_for(feature, pipe._feature_shape(2, *pipe.latent_shape()[1:])[feature])
    ov = pipe(PROMPT, NEGATIVE, steps=8, guidance_scale=7.5, seed=2, cache_interval=3)
    ort = Pipeline.from_folder(deepcache_sd1[2], provider="cpu", use_cache=False)(
        PROMPT, NEGATIVE, steps=8, guidance_scale=7.5, seed=2, cache_interval=3)
    assert image_psnr(ov.arrays, ort.arrays) >= IMAGE_MIN_PSNR_DB


def test_cli_cache_interval(deepcache_sd1, tmp_path):
    from typer.testing import CliRunner

    from latentrt.cli import app

    runner = CliRunner()
    out = tmp_path / "a.png"
    result = runner.invoke(app, ["generate", PROMPT, "-m", str(deepcache_sd1[0]), "--steps", "6", "--scheduler", "ddim", "--cache-interval", "3",
                                 "--provider", "cpu", "--seed", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "DeepCache: 2 full UNet calls, 4 shallow" in result.output and out.is_file()
    result = runner.invoke(app, ["generate", PROMPT, "-m", str(deepcache_sd1[0]), "--cache-interval", "0", "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 2 and "cache_interval must be an integer >= 1" in result.output
    assert not (tmp_path / "b.png").exists()


def test_shipped_model_caches_and_keeps_its_adherence():
    """The shipped model is exported with --deepcache; 20 steps of dpm++2m at interval 3 still draws what is asked
    (the full measurement: training/shapes/results/deepcache.md)."""
    from training.shapes.evaluate import generate_onnx, prompt_splits
    from training.shapes.judge import score

    pipe = Pipeline.default(provider="cpu", use_cache=False)
    assert pipe.folder.deepcache is not None
    attrs = prompt_splits()["test"]
    images = generate_onnx(pipe, attrs, seed=7, steps=20, scheduler="dpm++2m", cache_interval=3)
    assert score(list(images), attrs)["all"] >= 0.9


def test_loras_adapt_the_shallow_unet_too(tiny_sd1, deepcache_sd1, tmp_path):
    pytest.importorskip("peft", reason="the LoRA is made with peft (the dev extra)")
    from test_lora import make_peft_lora

    lora = make_peft_lora(tiny_sd1[0], tmp_path / "lora", seed=1)
    pipe = Pipeline.from_folder(deepcache_sd1[2], provider="cpu", use_cache=False, loras=[lora])
    assert pipe._lora_weights.get("unet_shallow"), "the LoRA's layers in the shallow UNet were patched"
    # the adapted shallow graph still reproduces the adapted full UNet from the same step's feature
    rng = np.random.default_rng(4)
    sample = rng.standard_normal((1, *pipe.latent_shape()), dtype=np.float32)
    conditioning = {"encoder_hidden_states": rng.standard_normal((1, 77, 32), dtype=np.float32)}
    with pipe.denoiser(conditioning, shallow=True) as unet:
        full, feature = unet(sample, 300.0, keep_feature=True)
        shallow = unet.shallow(sample, 300.0, feature)
    with Pipeline.from_folder(deepcache_sd1[2], provider="cpu", use_cache=False).denoiser(conditioning) as plain_unet:
        plain_full, _ = plain_unet(sample, 300.0)
    assert np.abs(full - plain_full).max() > 1e-3, "the LoRA changes the UNet"
    assert np.abs(shallow - full).max() <= 1e-5 * np.abs(full).max()


def test_low_memory_keeps_the_shallow_unet_open_for_the_loop(deepcache_sd1):
    pipe = Pipeline.from_folder(deepcache_sd1[0], provider="cpu", use_cache=False, low_memory=True)
    opened = []
    with pipe.observe(lambda event: opened.append(event.name) if event.kind == OPEN else None):
        result = pipe(PROMPT, steps=9, scheduler="ddim", seed=0, cache_interval=3)
    assert result.unet_calls == {"full": 3, "shallow": 6}
    assert opened.count("unet_shallow") == 1 and opened.count("unet") == 1
    assert "unet_shallow" not in pipe.resident_networks  # released after the call, as every network with low_memory
    same = Pipeline.from_folder(deepcache_sd1[0], provider="cpu", use_cache=False)(
        PROMPT, steps=9, scheduler="ddim", seed=0, cache_interval=3)
    assert np.array_equal(result.arrays, same.arrays)


def test_sdxl_caches_too(tiny_sdxl, tmp_path):
    """SDXL's extra UNet inputs (text_embeds, time_ids) reach the shallow UNet where its layers use them."""
    folder = _export(tiny_sdxl[0], tmp_path / "sdxl", 1)
    pipe = Pipeline.from_folder(folder, provider="cpu", use_cache=False)
    plain = Pipeline.from_folder(tiny_sdxl[1], provider="cpu", use_cache=False)
    latents = _latents(pipe, seed=2)
    same = pipe(PROMPT, NEGATIVE, steps=6, guidance_scale=5.0, scheduler="euler", latents=latents)
    assert np.array_equal(same.arrays, plain(PROMPT, NEGATIVE, steps=6, guidance_scale=5.0, scheduler="euler",
                                             latents=latents).arrays)
    cached = pipe(PROMPT, NEGATIVE, steps=6, guidance_scale=5.0, scheduler="euler", latents=latents, cache_interval=2)
    assert cached.unet_calls == {"full": 3, "shallow": 3}
    assert np.isfinite(cached.latents).all() and not np.array_equal(cached.arrays, same.arrays)
