"""The seams of a generation: one Request checked in one place, tasks as objects, observers of every network call
and stage, one default strength per task. On the shipped model (a second or so each)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from PIL import Image

from latentrt import Pipeline, Request
from latentrt.runtime.defaults import DEFAULT_STRENGTH
from latentrt.runtime.observers import NETWORK, STAGE
from latentrt.runtime.tasks import ImageToImage, Inpaint, InpaintChannels, TextToImage

PROMPT = "a red circle at the top left on a white background"


@pytest.fixture(scope="module")
def pipe():
    with Pipeline.default(provider="cpu", precision="fp32") as pipeline:
        yield pipeline


def square_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def test_call_and_run_of_the_same_request_give_the_same_image(pipe):
    by_call = pipe(PROMPT, steps=3, seed=4, guidance_scale=3.0)
    by_run = pipe.run(Request(PROMPT, steps=3, seed=4, guidance_scale=3.0))
    assert np.array_equal(by_call.arrays, by_run.arrays)
    assert by_call.parameters == by_run.parameters


def test_check_resolves_the_defaults_and_picks_the_task(pipe):
    defaults = pipe.folder.defaults
    plan = pipe.check(Request(PROMPT))
    assert (plan.steps, plan.guidance_scale, plan.scheduler) == (defaults.steps, defaults.guidance_scale, defaults.scheduler)
    assert (plan.height, plan.width) == (64, 64) and isinstance(plan.task, TextToImage)
    image = Image.new("RGB", (72, 60), "white")
    plan = pipe.check(Request(PROMPT, image=image))
    assert isinstance(plan.task, ImageToImage) and (plan.height, plan.width) == (60, 72)  # the image's size
    assert plan.task.strength == DEFAULT_STRENGTH["img2img"] == 0.8
    plan = pipe.check(Request(PROMPT, image=image, mask_image=square_mask().resize((72, 60))))
    assert type(plan.task) is Inpaint and plan.task.strength == DEFAULT_STRENGTH["inpaint"] == 1.0
    assert not isinstance(plan.task, InpaintChannels)  # the shipped UNet has 4 channels


def test_check_refuses_before_any_network_runs(pipe):
    events = []
    with pipe.observe(events.append):
        for bad, words in [(Request(PROMPT, width=66), "multiple of 4"),
                           (Request(PROMPT, steps=0), "steps must be an integer of at least 1"),
                           (Request(PROMPT, steps=5000), r"steps must be in \[1, 1000\]"),
                           (Request(PROMPT, guidance_scale=float("nan")), "guidance_scale must be a finite number"),
                           (Request(PROMPT, strength=0.5), "strength applies to image to image only"),
                           (Request(PROMPT, scheduler="fastest"), "unknown scheduler"),
                           (Request(PROMPT, width=100_000, height=100_000), "largest size that fits")]:
            with pytest.raises(ValueError, match=words):
                pipe.run(bad)
    assert events == []  # nothing was encoded, denoised or decoded


def test_observers_see_every_network_call_and_stage(pipe):
    events = []
    with pipe.observe(events.append):
        result = pipe(PROMPT, steps=4, seed=1, guidance_scale=2.0, scheduler="ddim")
    pipe(PROMPT, steps=2, seed=1)  # after the block: not observed
    networks = [e.name for e in events if e.kind == NETWORK]
    assert networks == ["text_encoder"] + ["unet"] * 4 + ["vae_decoder"]
    assert [e.name for e in events if e.kind == STAGE] == ["text_encoder", "denoise", "vae_decode"]
    unet = [e for e in events if e.name == "unet"]
    assert set(unet[0].inputs) == {"sample", "timestep", "encoder_hidden_states"}
    assert unet[0].inputs["sample"].shape[0] == 2  # classifier-free guidance: two rows per image
    assert all(e.seconds >= 0 for e in events)
    stages = {e.name: e.seconds for e in events if e.kind == STAGE}
    assert stages["denoise"] == result.timings["denoise"] and stages["vae_decode"] == result.timings["vae_decode"]


def test_an_observer_that_raises_stops_the_generation(pipe):
    class Stop(Exception):
        pass

    def stop_at_second_unet_call(event, seen=[]):  # noqa: B006 (a counter)
        if event.name == "unet":
            seen.append(event)
            if len(seen) == 2:
                raise Stop

    with pipe.observe(stop_at_second_unet_call), pytest.raises(Stop):
        pipe(PROMPT, steps=6, seed=1)


def test_image_tasks_are_observed_with_their_encoder(pipe):
    source = pipe(PROMPT, steps=3, seed=2).images[0]
    events = []
    with pipe.observe(events.append):
        result = pipe(PROMPT, image=source, mask_image=square_mask(), steps=4, seed=3)
    assert [e.name for e in events if e.kind == NETWORK].count("vae_encoder") == 1  # 4-channel: the image only
    assert "vae_encode" in [e.name for e in events if e.kind == STAGE]
    assert result.parameters[0].strength == 1.0 and result.parameters[0].task == "inpaint"


def test_the_public_stages_reproduce_the_loop(pipe):
    """encode_prompt, denoiser, decode: the pipeline's own stages, as a tool runs them one at a time."""
    plan = pipe.check(Request(PROMPT, steps=1, guidance_scale=1.0, scheduler="ddim"))
    latents = np.random.default_rng(0).standard_normal((1, *pipe.latent_shape()), dtype=np.float32)
    conditioning = pipe.encode_prompt(plan)
    calls = []
    with pipe.observe(lambda e: calls.append(e.name)), pipe.denoiser(conditioning) as unet:
        noise, feature = unet(latents, 999.0)
    assert calls == ["unet"] and noise.shape == latents.shape and feature is None
    assert pipe.decode(latents).shape == (1, 3, 64, 64)


