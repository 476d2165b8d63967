"""Inpainting: latentrt's images equal diffusers' StableDiffusionInpaintPipeline for the same image, mask and
noises (a 4-channel UNet: the known region re-noised and blended after every step; a 9-channel inpainting UNet
exported from a StableDiffusionInpaintPipeline folder); the unmasked region keeps
the image; bad input is refused in words; the CLI's --image / --mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
from latentrt.runtime.images import read_parameters
from test_img2img import NEGATIVE, PROMPT, circle, numpy_noise_pipeline


def square_mask(size: int = 64, lo: int = 24, hi: int = 56) -> np.ndarray:
    """A uint8 (size, size) mask: white (repaint) in a square off the latent grid's cell edges, black elsewhere."""
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo + 3:hi - 5] = 255
    return mask


def diffusers_inpaint(src, image, mask, scheduler, steps, guidance, strength, seed, num_images, monkeypatch):
    """diffusers' images, its randn_tensor drawing from NumPy in call order (image sample, noise, masked-image sample)."""
    import torch

    pipe = numpy_noise_pipeline("StableDiffusionInpaintPipeline", "pipeline_stable_diffusion_inpaint", src, scheduler, seed, monkeypatch)
    with torch.no_grad():
        out = pipe(
            PROMPT, image=image, mask_image=mask, strength=strength, negative_prompt=NEGATIVE, height=image.height,
            width=image.width, num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=num_images,
            output_type="np",
        ).images
    return (out * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pipe(tiny_sd1):
    return Pipeline.from_folder(tiny_sd1[1], provider="cpu", precision="fp32")


@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory):
    """(diffusers folder, ONNX folder) of a tiny StableDiffusionInpaintPipeline: a 9-channel UNet."""
    import logging

    from latentrt.export.exporter import export_pipeline
    from latentrt.export.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("inpaint")
    src, out = root / "diffusers", root / "onnx"
    build_tiny_pipeline(src, family="sd1", seed=1, inpaint=True)
    export_pipeline(src, out, report=logging.getLogger("test-export").info)
    return src, out


@pytest.mark.parametrize("unet,scheduler,steps,strength,num_images", [
    ("4-channel", "ddim", 5, 1.0, 1), ("4-channel", "ddim", 4, 0.75, 1), ("4-channel", "euler", 5, 1.0, 2),
    ("4-channel", "euler", 4, 0.75, 1), ("4-channel", "heun", 4, 0.75, 1), ("4-channel", "dpm++2m-sde-karras", 5, 1.0, 1),
    ("4-channel sd2", "dpm++2m", 5, 1.0, 1), ("4-channel sd2", "euler-a", 5, 0.75, 1), ("4-channel sd2", "unipc", 5, 0.75, 1),
    ("9-channel", "ddim", 4, 1.0, 2), ("9-channel", "euler", 4, 0.75, 1), ("9-channel", "dpm++2m", 5, 0.75, 1),
])
def test_inpaint_matches_diffusers(request, monkeypatch, unet, scheduler, steps, strength, num_images):
    """tiny_sd1 and tiny_sd2 (any SD UNet: re-noise and blend after every step) and a tiny inpainting model (9-channel
    UNet); multistep, second-order and stochastic schedulers among them."""
    fixture = {"4-channel": "tiny_sd1", "4-channel sd2": "tiny_sd2", "9-channel": "tiny_inpaint"}[unet]
    src, folder = request.getfixturevalue(fixture)
    pipe = Pipeline.from_folder(folder, provider="cpu", precision="fp32")
    assert pipe.folder.unet.in_channels == int(unet[0])
    image = Image.fromarray(circle())

    def ours(mask):
        return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=Image.fromarray(mask), strength=strength,
                    steps=steps, guidance_scale=7.5, scheduler=scheduler, seed=3, num_images=num_images)

    reference = diffusers_inpaint(src, image, Image.fromarray(square_mask()), scheduler, steps, 7.5, strength, 3,
                                  num_images, monkeypatch)
    result = ours(square_mask())
    assert result.parameters[0].task == "inpaint" and f"Denoising strength: {strength:g}" in result.parameters[0].a1111()
    psnr = image_psnr(result.arrays, reference)
    print(f"inpaint {unet} {scheduler} {steps} steps, strength {strength}, {num_images} image(s): PSNR {psnr:.1f} dB")
    assert psnr >= IMAGE_MIN_PSNR_DB
    assert image_psnr(ours(square_mask(lo=8, hi=40)).arrays, reference) < IMAGE_MIN_PSNR_DB  # sensitive: another mask differs


def test_unmasked_region_keeps_the_image(pipe):
    """Outside the mask the final latents are exactly the image's own latents (the last blend adds no noise), the
    posterior sample of the run's first draw. (In pixels the tiny random VAE's mid-block attention spreads every
    latent over the whole image, so the pixel-level check belongs to the shipped model's quality test.)"""
    image, mask = circle(), square_mask()
    for scheduler, strength in (("ddim", 1.0), ("euler", 0.75)):
        out = pipe("a green square", image=image, mask_image=mask, steps=4, seed=5, scheduler=scheduler, strength=strength)
        f = pipe.folder.vae.scale_factor
        pixels = pipe.prepare_image(image, 64, 64)
        init = pipe.encode_image(pixels, np.random.default_rng(5))  # the same first draw as the run's
        keep = mask[::f, ::f] < 128
        assert keep.any() and not keep.all()
        np.testing.assert_array_equal(out.latents[0][:, keep], init[0][:, keep])
        assert np.abs(out.latents[0][:, ~keep] - init[0][:, ~keep]).mean() > 0.1  # the masked part was redrawn


