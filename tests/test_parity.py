"""End to end: latentrt's images equal diffusers' for the same latents, scheduler, steps and guidance."""

from __future__ import annotations

import numpy as np
import pytest

from latentrt import Pipeline
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
from test_schedulers import REFERENCE

PROMPT, NEGATIVE = "a red circle at the top left on a white background", "blurry"


def diffusers_images(src, latents, scheduler, steps, guidance):
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cls_name, overrides = REFERENCE[scheduler]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)
    with torch.no_grad():
        out = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=torch.from_numpy(latents),
            height=latents.shape[2] * pipe.vae_scale_factor,
            width=latents.shape[3] * pipe.vae_scale_factor,
            output_type="np",
        ).images
    return (out * 255).round().astype(np.uint8)


@pytest.mark.parametrize(
    "family,scheduler,steps,guidance",
    [
        ("sd1", "pndm", 10, 7.5),
        ("sd1", "ddim", 8, 7.5),
        ("sd1", "euler", 8, 1.0),  # guidance <= 1: unconditional half skipped on both sides
        ("sd2", "ddim", 10, 7.5),  # v-prediction, linear projection, per-block head dims
        ("sd2", "euler", 8, 5.0),
    ],
)
def test_images_match_diffusers(tiny_models, family, scheduler, steps, guidance):
    src, onnx_dir = tiny_models[family]
    pipe = Pipeline.from_folder(onnx_dir, provider="cpu")
    latents = np.random.default_rng(7).standard_normal((1, 4, 16, 16), dtype=np.float32)
    ours = pipe(
        PROMPT, negative_prompt=NEGATIVE, steps=steps, guidance_scale=guidance, scheduler=scheduler, latents=latents
    ).arrays
    reference = diffusers_images(src, latents, scheduler, steps, guidance)
    psnr = image_psnr(ours, reference)
    print(f"{family} {scheduler} {steps} steps, guidance {guidance}: PSNR {psnr:.1f} dB")
    assert ours.std() > 1.0, "degenerate (flat) image: the comparison would prove nothing"
    assert psnr >= IMAGE_MIN_PSNR_DB


def test_parity_check_is_sensitive(tiny_sd1):
    """Negative control: a different prompt or step count must fall below the parity threshold."""
    src, onnx_dir = tiny_sd1
    pipe = Pipeline.from_folder(onnx_dir, provider="cpu")
    latents = np.random.default_rng(7).standard_normal((1, 4, 16, 16), dtype=np.float32)
    reference = diffusers_images(src, latents, "pndm", 10, 7.5)
    other_prompt = pipe("a blue square", negative_prompt=NEGATIVE, steps=10, guidance_scale=7.5, scheduler="pndm", latents=latents)
    other_steps = pipe(PROMPT, negative_prompt=NEGATIVE, steps=9, guidance_scale=7.5, scheduler="pndm", latents=latents)
    assert image_psnr(other_prompt.arrays, reference) < IMAGE_MIN_PSNR_DB
    assert image_psnr(other_steps.arrays, reference) < IMAGE_MIN_PSNR_DB
