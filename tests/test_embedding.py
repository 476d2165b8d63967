"""Embedding contract: low_memory, close / with, the size and memory guard, tiled decoding, calls from threads."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from typer.testing import CliRunner

from latentrt.cli import app
from latentrt.runtime import memory
from latentrt.runtime.folder import ModelFolder
from latentrt.runtime.pipeline import ImageTooLargeError, Pipeline

SETTINGS = dict(steps=2, height=64, width=64)
PROVIDERS = ["cpu"] + (["openvino"] if __import__("importlib").util.find_spec("openvino") else [])


def generate(pipe: Pipeline, seed: int = 1, **extra) -> np.ndarray:
    return pipe("a red circle", seed=seed, **{**SETTINGS, **extra}).arrays


@pytest.mark.parametrize("provider", PROVIDERS)
def test_low_memory_gives_the_same_images_and_keeps_no_network(tiny_sd1, provider):
    reference = generate(Pipeline.from_folder(tiny_sd1[1], provider=provider, precision="fp32"))
    pipe = Pipeline.from_folder(tiny_sd1[1], provider=provider, precision="fp32", low_memory=True)
    assert pipe.resident_networks == {}  # nothing loaded until a call needs it
    seen = []
    generate(pipe, progress=lambda done, total: seen.append(sorted(pipe.resident_networks)))
    assert seen and all(names == ["unet"] for names in seen)  # the text encoder is gone while the UNet runs
    assert pipe.resident_networks == {}  # and everything is released after the call
    np.testing.assert_array_equal(generate(pipe), reference)


def test_close_and_context_manager_free_the_networks(tiny_sd1):
    with Pipeline.from_folder(tiny_sd1[1], provider="cpu") as pipe:
        assert set(pipe.resident_networks) == {"text_encoder", "unet", "vae_decoder"}
        generate(pipe)
    assert pipe.resident_networks == {}
    with pytest.raises(RuntimeError, match="closed"):
        generate(pipe)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_threads_give_the_serial_images(tiny_sd1, provider):
    pipe = Pipeline.from_folder(tiny_sd1[1], provider=provider, precision="fp32", threads=1)
    seeds = [1, 2, 3, 4]
    serial = [generate(pipe, seed) for seed in seeds]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda seed: generate(pipe, seed), seeds))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_a_huge_size_is_refused_before_anything_runs(tiny_sd1):
    pipe = Pipeline.from_folder(tiny_sd1[1], provider="cpu")
    with pytest.raises(ImageTooLargeError, match=r"needs about .* GiB of memory and .* available: the largest size that fits .* is (\d+)x\1"):
        pipe("a red circle", height=100000, width=100000, steps=1)
    message = str(pytest.raises(ImageTooLargeError, pipe, "x", height=100000, width=100000, steps=1).value)
    side = int(message.rsplit("is ", 1)[1].split("x")[0])
    generate(pipe, height=min(side, 128), width=min(side, 128))  # the size it offers runs (capped: keep the test fast)


def test_max_pixels_and_the_largest_size_it_allows(tiny_sd1):
    pipe = Pipeline.from_folder(tiny_sd1[1], provider="cpu", max_pixels=64 * 64)
    generate(pipe)  # exactly the limit
    with pytest.raises(ImageTooLargeError, match="max_pixels=4,096: the largest size that fits at this aspect ratio is 64x64"):
        generate(pipe, height=128, width=128)
    with pytest.raises(ImageTooLargeError, match="is 92x44"):
        generate(pipe, height=64, width=128)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        Pipeline.from_folder(tiny_sd1[1], provider="cpu", max_pixels=0)


@pytest.mark.parametrize("guidance", [-1.0, float("nan"), float("inf")])
def test_guidance_diffusers_would_not_take_is_refused(tiny_sd1, guidance):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        generate(Pipeline.from_folder(tiny_sd1[1], provider="cpu"), guidance_scale=guidance)


def test_the_estimate_grows_with_size_batch_and_tiling(tiny_sd1):
    folder = ModelFolder.open(tiny_sd1[1])
    small = memory.estimate(folder, 64, 64, texts=2, images=1)
    large = memory.estimate(folder, 256, 256, texts=2, images=1)
    linear = memory.RUNTIME_OVERHEAD
    assert large.unet - linear == pytest.approx(16 * (small.unet - linear), rel=1e-6)  # fused attention: linear in pixels
    unet = folder.components["unet"]
    plain = dataclasses.replace(folder, components={**folder.components, "unet": dataclasses.replace(unet, manifest={})})
    assert memory.estimate(plain, 256, 256, texts=2, images=1).unet > large.unet  # unfused: tokens^2 score maps added
    assert memory.estimate(folder, 256, 256, texts=4, images=2).peak > large.peak
    tiled = memory.estimate(folder, 256, 256, texts=2, images=1, vae_tile=16)
    assert tiled.vae < large.vae
    low = memory.estimate(folder, 256, 256, texts=2, images=1, low_memory=True)
    assert low.peak >= large.peak  # low_memory counts the network it must load
    encodes = memory.estimate(folder, 256, 256, texts=2, images=1, low_memory=True, encodes=True)  # image to image
    assert large.vae_encoder == 0 and encodes.vae_encoder > memory.estimate(folder, 64, 64, 2, 1, encodes=True).vae_encoder > 0
    assert encodes.peak >= encodes.vae_encoder + memory.component_bytes(folder, "vae_encoder")


def test_the_guard_counts_the_vae_encoder_for_image_to_image(tiny_sd1, monkeypatch):
    """A call whose only oversized phase is the image's encoding is refused too, naming img2img's estimate."""
    pipe = Pipeline.from_folder(tiny_sd1[1], provider="cpu")
    monkeypatch.setattr(memory, "VAE_ENCODER_BYTES_PER_VALUE", 1 << 20)  # the encoder alone needs gigabytes
    image = np.zeros((64, 64, 3), np.uint8)
    pipe("x", steps=1)  # text to image does not encode: it fits
    with pytest.raises(ImageTooLargeError, match="needs about"):
        pipe("x", image=image, steps=2)


def test_automatic_tiling_when_the_untiled_decode_does_not_fit(tiny_sd1, monkeypatch):
    pipe = Pipeline.from_folder(tiny_sd1[1], provider="cpu")
    folder = pipe.folder
    untiled = memory.estimate(folder, 256, 256, texts=1, images=1).peak
    tiled = memory.estimate(folder, 256, 256, texts=1, images=1, vae_tile=pipe.vae_tile).peak
    assert tiled < untiled
    monkeypatch.setattr("latentrt.runtime.pipeline.available_memory", lambda: (tiled + untiled) // 2)
    calls = []
    monkeypatch.setattr("latentrt.runtime.pipeline.decode_tiled", lambda decode, z, f, tile: calls.append(tile) or decode(z))
    pipe("a red circle", steps=1, height=256, width=256, guidance_scale=1.0)
    assert calls == [pipe.vae_tile]
    pipe.vae_tiling = False  # asked not to tile: refused instead
    with pytest.raises(ImageTooLargeError, match="vae_tiling=True"):
        pipe("a red circle", steps=1, height=256, width=256, guidance_scale=1.0)


def test_tiled_decode_through_the_pipeline(tiny_sd1):
    untiled = generate(Pipeline.from_folder(tiny_sd1[1], provider="cpu", vae_tiling=False), height=256, width=256)
    tiled = generate(Pipeline.from_folder(tiny_sd1[1], provider="cpu", vae_tiling=True), height=256, width=256)
    assert tiled.shape == untiled.shape
    assert not np.array_equal(tiled, untiled)  # it really decoded in tiles (not exact for a real VAE)


def test_cli_refuses_a_huge_size_with_the_estimate(tmp_path):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["generate", "a red circle", "-o", str(out), "--height", "100000", "--width", "100000", "--provider", "cpu"])
    assert result.exit_code == 2
    assert "needs about" in result.output and "the largest size that fits" in result.output
    assert not out.exists()


def test_cli_low_memory_and_max_pixels(tmp_path):
    out = tmp_path / "x.png"
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "a red circle", "-o", str(out), "--steps", "2", "--provider", "cpu", "--low-memory"])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = runner.invoke(app, ["generate", "a red circle", "-o", str(tmp_path / "y.png"), "--max-pixels", "100", "--provider", "cpu"])
    assert result.exit_code == 2 and "max_pixels=100" in result.output
