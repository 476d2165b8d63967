"""Bad input gets a clear error that says what was wrong and how to fix it, and loses nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latentrt import Pipeline
from latentrt.runtime.folder import ModelFolderError
from latentrt.runtime.session import ModelLoadError, available_providers


@pytest.fixture(scope="module")
def pipe(tiny_sd1):
    return Pipeline.from_folder(tiny_sd1[1], provider="cpu")


@pytest.mark.parametrize("side", ["height", "width"])
def test_size_not_a_multiple(pipe, side):
    multiple = pipe.folder.size_multiple
    with pytest.raises(ValueError, match=rf"{side} must be a multiple of {multiple} for this model, got 66"):
        pipe("x", steps=1, **{side: 66})


def test_size_multiple_of_8_for_sd_shaped_vae(tmp_path, tiny_sd1):
    """SD's VAE has 4 blocks (factor 8): the message then says 8."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_sd1[1], folder)
    cfg_path = folder / "vae_decoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["block_out_channels"] = [16, 32, 32, 32]
    cfg_path.write_text(json.dumps(cfg))
    p = Pipeline.from_folder(folder)
    with pytest.raises(ValueError, match="height must be a multiple of 8 for this model, got 500"):
        p("x", steps=1, height=500, width=512)


def test_non_square_and_non_native_sizes_work(pipe):
    """The UNet was traced through diffusers' upsample-size branch: sizes need only the VAE factor."""
    image = pipe("x", steps=2, height=36, width=52, seed=0).images[0]
    assert image.size == (52, 36)


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(pipe, steps):
    with pytest.raises(ValueError, match="steps must be an integer of at least 1"):
        pipe("x", steps=steps)


def test_unknown_scheduler(pipe):
    with pytest.raises(ValueError, match="ddim") as err:
        pipe("x", steps=2, scheduler="no-such-sampler")
    assert "no-such-sampler" in str(err.value)


def test_provider_not_available(tiny_sd1):
    missing = next(p for p in ("tensorrt", "coreml", "directml", "rocm", "cuda") if p not in available_providers())
    with pytest.raises(ValueError, match="not available") as err:
        Pipeline.from_folder(tiny_sd1[1], provider=missing)
    assert "cpu" in str(err.value)  # lists what is available
    with pytest.raises(ValueError, match="unknown provider"):
        Pipeline.from_folder(tiny_sd1[1], provider="abacus")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="not an ONNX model folder"):
        Pipeline.from_folder(tmp_path)
    with pytest.raises(ModelFolderError, match="not a folder"):
        Pipeline.from_folder(tmp_path / "nothing-here")


def test_missing_component(tmp_path, tiny_sd1):
    folder = tmp_path / "m"
    shutil.copytree(tiny_sd1[1], folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(ModelFolderError, match=r"lacks unet/model.onnx.*latentrt export"):
        Pipeline.from_folder(folder)


def test_truncated_model_with_manifest(tmp_path, tiny_sd1):
    folder = tmp_path / "m"
    shutil.copytree(tiny_sd1[1], folder)
    path = folder / "unet" / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match="truncated"):
        Pipeline.from_folder(folder)


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_corrupted_model_without_manifest(tmp_path, tiny_sd1, provider):
    """Folders without a manifest (optimum's) still get a clear error from the loader, on either backend."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_sd1[1], folder)
    (folder / "manifest.json").unlink()
    path = folder / "unet" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[100:4000] = b"\xff" * 3900
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelLoadError, match=r"unet: .* could not be loaded .*corrupted or truncated"):
        Pipeline.from_folder(folder, provider=provider)


def test_latents_of_wrong_shape(pipe):
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 16, 16\)"):
        pipe("x", steps=1, latents=np.zeros((1, 4, 8, 8), np.float32))


def test_nan_images_are_refused():
    from latentrt.runtime.images import decoded_to_uint8

    decoded = np.zeros((1, 3, 4, 4), np.float32)
    decoded[0, 0, 0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        decoded_to_uint8(decoded)


def test_wrong_input_dtype_names_the_input(pipe):
    with pytest.raises(ValueError, match=r"unet: input 'timestep' must be float32, got int64"):
        pipe.unet(
            sample=np.zeros((1, 4, 16, 16), np.float32),
            timestep=np.zeros((1,), np.int64),
            encoder_hidden_states=np.zeros((1, 77, 32), np.float32),
        )


@pytest.mark.parametrize("prompt", [[], None, ["ok", 3]])
def test_bad_prompt(pipe, prompt):
    with pytest.raises((ValueError, TypeError), match="prompt must be"):
        pipe(prompt, steps=1)
