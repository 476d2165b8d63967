"""NumPy <-> PIL, and PNG files with the generation parameters (AUTOMATIC1111's `parameters` chunk)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, PngImagePlugin

from latentrt.runtime.session import check_finite


@dataclass(frozen=True)
class GenerationParameters:
    prompt: str
    negative_prompt: str
    steps: int
    sampler: str
    guidance_scale: float
    seed: int | None  # None when the caller gave the latents
    width: int
    height: int
    model: str
    backend: str = "cpu"  # "openvino", or the ONNX Runtime provider
    precision: str = "fp32"  # what the networks computed in: "fp32", "bf16", "int8+fp32", ...
    strength: float | None = None  # image to image's denoising strength; None for text to image
    task: str = "txt2img"  # "img2img", "inpaint"
    mask_padding: int | None = None  # inpainting's padding_mask_crop (A1111's "Only masked" inpaint area)
    cache_interval: int = 1  # DeepCache: one full UNet call in this many (1: no caching)
    cache_schedule: str = "uniform"
    vae: str = "full"  # "tiny": the folder's tiny autoencoder (TAESD) decoded the image
    controlnet: tuple[str, ...] = ()  # one unit text per ControlNet (controlnet.Control.infotext), written as A1111 does

    def a1111(self) -> str:
        """The text AUTOMATIC1111 writes in a PNG's `parameters` chunk (and reads back)."""
        settings = [
            f"Steps: {self.steps}",
            f"Sampler: {self.sampler}",
            f"CFG scale: {self.guidance_scale:g}",
            f"Seed: {self.seed if self.seed is not None else -1}",
            f"Size: {self.width}x{self.height}",
            f"Model: {self.model}",
            f"Backend: {self.backend}",
            f"Precision: {self.precision}",
        ] + ([f"Denoising strength: {self.strength:g}"] if self.strength is not None else []) + (
            ["Inpaint area: Only masked", f"Masked area padding: {self.mask_padding}"] if self.mask_padding is not None else []) + (
            [f"DeepCache interval: {self.cache_interval}", f"DeepCache schedule: {self.cache_schedule}"] if self.cache_interval > 1 else []) + (
            ["VAE: tiny (TAESD)"] if self.vae == "tiny" else []) + [
            f'ControlNet {i}: "{unit}"' for i, unit in enumerate(self.controlnet)]
        return f"{self.prompt}\nNegative prompt: {self.negative_prompt}\n" + ", ".join(settings)


def decoded_to_uint8(decoded: NDArray[np.float32]) -> NDArray[np.uint8]:
    """VAE output (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, exactly as diffusers' postprocess."""
    check_finite("vae_decoder", decoded)  # NaN would be a black image
    images = np.clip(decoded / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)  # (B, H, W, 3)
    return (images * 255).round().astype(np.uint8)


def to_pil(images: NDArray[np.uint8]) -> list[Image.Image]:
    return [Image.fromarray(image) for image in images]


def save_png(image: Image.Image, path: Path, parameters: GenerationParameters, force: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists: choose another --output or pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=_png_info(parameters))
    tmp.replace(path)
    return path


def png_bytes(image: Image.Image, parameters: GenerationParameters) -> bytes:
    """The PNG file save_png writes, in memory (the server's responses)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(parameters))
    return buffer.getvalue()


def _png_info(parameters: GenerationParameters) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters.a1111())
    return info


def read_parameters(path: Path) -> str | None:
    with Image.open(path) as image:
        return image.text.get("parameters") if hasattr(image, "text") else None
