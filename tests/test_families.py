"""Model families through the one loop: latentrt's images equal diffusers' for tiny SDXL (base, refiner, Turbo),
LCM and SD-Turbo configs and for clip_skip, with the same latents (and, where noise is drawn, the same noise);
the family is read from the folder; bad input is refused in words."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from latentrt import Pipeline, Request
from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
from test_img2img import NEGATIVE, PROMPT, circle, numpy_noise_pipeline
from test_schedulers import NOISE_MODULES, REFERENCE


def diffusers_text2img(src, cls_name: str, latents: np.ndarray, noise_seed: int, **call):
    """diffusers' images from the folder's own pipeline class and scheduler, with these latents; a stochastic
    scheduler's noise drawn from NumPy (noise_seed) as latentrt draws it."""
    import diffusers
    import torch

    pipe = getattr(diffusers, cls_name).from_pretrained(src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is not None and not hasattr(encoder, "text_model"):
        # diffusers 0.42's clip_skip reads text_encoder.text_model.final_layer_norm, which transformers 5 flattened
        # into text_encoder.final_layer_norm; alias it (outside torch's module registry) so the reference runs
        object.__setattr__(encoder, "text_model", SimpleNamespace(final_layer_norm=encoder.final_layer_norm))
    noise_rng = np.random.default_rng(noise_seed)
    scheduler_module = NOISE_MODULES.get(type(pipe.scheduler).__name__)
    with pytest.MonkeyPatch.context() as mp:
        if scheduler_module:
            mp.setattr(f"{scheduler_module}.randn_tensor", lambda shape, generator=None, device=None, dtype=None, layout=None:
                       torch.from_numpy(noise_rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32))
        with torch.no_grad():
            out = pipe(latents=torch.from_numpy(latents), output_type="np",
                       height=latents.shape[2] * pipe.vae_scale_factor, width=latents.shape[3] * pipe.vae_scale_factor, **call).images
    return (out * 255).round().astype(np.uint8)


def latents_for(pipe: Pipeline, images: int = 1, seed: int = 2) -> np.ndarray:
    side = pipe.folder.unet.sample_size
    return np.random.default_rng(seed).standard_normal((images, pipe.folder.vae.latent_channels, side, side), dtype=np.float32)


def check(ours, reference, label: str) -> float:
    psnr = image_psnr(ours.arrays, reference)
    print(f"{label}: PSNR {psnr:.1f} dB")
    assert psnr >= IMAGE_MIN_PSNR_DB
    return psnr


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl):
    return Pipeline.from_folder(tiny_sdxl[1], provider="cpu", precision="fp32")


@pytest.mark.parametrize("case", ["no-negative", "negative", "two-images", "micro-conditioning", "clip-skip"])
def test_sdxl_base_matches_diffusers(tiny_sdxl, sdxl, case):
    """Both encoders' penultimate states, pooled text_embeds, time_ids; without a negative prompt the negative
    conditioning is zeros (force_zeros_for_empty_prompt), with one it is encoded."""
    assert sdxl.family.name == "stable-diffusion-xl" and sdxl.family.text_encoders == ("text_encoder", "text_encoder_2")
    images = 2 if case == "two-images" else 1
    latents = latents_for(sdxl, images)
    call = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=5.0)
    if case != "no-negative":
        call["negative_prompt"] = NEGATIVE
    if case == "micro-conditioning":
        call.update(original_size=(512, 384), crops_coords_top_left=(16, 8), target_size=(256, 256))
    if case == "clip-skip":
        call["clip_skip"] = 1
    ours = sdxl(call.pop("prompt"), negative_prompt=call.pop("negative_prompt", None), steps=call.pop("num_inference_steps"),
                guidance_scale=call.pop("guidance_scale"), latents=latents, num_images=images, **call)
    call.update(prompt=[PROMPT] * images, num_inference_steps=4, guidance_scale=5.0,
                negative_prompt=[NEGATIVE] * images if case != "no-negative" else None)
    reference = diffusers_text2img(tiny_sdxl[0], "StableDiffusionXLPipeline", latents, 0, **call)
    check(ours, reference, f"sdxl base {case}")
    if case == "micro-conditioning":  # sensitive: the time ids reach the UNet
        plain = sdxl(PROMPT, negative_prompt=NEGATIVE, steps=4, guidance_scale=5.0, latents=latents)
        assert image_psnr(plain.arrays, reference) < IMAGE_MIN_PSNR_DB


def test_sdxl_img2img_and_refiner_match_diffusers(tiny_sdxl, tiny_sdxl_refiner, monkeypatch):
    """The refiner (text_encoder_2 only, aesthetic scores in its time ids) is an image to image model."""
    import torch

    image = Image.fromarray(circle(64))
    for (src, folder), label in ((tiny_sdxl, "sdxl base img2img"), (tiny_sdxl_refiner, "sdxl refiner")):
        pipe = Pipeline.from_folder(folder, provider="cpu", precision="fp32")
        ours = pipe(PROMPT, negative_prompt=NEGATIVE, image=image, strength=0.6, steps=5, guidance_scale=5.0,
                    scheduler="euler", seed=4)
        reference = numpy_noise_pipeline("StableDiffusionXLImg2ImgPipeline",
                                         "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img",
                                         src, "euler", 4, monkeypatch)
        with torch.no_grad():
            theirs = reference(PROMPT, negative_prompt=NEGATIVE, image=image, strength=0.6, num_inference_steps=5,
                               guidance_scale=5.0, output_type="np").images
        check(ours, (theirs * 255).round().astype(np.uint8), label)
    assert pipe.family.text_encoders == ("text_encoder_2",) and pipe.family.is_refiner
    with pytest.raises(ValueError, match="SDXL refiner, an image to image model: give it an image"):
        pipe(PROMPT, steps=2)


