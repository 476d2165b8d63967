"""Image to image: latentrt's images equal diffusers' StableDiffusionImg2ImgPipeline for the same image and noises;
bad input is refused in words; the CLI's --image / --strength."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from latentrt import Pipeline
from latentrt.cli import app
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
from latentrt.runtime.images import read_parameters
from latentrt.runtime.schedulers import available_schedulers
from test_schedulers import NOISE_MODULES, REFERENCE

PROMPT, NEGATIVE = "a blue circle at the top left on a white background", "blurry"


def circle(size: int = 64, colour=(220, 30, 30)) -> np.ndarray:
    """A uint8 (size, size, 3) image: a coloured disc on white."""
    y, x = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 255, np.uint8)
    image[(y - size / 3) ** 2 + (x - size / 3) ** 2 < (size / 4) ** 2] = colour
    return image


def numpy_noise_pipeline(cls_name: str, module: str, src, scheduler: str, seed: int, monkeypatch):
    """A diffusers pipeline with the reference scheduler whose randn_tensor draws from NumPy (seed), in call order:
    the VAE's posterior sample, the pipeline's noise and a stochastic scheduler's step noise, as latentrt draws them."""
    import diffusers
    import torch

    if scheduler == "lms":
        pytest.importorskip("scipy", reason="diffusers' LMSDiscreteScheduler (the reference) needs scipy")
    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32)

    name, overrides = REFERENCE[scheduler]
    pipeline_module = module if "." in module else f"diffusers.pipelines.stable_diffusion.{module}"
    modules = ["diffusers.models.autoencoders.vae", pipeline_module]
    for target in modules + ([NOISE_MODULES[name]] if name in NOISE_MODULES else []):
        monkeypatch.setattr(f"{target}.randn_tensor", randn_tensor)
    pipe = getattr(diffusers, cls_name).from_pretrained(src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **overrides)
    return pipe


def diffusers_img2img(src, image: Image.Image, scheduler, steps, guidance, strength, seed, num_images, monkeypatch):
    """diffusers' images, its randn_tensor drawing from NumPy in latentrt's order (the encoder's sample, then add_noise's)."""
    import torch

    pipe = numpy_noise_pipeline("StableDiffusionImg2ImgPipeline", "pipeline_stable_diffusion_img2img", src, scheduler, seed, monkeypatch)
    with torch.no_grad():
        out = pipe(
            PROMPT, image=image, strength=strength, negative_prompt=NEGATIVE, num_inference_steps=steps,
            guidance_scale=guidance, num_images_per_prompt=num_images, output_type="np",
        ).images
    return (out * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pipe(tiny_sd1):
    return Pipeline.from_folder(tiny_sd1[1], provider="cpu", precision="fp32")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("scheduler", available_schedulers())
def test_img2img_matches_diffusers(tiny_models, monkeypatch, family, scheduler):
    """Every scheduler (its add_noise and a run that starts part way), SD 1.x and SD 2.x (v-prediction) configs."""
    src, folder = tiny_models[family]
    pipe = Pipeline.from_folder(folder, provider="cpu", precision="fp32")
    image = Image.fromarray(circle())
    steps, num_images = 5, (2 if scheduler in ("euler", "dpm++2m") else 1)

    def ours(strength):
        return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, strength=strength, steps=steps, guidance_scale=7.5,
                    scheduler=scheduler, seed=7, num_images=num_images)

    result = ours(0.6)
    reference = diffusers_img2img(src, image, scheduler, steps, 7.5, 0.6, 7, num_images, monkeypatch)
    psnr = image_psnr(result.arrays, reference)
    print(f"img2img {family} {scheduler} {steps} steps, strength 0.6, {num_images} image(s): PSNR {psnr:.1f} dB")
    assert psnr >= IMAGE_MIN_PSNR_DB
    assert result.parameters[0].task == "img2img" and "Denoising strength: 0.6" in result.parameters[0].a1111()
    if family == "sd1" and scheduler in ("ddim", "euler"):  # the parity check is sensitive: another strength differs
        assert image_psnr(ours(1.0).arrays, reference) < IMAGE_MIN_PSNR_DB


