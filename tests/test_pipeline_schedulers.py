"""Every scheduler through the whole pipeline: latentrt's image equals diffusers' (same latents and,
for the stochastic samplers, the same injected noise), on the tiny SD 1.x and SD 2.x models."""

from __future__ import annotations

import numpy as np
import pytest

from latentrt import Pipeline
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
from latentrt.runtime.schedulers import available_schedulers
from test_schedulers import NOISE_MODULES, REFERENCE, STOCHASTIC

PROMPT, NEGATIVE = "a green square at the middle center on a black background", "blurry"
STEPS = 5
NOISE_SEED = 11


def diffusers_images(src, name: str, latents: np.ndarray) -> np.ndarray:
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    if name == "lms":
        pytest.importorskip("scipy", reason="diffusers' LMSDiscreteScheduler (the reference) needs scipy")
    pipe = StableDiffusionPipeline.from_pretrained(src)
    pipe.set_progress_bar_config(disable=True)
    cls_name, overrides = REFERENCE[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)
    noise_rng = np.random.default_rng(NOISE_SEED)
    mp = pytest.MonkeyPatch()
    if name in STOCHASTIC:  # the scheduler's noise comes from the same NumPy stream as latentrt's

        def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
            return torch.from_numpy(noise_rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype)

        mp.setattr(f"{NOISE_MODULES[cls_name]}.randn_tensor", randn_tensor)
    try:
        with torch.no_grad():
            out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0,
                       latents=torch.from_numpy(latents), output_type="np",
                       height=latents.shape[2] * pipe.vae_scale_factor, width=latents.shape[3] * pipe.vae_scale_factor).images
    finally:
        mp.undo()
    return (out * 255).round().astype(np.uint8)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("name", available_schedulers())
def test_every_scheduler_matches_diffusers(tiny_models, family, name):
    src, onnx_dir = tiny_models[family]
    latents = np.random.default_rng(2).standard_normal((1, 4, 16, 16), dtype=np.float32)
    ours = Pipeline.from_folder(onnx_dir, provider="cpu")(
        PROMPT, negative_prompt=NEGATIVE, steps=STEPS, guidance_scale=6.0, scheduler=name, latents=latents,
        rng=np.random.default_rng(NOISE_SEED),
    )
    assert ours.parameters[0].sampler == name
    reference = diffusers_images(src, name, latents)
    psnr = image_psnr(ours.arrays, reference)
    print(f"{family} {name}: PSNR {psnr:.1f} dB")
    assert psnr >= IMAGE_MIN_PSNR_DB


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_seeds(tiny_sd1, name):
    pipe = Pipeline.from_folder(tiny_sd1[1], provider="cpu")

    def image(seed):
        return pipe(PROMPT, steps=STEPS, guidance_scale=6.0, scheduler=name, seed=seed).arrays

    first = image(1)
    assert np.array_equal(first, image(1))
    assert image_psnr(first, image(2)) < IMAGE_MIN_PSNR_DB
