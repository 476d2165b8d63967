"""Folders move both ways between latentrt and optimum, with the same image for the same latents.

optimum runs in its own virtual environment (benchmarks/peers/optimum: built once, cached in
~/.cache/latentrt): optimum-onnx pins transformers and huggingface_hub older than current diffusers.
"""

from __future__ import annotations

import numpy as np
import pytest

from latentrt import Pipeline
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr

pytestmark = pytest.mark.optimum

PROMPT, NEGATIVE = "a red circle at the top left on a white background", "blurry"  # ASCII: see the tokenizer notes


@pytest.fixture(scope="module")
def optimum_folder(optimum_sd1):
    return optimum_sd1[1]


def optimum_images(folder, latents_path, out_path, scheduler, steps, guidance):
    from benchmarks.peers.optimum.env import run_worker

    run_worker(["generate", str(folder), "--prompt", PROMPT, "--negative", NEGATIVE, "--latents", str(latents_path),
                "--steps", str(steps), "--guidance", str(guidance), "--scheduler", scheduler, "--out", str(out_path)])
    return (np.load(out_path) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("scheduler,steps,guidance", [("pndm", 8, 7.5), ("euler", 6, 5.0)])
def test_both_directions(tiny_sd1, optimum_folder, tmp_path, scheduler, steps, guidance):
    _, ours = tiny_sd1
    latents = np.random.default_rng(3).standard_normal((1, 4, 16, 16), dtype=np.float32)
    np.save(tmp_path / "latents.npy", latents)

    def latentrt_images(folder):
        pipe = Pipeline.from_folder(folder, provider="cpu")
        return pipe(PROMPT, negative_prompt=NEGATIVE, steps=steps, guidance_scale=guidance, scheduler=scheduler,
                    latents=latents).arrays

    # optimum's ORTStableDiffusionPipeline on a folder latentrt wrote
    a_optimum = optimum_images(ours, tmp_path / "latents.npy", tmp_path / "a.npy", scheduler, steps, guidance)
    a_latentrt = latentrt_images(ours)
    psnr_a = image_psnr(a_latentrt, a_optimum)
    # latentrt on a folder optimum wrote (no tokenizer.json, scalar float timestep)
    b_optimum = optimum_images(optimum_folder, tmp_path / "latents.npy", tmp_path / "b.npy", scheduler, steps, guidance)
    b_latentrt = latentrt_images(optimum_folder)
    psnr_b = image_psnr(b_latentrt, b_optimum)
    print(f"{scheduler}: optimum on latentrt's folder {psnr_a:.1f} dB, latentrt on optimum's folder {psnr_b:.1f} dB")
    assert a_latentrt.std() > 1.0
    assert psnr_a >= IMAGE_MIN_PSNR_DB
    assert psnr_b >= IMAGE_MIN_PSNR_DB
    # and the two exports agree with each other
    assert image_psnr(a_latentrt, b_latentrt) >= IMAGE_MIN_PSNR_DB