def test_bad_input_is_refused_in_words(pipe, tmp_path):
    image, mask = circle(), square_mask()
    with pytest.raises(ValueError, match="mask_image needs the image to inpaint"):
        pipe("x", mask_image=mask, steps=2)
    with pytest.raises(ValueError, match="the mask is 32x32 but the image is 64x64"):
        pipe("x", image=image, mask_image=square_mask(32, 8, 24), steps=2)
    with pytest.raises(ValueError, match="all black: nothing to repaint"):
        pipe("x", image=image, mask_image=np.zeros((64, 64), np.uint8), steps=2)
    for bad in (42, mask.astype(np.float32), mask[..., None], np.zeros((64, 64, 2), np.uint8), [mask]):
        with pytest.raises(ValueError, match="mask_image must be|a mask_image array must be"):
            pipe("x", image=image, mask_image=bad, steps=2)
    with pytest.raises(FileNotFoundError, match="mask_image .* does not exist"):
        pipe("x", image=image, mask_image=tmp_path / "missing.png", steps=2)
    (tmp_path / "not.png").write_text("hello")
    with pytest.raises(ValueError, match="not an image file"):
        pipe("x", image=image, mask_image=tmp_path / "not.png", steps=2)
    with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\]"):
        pipe("x", image=image, mask_image=mask, strength=0, steps=2)
    # an RGB mask and a uint8 (H, W, 3) one are made grayscale like diffusers' mask processor
    rgb = np.repeat(mask[..., None], 3, axis=2)
    a = pipe("x", image=image, mask_image=mask, steps=2, seed=1).arrays
    np.testing.assert_array_equal(pipe("x", image=image, mask_image=rgb, steps=2, seed=1).arrays, a)


def test_cli_image_and_mask(tiny_sd1, tmp_path):
    source, mask, out = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "out.png"
    Image.fromarray(circle()).save(source)
    Image.fromarray(square_mask()).save(mask)
    args = ["generate", "a blue circle", "-m", str(tiny_sd1[1]), "-o", str(out), "--steps", "3", "--seed", "5",
            "--image", str(source), "--mask", str(mask), "--provider", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (64, 64)
    result = CliRunner().invoke(app, [*args, "--mask-padding", "4", "--clip-skip", "1", "--force"])
    assert result.exit_code == 0, result.output
    assert "Masked area padding: 4" in read_parameters(out)
    result = CliRunner().invoke(app, [*args, "--clip-skip", "99", "--force"])
    assert result.exit_code == 2 and "clip_skip must be a whole number from 0 to" in result.output
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    result = CliRunner().invoke(app, [*args, "--force"])
    assert result.exit_code == 2 and "nothing to repaint" in result.output
    result = CliRunner().invoke(app, [a for a in args if a not in ("--image", str(source))] + ["--force"])
    assert result.exit_code == 2 and "needs the image to inpaint" in result.output


def test_9_channel_unet_needs_image_and_mask(tiny_inpaint):
    pipe9 = Pipeline.from_folder(tiny_inpaint[1], provider="cpu", precision="fp32")
    for image in (None, circle()):
        with pytest.raises(ValueError, match="9-channel inpainting UNet: it needs an image and a mask_image"):
            pipe9("x", image=image, steps=2)


@pytest.mark.parametrize("pad", [0, 8])
def test_padding_mask_crop_matches_diffusers(tiny_sd1, pipe, monkeypatch, pad):
    """Only the padded box around a small mask is inpainted, at the processing size, and pasted back into the image
    at its own size (diffusers' get_crop_region, "fill" resize and apply_overlay)."""
    import torch

    source = Image.fromarray(np.concatenate([circle(64), circle(64, (30, 30, 220))[:, :48]], axis=1))  # 112x64
    mask = np.zeros((64, 112), np.uint8)
    mask[20:36, 70:90] = 255
    def run(padding):
        return pipe(PROMPT, negative_prompt=NEGATIVE, image=source, mask_image=mask, padding_mask_crop=padding, height=64,
                    width=64, steps=4, guidance_scale=7.5, scheduler="euler", seed=3)

    ours = run(pad)
    reference = numpy_noise_pipeline("StableDiffusionInpaintPipeline", "pipeline_stable_diffusion_inpaint", tiny_sd1[0],
                                     "euler", 3, monkeypatch)
    with torch.no_grad():
        theirs = reference(PROMPT, image=source, mask_image=Image.fromarray(mask), padding_mask_crop=pad,
                           negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=4, guidance_scale=7.5).images[0]
    assert ours.images[0].size == source.size == theirs.size
    psnr = image_psnr(ours.arrays, np.asarray(theirs)[None])
    print(f"inpaint sd1 padding_mask_crop={pad}: PSNR {psnr:.1f} dB")
    assert psnr >= IMAGE_MIN_PSNR_DB
    np.testing.assert_array_equal(ours.arrays[0][mask == 0], np.asarray(source)[mask == 0])  # outside: the image's own
    assert image_psnr(run(pad + 12).arrays, np.asarray(theirs)[None]) < IMAGE_MIN_PSNR_DB  # sensitive: another crop differs
    assert "Inpaint area: Only masked" in ours.parameters[0].a1111() and f"Masked area padding: {pad}" in ours.parameters[0].a1111()


def test_padding_mask_crop_needs_a_mask_and_a_whole_number(pipe):
    for bad in (-1, 2.5, "8", True):
        with pytest.raises(ValueError, match="padding_mask_crop must be a whole number of pixels >= 0"):
            pipe("x", image=circle(), mask_image=square_mask(), padding_mask_crop=bad, steps=2)
    with pytest.raises(ValueError, match="padding_mask_crop crops around the mask: give mask_image"):
        pipe("x", image=circle(), padding_mask_crop=4, steps=2)
