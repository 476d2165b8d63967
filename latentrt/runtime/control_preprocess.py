"""Control-image preprocessors: what turns a photo into the map a ControlNet was trained on.

`canny` is OpenCV's `cv2.Canny(image, low, high)` (aperture 3, L1 gradient: the call diffusers' and AUTOMATIC1111's
ControlNet examples make) written in NumPy, so the runtime needs neither OpenCV nor torch:

1. Sobel 3x3 derivatives with replicated borders, per colour channel; each pixel keeps the channel whose
   |dx| + |dy| is largest (OpenCV's rule for a colour image; the first channel on a tie).
2. Non-maximum suppression along the gradient direction quantised to 0/45/90/135 degrees with OpenCV's fixed-point
   tan(22.5) test, and its asymmetric comparisons (strictly greater than one neighbour, at least the other).
3. Double threshold: a pixel is a candidate above `low`, strong above `high` (both floored, swapped if low > high).
4. Hysteresis: the candidates 8-connected to a strong pixel are edges.

The result is white edges on black, RGB, the image's size: the 3-channel map diffusers' examples build.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from PIL import Image

PREPROCESSORS = ("none", "canny")

_TAN_22_5_Q15 = 13573  # round(tan(22.5 degrees) * 2**15): OpenCV's fixed-point sector test
_NEIGHBOURS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def preprocess(name: str | None, image, *, low_threshold: float = 100, high_threshold: float = 200) -> Image.Image:
    """The control map for `image` (PIL image or uint8 array) made by the preprocessor `name` (RGB, same size);
    "none" (or None) only converts to RGB."""
    key = "none" if name is None else str(name).strip().lower()
    if key not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessor {name!r}: use one of {', '.join(PREPROCESSORS)}")
    if key == "canny":
        return canny(image, low_threshold, high_threshold)
    return _as_rgb(image)


def canny(image, low_threshold: float = 100, high_threshold: float = 200) -> Image.Image:
    """OpenCV's Canny edge map of `image` (see the module docstring): white edges on black, RGB."""
    low, high = _thresholds(low_threshold, high_threshold)
    pixels = np.asarray(_as_rgb(image), dtype=np.int32)
    edges = canny_edges(pixels, low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def canny_edges(pixels: NDArray, low: int, high: int) -> NDArray[np.uint8]:
    """(H, W) uint8, 255 on edges, of an (H, W) or (H, W, C) integer image; `low`/`high` integer thresholds."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    dx, dy = _sobel(pixels.astype(np.int32))
    magnitude = np.abs(dx) + np.abs(dy)  # (H, W, C): L1 gradient
    if magnitude.shape[2] > 1:  # keep, per pixel, the channel with the largest gradient
        pick = np.argmax(magnitude, axis=2)[:, :, None]
        dx, dy, magnitude = (np.take_along_axis(a, pick, axis=2) for a in (dx, dy, magnitude))
    dx, dy, magnitude = dx[:, :, 0], dy[:, :, 0], magnitude[:, :, 0]
    candidate = _local_maxima(dx, dy, magnitude) & (magnitude > low)
    strong = candidate & (magnitude > high)
    return np.where(_hysteresis(candidate, strong), np.uint8(255), np.uint8(0))


def _as_rgb(image) -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or image.ndim == 3 and image.shape[2] in (3, 4)):
            raise ValueError(
                f"a control image array must be uint8 of shape (height, width), (height, width, 3) or "
                f"(height, width, 4), got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):  # ValueError: the runtime's bad-input error (HTTP 422 in the server)
        raise ValueError(f"a control image must be a PIL image or a uint8 array, got {type(image).__name__}")  # noqa: TRY004
    return image if image.mode == "RGB" else image.convert("RGB")


def _thresholds(low_threshold: float, high_threshold: float) -> tuple[int, int]:
    for what, value in (("low_threshold", low_threshold), ("high_threshold", high_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
            raise ValueError(f"canny {what} must be a finite number (an 8-bit gradient level, e.g. 100), got {value!r}")
        if value < 0:
            raise ValueError(f"canny {what} must be >= 0, got {value}")
    low, high = sorted((float(low_threshold), float(high_threshold)))  # cv2.Canny swaps them too
    return math.floor(low), math.floor(high)


def _sobel(pixels: NDArray[np.int32]) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """3x3 Sobel dx and dy (correlation, replicated border), per channel."""
    p = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    left, right = p[:, :-2], p[:, 2:]
    horizontal = right - left  # (H + 2, W, C)
    dx = horizontal[:-2] + 2 * horizontal[1:-1] + horizontal[2:]
    up, down = p[:-2], p[2:]
    vertical = down - up  # (H, W + 2, C)
    dy = vertical[:, :-2] + 2 * vertical[:, 1:-1] + vertical[:, 2:]
    return dx, dy


def _local_maxima(dx: NDArray[np.int32], dy: NDArray[np.int32], magnitude: NDArray[np.int32]) -> NDArray[np.bool_]:
    """OpenCV's non-maximum suppression; outside the image the magnitude is 0."""
    h, w = magnitude.shape
    m = np.pad(magnitude, 1)

    def at(row: int, col: int) -> NDArray[np.int32]:
        return m[1 + row : 1 + row + h, 1 + col : 1 + col + w]

    centre = at(0, 0)
    x = np.abs(dx).astype(np.int64)
    y = np.abs(dy).astype(np.int64) << 15
    tg22x = x * _TAN_22_5_Q15
    tg67x = tg22x + (x << 16)
    across_columns = y < tg22x  # gradient near horizontal: compare left and right
    across_rows = ~across_columns & (y > tg67x)  # near vertical: compare above and below
    diagonal = ~across_columns & ~across_rows
    same_sign = (dx ^ dy) >= 0  # down-right diagonal, else down-left
    return (
        across_columns & (centre > at(0, -1)) & (centre >= at(0, 1))
        | across_rows & (centre > at(-1, 0)) & (centre >= at(1, 0))
        | diagonal & same_sign & (centre > at(-1, -1)) & (centre > at(1, 1))
        | diagonal & ~same_sign & (centre > at(-1, 1)) & (centre > at(1, -1))
    )


def _hysteresis(candidate: NDArray[np.bool_], strong: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The candidates 8-connected (through candidates) to a strong pixel: a breadth-first fill, one vectorised step
    per ring of pixels, on a padded flat grid so that neighbours need no bounds checks."""
    h, w = candidate.shape
    stride = w + 2
    open_ = np.pad(candidate & ~strong, 1).ravel()  # candidates not yet reached
    edge = np.pad(strong, 1).ravel()
    offsets = np.array([r * stride + c for r, c in _NEIGHBOURS_8], dtype=np.int64)
    frontier = np.flatnonzero(edge)
    while frontier.size:
        reached = np.unique((frontier[:, None] + offsets[None, :]).ravel())
        reached = reached[open_[reached]]
        open_[reached] = False
        edge[reached] = True
        frontier = reached
    return edge.reshape(h + 2, stride)[1:-1, 1:-1]
