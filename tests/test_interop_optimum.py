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


def optimum_images(folder, latents_path, out_path, scheduler, steps, guidance, negative=NEGATIVE):
    from benchmarks.peers.optimum.env import run_worker

    run_worker(["generate", str(folder), "--prompt", PROMPT, "--negative", negative or "",  # "": no negative prompt
                "--latents", str(latents_path), "--steps", str(steps), "--guidance", str(guidance),
                "--scheduler", scheduler, "--out", str(out_path)])
    return (np.load(out_path) * 255).round().astype(np.uint8)


def check_both_directions(ours, theirs, tmp_path, scheduler, steps, guidance, negative=NEGATIVE, label=""):
    """latentrt and optimum's pipeline give the same image on latentrt's folder (`ours`) and on the one optimum's
    exporter wrote (`theirs`), and the two folders give the same image."""
    latents = np.random.default_rng(3).standard_normal((1, 4, 16, 16), dtype=np.float32)
    np.save(tmp_path / "latents.npy", latents)

    def latentrt_images(folder):
        pipe = Pipeline.from_folder(folder, provider="cpu", precision="fp32")
        return pipe(PROMPT, negative_prompt=negative, steps=steps, guidance_scale=guidance, scheduler=scheduler,
                    latents=latents).arrays

    def both(folder, name):
        return latentrt_images(folder), optimum_images(folder, tmp_path / "latents.npy", tmp_path / f"{name}.npy",
                                                       scheduler, steps, guidance, negative)

    a_latentrt, a_optimum = both(ours, "a")  # optimum's pipeline on a folder latentrt wrote
    b_latentrt, b_optimum = both(theirs, "b")  # latentrt on a folder optimum wrote
    psnr_a, psnr_b = image_psnr(a_latentrt, a_optimum), image_psnr(b_latentrt, b_optimum)
    psnr_folders = image_psnr(a_latentrt, b_latentrt)
    print(f"{label} {scheduler}, negative {negative!r}: optimum on latentrt's folder {psnr_a:.1f} dB, "
          f"latentrt on optimum's folder {psnr_b:.1f} dB, the two folders {psnr_folders:.1f} dB")
    assert a_latentrt.std() > 1.0
    assert psnr_a >= IMAGE_MIN_PSNR_DB
    assert psnr_b >= IMAGE_MIN_PSNR_DB
    assert psnr_folders >= IMAGE_MIN_PSNR_DB  # the two exports agree with each other


@pytest.mark.parametrize("scheduler,steps,guidance", [("pndm", 8, 7.5), ("euler", 6, 5.0)])
def test_both_directions(tiny_sd1, optimum_sd1, tmp_path, scheduler, steps, guidance):
    # optimum's folder: no tokenizer.json, scalar float timestep
    check_both_directions(tiny_sd1[1], optimum_sd1[1], tmp_path, scheduler, steps, guidance, label="sd1")


@pytest.mark.parametrize("scheduler,steps,guidance,negative", [("euler", 6, 5.0, NEGATIVE), ("pndm", 8, 7.5, None)])
def test_sdxl_both_directions(tiny_sdxl, optimum_sdxl, tmp_path, scheduler, steps, guidance, negative):
    """ORTStableDiffusionXLPipeline and latentrt's SDXL family. optimum's folder: tokenizer/ and tokenizer_2/ without
    tokenizer.json, scalar float timestep, no manifest (6 time ids from the model_index), no final_layer_norm.npz;
    the same output names as latentrt's (hidden_states.N, text_embeds first from text_encoder_2). No negative
    prompt: both zero the negative conditioning (force_zeros_for_empty_prompt)."""
    check_both_directions(tiny_sdxl[1], optimum_sdxl[1], tmp_path, scheduler, steps, guidance, negative, label="sdxl")