@pytest.mark.parametrize("fixture,cls_name,steps,guidance", [
    ("tiny_sd_turbo", "StableDiffusionPipeline", 1, 0.0), ("tiny_sd_turbo", "StableDiffusionPipeline", 4, 0.0),
    ("tiny_sdxl_turbo", "StableDiffusionXLPipeline", 1, 0.0), ("tiny_sdxl_turbo", "StableDiffusionXLPipeline", 4, 0.0),
    ("tiny_lcm", "LatentConsistencyModelPipeline", 4, 8.0), ("tiny_lcm", "LatentConsistencyModelPipeline", 2, 1.5),
])
def test_few_step_models_match_diffusers(request, fixture, cls_name, steps, guidance):
    """SD-Turbo / SDXL-Turbo at their documented settings (guidance 0, trailing spacing from their scheduler
    config) and LCM (guidance as an embedding, no CFG; its scheduler's noise), nothing special-cased."""
    src, folder = request.getfixturevalue(fixture)
    pipe = Pipeline.from_folder(folder, provider="cpu", precision="fp32")
    latents = latents_for(pipe)
    ours = pipe(PROMPT, steps=steps, guidance_scale=guidance, latents=latents, rng=np.random.default_rng(9))
    reference = diffusers_text2img(src, cls_name, latents, 9, prompt=PROMPT, num_inference_steps=steps, guidance_scale=guidance)
    check(ours, reference, f"{fixture} {steps} steps, guidance {guidance:g}")
    if fixture == "tiny_lcm":
        assert pipe.guidance_embedding_dim and not pipe.check(Request(PROMPT, guidance_scale=guidance)).do_cfg
        other = pipe(PROMPT, steps=steps, guidance_scale=guidance + 4, latents=latents, rng=np.random.default_rng(9))
        assert image_psnr(other.arrays, reference) < IMAGE_MIN_PSNR_DB  # the embedding carries the guidance


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_clip_skip_matches_diffusers(tiny_models, family):
    """clip_skip N conditions on the layer N below the last, as diffusers (PSNR). 0 skips nothing: it takes the very
    path of no clip_skip (the graph's last_hidden_state), so the two images are equal bit for bit on every CPU;
    diffusers' 0 goes through the hidden states and the final layer norm, equal up to float rounding (PSNR)."""
    src, folder = tiny_models[family]
    pipe = Pipeline.from_folder(folder, provider="cpu", precision="fp32")
    latents = latents_for(pipe)
    for clip_skip in (0, 1, 2):
        ours = pipe(PROMPT, negative_prompt=NEGATIVE, steps=4, guidance_scale=6.0, latents=latents, clip_skip=clip_skip)
        reference = diffusers_text2img(src, "StableDiffusionPipeline", latents, 0, prompt=PROMPT, negative_prompt=NEGATIVE,
                                       num_inference_steps=4, guidance_scale=6.0, clip_skip=clip_skip)
        check(ours, reference, f"{family} clip_skip {clip_skip}")
    plain = pipe(PROMPT, negative_prompt=NEGATIVE, steps=4, guidance_scale=6.0, latents=latents)
    assert image_psnr(plain.arrays, reference) < IMAGE_MIN_PSNR_DB  # sensitive: clip_skip changes the conditioning
    np.testing.assert_array_equal(  # 0 is the last layer, on the same path as no clip_skip
        pipe(PROMPT, steps=2, latents=latents, clip_skip=0, scheduler="ddim").arrays,
        pipe(PROMPT, steps=2, latents=latents, scheduler="ddim").arrays)


def test_bad_input_is_refused_in_words(tiny_models, tiny_sdxl, tmp_path):
    import shutil

    pipe = Pipeline.from_folder(tiny_models["sd1"][1], provider="cpu")
    layers = pipe.folder.components["text_encoder"].config["num_hidden_layers"]
    for bad in (layers + 1, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"clip_skip must be a whole number from 0 to {layers}"):
            pipe("x", steps=1, clip_skip=bad)
    for part in ("text_encoder_2", "tokenizer_2"):
        broken = tmp_path / f"no-{part}"
        shutil.copytree(tiny_sdxl[1], broken, ignore=shutil.ignore_patterns(part))
        with pytest.raises(ValueError, match=f"SDXL folder .* lacks {part}"):
            Pipeline.from_folder(broken, provider="cpu")


def test_lcm_unet_with_another_scheduler_says_what_guidance_means(tiny_lcm, caplog):
    pipe = Pipeline.from_folder(tiny_lcm[1], provider="cpu")
    with caplog.at_level("WARNING", logger="latentrt.runtime.pipeline"):
        pipe("x", steps=2, scheduler="ddim", guidance_scale=4.0, seed=1)
        pipe("x", steps=2, scheduler="ddim", guidance_scale=4.0, seed=1)
    notes = [r.message for r in caplog.records if "guidance scale as an embedding" in r.message]
    assert len(notes) == 1 and "no classifier-free guidance runs" in notes[0] and "ddim" in notes[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="latentrt.runtime.pipeline"):
        Pipeline.from_folder(tiny_lcm[1], provider="cpu")("x", steps=2, seed=1)  # its own lcm scheduler: no note
    assert not [r for r in caplog.records if "embedding" in r.getMessage()]