def test_tasks_are_copied_per_run_so_a_plan_runs_twice_alike(pipe):
    source = pipe(PROMPT, steps=3, seed=2).images[0]
    request = Request(PROMPT, image=source, mask_image=square_mask(), strength=0.6, steps=5, seed=9, scheduler="euler")
    first, second = pipe.run(request), pipe.run(dataclasses.replace(request))
    assert np.array_equal(first.arrays, second.arrays)


def test_the_cli_and_the_server_say_the_same_sentence(pipe, tmp_path):
    """A check and its message exist once: the CLI's exit-2 error and the server's 422 are the pipeline's words."""
    pytest.importorskip("fastapi")
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from latentrt.cli import app
    from latentrt.serve.app import ApiError, check_job
    from latentrt.serve.jobs import Job

    with pytest.raises(ValueError) as direct:
        pipe.check(Request(PROMPT, width=66, steps=5000))
    cli = CliRunner().invoke(app, ["generate", PROMPT, "--width", "66", "--steps", "5000", "-o", str(tmp_path / "x.png"),
                                   "--provider", "cpu"])
    assert cli.exit_code == 2
    with pytest.raises(ApiError) as served:
        check_job(SimpleNamespace(pipe=pipe), Job(Request(PROMPT, width=66, steps=5000), [1]))
    assert served.value.status == 422
    assert str(direct.value) == served.value.message
    assert re.sub(r"\s+", " ", str(direct.value)) in re.sub(r"\s+", " ", cli.output)


def test_observers_see_networks_opened_after_load():
    """low_memory opens each network when a call reaches it: an "open" event each, before that network's calls."""
    from latentrt.runtime.observers import OPEN

    lean = Pipeline.default(provider="cpu", precision="fp32", low_memory=True)
    events = []
    with lean.observe(events.append):
        lean(PROMPT, steps=2, seed=1)
    opened = [e.name for e in events if e.kind == OPEN]
    assert sorted(opened) == ["text_encoder", "unet", "vae_decoder"] and all(e.seconds > 0 for e in events if e.kind == OPEN)
    order = [(e.kind, e.name) for e in events]
    assert order.index((OPEN, "unet")) < order.index((NETWORK, "unet"))
