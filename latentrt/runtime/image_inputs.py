"""Input images and masks for image to image and inpainting, prepared as diffusers' VaeImageProcessor prepares them.

Everything here is PIL and NumPy: reading what the caller gave (PIL image, uint8 array or path), the mask's
binarisation, and `padding_mask_crop` (inpaint a padded crop around the mask at the full processing size, then
paste it back: diffusers' get_crop_region, resize_mode "fill" / "crop" and apply_overlay).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

LANCZOS = Image.Resampling.LANCZOS  # diffusers' VaeImageProcessor resample


def as_pil(image, what: str) -> Image.Image:
    """A PIL image from a PIL image, a path, or a uint8 array ((H, W, 3); a mask may also be (H, W))."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
        try:
            with Image.open(path) as opened:
                return opened.copy()
        except OSError as exc:
            raise ValueError(f"{what} {path} is not an image file PIL can read: {exc}") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 3 and image.shape[2] == 3 or what == "mask_image" and image.ndim == 2):
            shapes = "(height, width) or (height, width, 3)" if what == "mask_image" else "(height, width, 3)"
            article = "a mask_image" if what == "mask_image" else "an image"
            raise ValueError(f"{article} array must be uint8 of shape {shapes}, got {image.dtype} {image.shape}")
        return Image.fromarray(image)
    if not isinstance(image, Image.Image):
        extra = " (height, width) or" if what == "mask_image" else ""
        raise ValueError(f"{what} must be a PIL image, a uint8 array{extra} (height, width, 3) or a path, got {type(image).__name__}")
    return image


def to_pixels(image: Image.Image) -> NDArray[np.float32]:
    """(1, 3, H, W) float32 in [-1, 1], the VAE encoder's input."""
    array = np.asarray(image.convert("RGB")).astype(np.float32) / np.float32(255.0)  # (H, W, 3) in [0, 1]
    return (2.0 * array - 1.0).transpose(2, 0, 1)[None].astype(np.float32)


def mask_array(mask: Image.Image, height: int, width: int, crop: tuple[int, int, int, int] | None = None) -> NDArray[np.float32]:
    """The mask as diffusers' mask_processor makes it: (cropped and filled,) resized, grayscale, binarised at 0.5."""
    if crop is not None:
        mask = resize_fill(mask.crop(crop), width, height)
    elif mask.size != (width, height):
        mask = mask.resize((width, height), resample=LANCZOS)
    array = np.asarray(mask.convert("L")).astype(np.float32) / np.float32(255.0)
    binary = (array >= 0.5).astype(np.float32)[None, None]  # (1, 1, H, W)
    if not binary.any():
        raise ValueError("the mask is all black: nothing to repaint (white marks the region to repaint)")
    return binary


def crop_region(mask: Image.Image, width: int, height: int, pad: int) -> tuple[int, int, int, int]:
    """diffusers' get_crop_region: the box (x1, y1, x2, y2) around the mask's non-black pixels, padded by `pad`
    and grown to the processing size's aspect ratio, inside the image."""
    array = np.asarray(mask.convert("L"))
    rows, cols = np.flatnonzero(array.any(axis=1)), np.flatnonzero(array.any(axis=0))
    if not rows.size:
        raise ValueError("the mask is all black: nothing to repaint (white marks the region to repaint)")
    h, w = array.shape
    x1, y1 = max(int(cols[0]) - pad, 0), max(int(rows[0]) - pad, 0)
    x2, y2 = min(int(cols[-1]) + 1 + pad, w), min(int(rows[-1]) + 1 + pad, h)
    if (x2 - x1) / (y2 - y1) > width / height:  # too wide: grow the height
        y1, y2 = _grow(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), h)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), w)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, diff: int, size: int) -> tuple[int, int]:
    """Widen [lo, hi) by `diff`, centred, shifted back inside [0, size) (diffusers' order of corrections)."""
    lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi >= size:
        lo, hi = lo - (hi - size), size
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, size)


def resize_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """diffusers' resize_mode "fill": fit inside (width, height) keeping the aspect ratio, centre it, and fill the
    bands on either side by stretching the resized image's edge rows or columns."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio and (fill := height // 2 - src_h // 2) > 0:
        out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
        out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
    elif ratio > src_ratio and (fill := width // 2 - src_w // 2) > 0:
        out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
        out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return out


def resize_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """diffusers' resize_mode "crop": cover (width, height) keeping the aspect ratio, centred, the excess cut off."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out


def paste_back(generated: Image.Image, source: Image.Image, mask: Image.Image, crop: tuple[int, int, int, int]) -> Image.Image:
    """diffusers' apply_overlay: the generated crop scaled back into its box on the source image, and the source's
    own pixels wherever the mask is black (a grey mask blends the two)."""
    width, height = source.size
    kept = Image.new("RGBa", (width, height))
    kept.paste(source.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    x1, y1, x2, y2 = crop
    base = Image.new("RGBA", (width, height))
    base.paste(resize_crop(generated, x2 - x1, y2 - y1), (x1, y1))
    out = base.convert("RGB").convert("RGBA")
    out.alpha_composite(kept.convert("RGBA"))
    return out.convert("RGB")