def test_image_inputs_agree_and_set_the_size(pipe, tmp_path):
    array = circle(72)  # 72 is a multiple of the tiny VAE's factor; the size follows the image
    path = tmp_path / "in.png"
    Image.fromarray(array).save(path)
    runs = [pipe("a red circle", image=source, steps=2, seed=1).arrays for source in (array, Image.fromarray(array), path, str(path))]
    assert runs[0].shape == (1, 72, 72, 3)
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    resized = pipe("a red circle", image=array, steps=2, seed=1, height=64, width=64)  # resized like diffusers
    assert resized.arrays.shape == (1, 64, 64, 3)


def test_bad_input_is_refused_in_words(pipe, tiny_sd1, tmp_path):
    image = circle()
    for strength in (0, -0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\]"):
            pipe("x", image=image, strength=strength, steps=2)
    with pytest.raises(ValueError, match="leaves no step to run.*raise strength to at least 0.25 or use more steps"):
        pipe("x", image=image, strength=0.2, steps=4)
    with pytest.raises(ValueError, match="strength applies to image to image only"):
        pipe("x", strength=0.5, steps=2)
    for bad in (42, image.astype(np.float32), image[..., :2], [image]):
        with pytest.raises(ValueError, match="image must be|an image array must be"):
            pipe("x", image=bad, steps=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipe("x", image=tmp_path / "missing.png", steps=2)
    (tmp_path / "not.png").write_text("hello")
    with pytest.raises(ValueError, match="not an image file"):
        pipe("x", image=tmp_path / "not.png", steps=2)
    with pytest.raises(ValueError, match="multiple of"):
        pipe("x", image=image, height=63, steps=2)
    with pytest.raises(ValueError, match="either image .* or latents"):
        pipe("x", image=image, latents=np.zeros((1, 4, 8, 8), np.float32), steps=2)
    no_encoder = tmp_path / "no-encoder"
    shutil.copytree(tiny_sd1[1], no_encoder, ignore=shutil.ignore_patterns("vae_encoder"))
    with pytest.raises(ValueError, match="no vae_encoder/model.onnx.*latentrt export"):
        Pipeline.from_folder(no_encoder, provider="cpu")("x", image=image, steps=2)


def test_compile_with_image_opens_the_vae_encoder_ahead(tiny_sd1):
    fresh = Pipeline.from_folder(tiny_sd1[1], provider="cpu", precision="fp32")
    fresh.compile(64, 64)
    assert "vae_encoder" not in fresh.resident_networks  # text to image does not need it
    fresh.compile(64, 64, image=True)
    assert "vae_encoder" in fresh.resident_networks


def test_low_memory_img2img_gives_the_same_images_and_keeps_no_network(tiny_sd1, pipe):
    reference = pipe("a red circle", image=circle(), steps=3, seed=2).arrays
    lean = Pipeline.from_folder(tiny_sd1[1], provider="cpu", precision="fp32", low_memory=True)
    np.testing.assert_array_equal(lean("a red circle", image=circle(), steps=3, seed=2).arrays, reference)
    assert lean.resident_networks == {}


def test_cli_image_and_strength(tiny_sd1, tmp_path):
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(circle()).save(source)
    args = ["generate", "a blue circle", "-m", str(tiny_sd1[1]), "-o", str(out), "--steps", "4", "--seed", "5",
            "--image", str(source), "--strength", "0.75", "--provider", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (64, 64)
    assert "Denoising strength: 0.75" in read_parameters(out)
    result = CliRunner().invoke(app, [*args[:-4], "--strength", "2", "--force"])
    assert result.exit_code == 2 and "strength must be a number" in result.output
