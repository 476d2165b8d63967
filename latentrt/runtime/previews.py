"""Previews during denoising (`preview_every=N`): a small image of the current latents for the progress callback.

The denoise loop calls `Previews.after_call` once per UNet call; every N calls it returns a PIL image of the first
image's current latents (the 4 latent channels: a 9-channel inpainting UNet's extra inputs are not in them), else
None. The image is decoded by the folder's tiny autoencoder when it has one (vae_decoder_tiny/: the output's size,
TAESD's quality), else by a cheap linear projection of the latent channels to RGB, AUTOMATIC1111's "Approx cheap"
preview, upscaled to the output's size by repeating pixels (nearest neighbour).

Cost per preview, measured at 512x512 with SD 1.5's latents: see docs/tiny-vae.md (benchmarks/tiny_vae_parity.py).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from latentrt.runtime.families import StableDiffusionXL
from latentrt.runtime.folder import TINY_DECODER
from latentrt.runtime.images import decoded_to_uint8

# Latent channel -> (R, G, B), for latents as the UNet sees them, giving about [-1, 1]: AUTOMATIC1111's
# stable-diffusion-webui, modules/sd_vae_approx.py, cheap_approximation() (after the linear fit in
# https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204/2): one matrix for SD 1.x/2.x,
# one for SDXL.
SD_LATENT_RGB = np.array([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
], dtype=np.float32)
SDXL_LATENT_RGB = np.array([
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
], dtype=np.float32)


def approximate_rgb(latents: NDArray[np.float32], coefficients: NDArray[np.float32]) -> NDArray[np.float32]:
    """(B, C, h, w) UNet latents -> (B, 3, h, w) in about [-1, 1] by a per-pixel linear map (C x 3 coefficients);
    latents of another channel count than the coefficients' give a grey image of their mean."""
    if latents.shape[1] != coefficients.shape[0]:
        grey = latents.mean(axis=1, keepdims=True)
        return np.repeat(grey, 3, axis=1).astype(np.float32)
    return np.einsum("bchw,cr->brhw", latents, coefficients).astype(np.float32)


class Previews:
    """One generation's previews: every `plan.preview_every` UNet calls, the first image's latents as a PIL image."""

    def __init__(self, pipe, plan):
        self.every = plan.preview_every
        self.pipe = pipe
        self.height, self.width = plan.height, plan.width
        self.channels = pipe.folder.vae.latent_channels
        self.tiny = TINY_DECODER in pipe.folder.components
        self.coefficients = SDXL_LATENT_RGB if isinstance(pipe.family, StableDiffusionXL) else SD_LATENT_RGB

    @property
    def method(self) -> str:
        """"tiny" (the tiny autoencoder decodes) or "approx" (the linear projection)."""
        return "tiny" if self.tiny else "approx"

    def after_call(self, done: int, total: int, x: NDArray[np.float32]) -> Image.Image | None:
        """The preview after UNet call `done` (1-based) of `total`: an image every `every` calls, else None."""
        if done % self.every:
            return None
        return self.image(x[:1, : self.channels])

    def image(self, latents: NDArray[np.float32]) -> Image.Image:
        """A (1, C, h, w) latent as a height x width RGB image."""
        if self.tiny:
            return Image.fromarray(decoded_to_uint8(self.pipe.decode(latents, vae="tiny"))[0])
        rgb = decoded_to_uint8(approximate_rgb(latents, self.coefficients))[0]  # (h, w, 3)
        return Image.fromarray(rgb).resize((self.width, self.height), resample=Image.Resampling.NEAREST)
