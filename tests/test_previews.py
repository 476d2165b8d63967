"""Previews (preview_every=N): the progress callback gets a preview image after every N-th UNet call and None after
the others, decoded by the tiny VAE where the folder has one, else by AUTOMATIC1111's cheap linear projection;
progress(done, total) without previews is unchanged; a bad preview_every is refused before any work."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from latentrt import Pipeline
from latentrt.export.tiny_vae import build_tiny_autoencoder
from latentrt.export.tiny_vae_folder import add_tiny_vae
from latentrt.runtime.observers import NETWORK
from latentrt.runtime.previews import SD_LATENT_RGB, SDXL_LATENT_RGB, Previews, approximate_rgb

PROMPT = "a red circle at the top left on a white background"


@pytest.fixture(scope="module")
def plain(tiny_sd1) -> Pipeline:
    return Pipeline.from_folder(tiny_sd1[1], provider="cpu")


@pytest.fixture(scope="module")
def with_tiny(tiny_sd1, tmp_path_factory) -> Pipeline:
    root = tmp_path_factory.mktemp("previews")
    build_tiny_autoencoder(root / "taesd", "small", seed=2)
    shutil.copytree(tiny_sd1[1], root / "model")
    add_tiny_vae(root / "model", root / "taesd")
    return Pipeline.from_folder(root / "model", provider="cpu")


def projected(latents: np.ndarray) -> np.ndarray:
    """The cheap projection of one image's latents as uint8 (h, w, 3), at the latents' size."""
    rgb = approximate_rgb(latents, SD_LATENT_RGB)
    return (np.clip(rgb / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)[0]


def recorder():
    calls = []

    def progress(done, total, *preview):
        calls.append((done, total, *preview))

    return calls, progress


@pytest.mark.parametrize("every", [1, 2, 3])
def test_previews_arrive_every_n_calls_at_the_output_size(plain, every):
    calls, progress = recorder()
    result = plain(PROMPT, steps=4, seed=1, scheduler="euler", height=64, width=48, num_images=2,
                   preview_every=every, progress=progress)
    assert [c[:2] for c in calls] == [(i, 4) for i in range(1, 5)]
    for done, _, preview in calls:
        if done % every:
            assert preview is None
        else:
            assert isinstance(preview, Image.Image) and preview.size == (48, 64) and preview.mode == "RGB"
    if 4 % every == 0:  # the last preview is the final latents of the first image, projected
        np.testing.assert_array_equal(np.asarray(calls[-1][2])[::4, ::4], projected(result.latents[:1]))


def test_previews_are_decoded_by_the_tiny_vae_when_the_folder_has_one(with_tiny):
    calls, progress = recorder()
    counted = []
    with with_tiny.observe(lambda e: counted.append(e.name) if e.kind == NETWORK else None):
        result = with_tiny(PROMPT, steps=4, seed=1, scheduler="euler", preview_every=2, progress=progress, vae="tiny")
    previews = [c[2] for c in calls if c[2] is not None]
    assert [c[0] for c in calls if c[2] is not None] == [2, 4]
    assert counted.count("vae_decoder_tiny") == 3 and "vae_decoder" not in counted  # two previews, one image
    np.testing.assert_array_equal(np.asarray(previews[-1]), result.arrays[0])  # the last preview is the image
    assert previews[0].size == (64, 64)


def test_progress_without_previews_keeps_two_arguments(plain):
    seen = []
    plain(PROMPT, steps=2, seed=0, scheduler="euler", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    plain(PROMPT, steps=1, seed=0, preview_every=1)  # no callback: nothing to preview for


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_preview_every_is_refused(plain, bad):
    calls, progress = recorder()
    with pytest.raises(ValueError, match="preview_every must be a whole number"):
        plain(PROMPT, steps=2, preview_every=bad, progress=progress)
    assert calls == []


def test_approximation_uses_the_family_coefficients_and_the_latent_channels(plain, tiny_sdxl):
    """SD and SDXL coefficients by family; a 9-channel inpainting UNet's loop latents are the 4 VAE channels (the
    preview takes the first image's latent channels only)."""
    from types import SimpleNamespace

    plan = SimpleNamespace(preview_every=1, height=8, width=8)
    previews = Previews(plain, plan)
    assert previews.method == "approx" and previews.coefficients is SD_LATENT_RGB
    assert Previews(Pipeline.from_folder(tiny_sdxl[1], provider="cpu"), plan).coefficients is SDXL_LATENT_RGB
    latents = np.random.default_rng(0).standard_normal((2, 9, 2, 2), dtype=np.float32)
    image = previews.after_call(1, 1, latents)
    assert image.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(image)[::4, ::4], projected(latents[:1, :4]))
