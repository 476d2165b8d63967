"""Read a shapes image back into its attributes, in pure NumPy (no torch).

``judge(image)`` returns the background, the shape's colour, the shape and the grid cell. It is made
to tolerate the soft edges, slight colour shifts and specks of generated images:

1. background: the per-channel median of the border pixels, nearest background colour;
2. foreground: pixels far from the background colour; the shape colour is the nearest palette
   colour to the median of the pixels farthest from the background (the shape's core);
3. mask: pixels that lie more than half-way from the background colour to the shape colour
   (a half-maximum threshold, so blur shifts edges little), largest 4-connected component;
4. shape: from the mask's fill of its bounding box and the width profile from top to bottom
   (square ~ 1.0 fill, circle ~ pi/4, triangle ~ 1/2 and narrow at the top);
5. cell: the centre of the mask's bounding box on the 3x3 grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .dataset import BACKGROUNDS, COLORS, HORIZONTALS, IMAGE_SIZE, VERTICALS, Attributes

_BG_NAMES = tuple(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[k] for k in _BG_NAMES], np.float32)  # (3, 3)
_FG_NAMES = tuple(COLORS)
_FG_RGB = np.array([COLORS[k] for k in _FG_NAMES], np.float32)  # (6, 3)

MIN_FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as "shape"


@dataclass(frozen=True)
class Verdict:
    background: str
    color: str | None
    shape: str | None
    vertical: str | None
    horizontal: str | None
    area: int  # pixels in the shape mask (0: no shape found)
    fill: float  # mask area / bounding-box area
    top_bottom_width: float  # mean width of the top quarter / of the bottom quarter

    def matches(self, a: Attributes) -> dict[str, bool]:
        """Per attribute: does the verdict agree with ``a``? Position needs both row and column."""
        return {
            "color": self.color == a.color,
            "shape": self.shape == a.shape,
            "position": (self.vertical, self.horizontal) == (a.vertical, a.horizontal),
            "background": self.background == a.background,
        }


def to_array(image) -> NDArray[np.float32]:
    """PIL image or (H, W, 3) uint8/float array in [0, 255] -> (H, W, 3) float32."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    return arr.astype(np.float32)


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Largest 4-connected component of a boolean mask (iterative flood fill, small images)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    best, best_size, current = 0, 0, 0
    ys, xs = np.nonzero(mask)
    for y0, x0 in zip(ys.tolist(), xs.tolist()):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = current
                    stack.append((yy, xx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def _box3(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """3x3 mean filter with edge padding: smooths pixel noise before thresholding."""
    p = np.pad(x, 1, mode="edge")
    h, w = x.shape
    return sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def classify_shape(mask: NDArray[np.bool_]) -> tuple[str | None, float, float]:
    """(shape, fill, top/bottom width ratio) of a boolean mask with one blob."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 6:
        return None, 0.0, 0.0
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    box = mask[y0 : y1 + 1, x0 : x1 + 1]
    fill = float(box.mean())
    widths = box.sum(axis=1).astype(np.float32)  # (rows,)
    q = max(1, len(widths) // 4)
    ratio = float(widths[:q].mean() / max(widths[-q:].mean(), 1e-6))
    if ratio < 0.6:
        shape = "triangle"  # narrow top, wide base
    elif fill > 0.89:
        shape = "square"
    elif fill > 0.62:
        shape = "circle"
    else:
        shape = "triangle"
    return shape, fill, ratio


def judge(image) -> Verdict:
    img = to_array(image)  # (H, W, 3)
    h, w, _ = img.shape
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (2H+2W, 3)
    bg_rgb = np.median(border, axis=0)
    bg_idx = int(np.argmin(((_BG_RGB - bg_rgb) ** 2).sum(axis=1)))
    background = _BG_NAMES[bg_idx]

    # distance from the measured background, so a slightly tinted background stays background
    dist = np.sqrt(((img - bg_rgb) ** 2).sum(axis=2))  # (H, W)
    fg = dist > MIN_FOREGROUND_DISTANCE
    if fg.sum() < 6:
        return Verdict(background, None, None, None, None, 0, 0.0, 0.0)
    # the shape's core: the foreground pixels farthest from the background
    core = dist >= np.percentile(dist[fg], 50)
    core &= fg
    fg_rgb = np.median(img[core], axis=0)
    col_idx = int(np.argmin(((_FG_RGB - fg_rgb) ** 2).sum(axis=1)))
    color = _FG_NAMES[col_idx]

    # half-way mask along the background -> measured shape colour line
    direction = fg_rgb - bg_rgb
    t = ((img - bg_rgb) @ direction) / max(float(direction @ direction), 1e-6)  # (H, W)
    mask = _largest_component(_box3(t) > 0.5)
    shape, fill, ratio = classify_shape(mask)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return Verdict(background, color, None, None, None, 0, 0.0, 0.0)
    cy = (ys.min() + ys.max() + 1) / 2 * IMAGE_SIZE / h
    cx = (xs.min() + xs.max() + 1) / 2 * IMAGE_SIZE / w
    row = min(int(cy * 3 // IMAGE_SIZE), 2)
    col = min(int(cx * 3 // IMAGE_SIZE), 2)
    return Verdict(background, color, shape, VERTICALS[row], HORIZONTALS[col], int(mask.sum()), fill, ratio)


ATTRIBUTES = ("color", "shape", "position", "background")


def score(images, attrs: list[Attributes]) -> dict[str, float]:
    """Fraction right per attribute, every attribute ('all'), and the two position axes apart, over
    paired images and attributes."""
    if len(images) != len(attrs):
        raise ValueError(f"got {len(images)} images for {len(attrs)} attribute sets")
    hits = {k: 0 for k in (*ATTRIBUTES, "all", "vertical", "horizontal")}
    for im, a in zip(images, attrs):
        verdict = judge(im)
        m = verdict.matches(a)
        for k, ok in m.items():
            hits[k] += ok
        hits["all"] += all(m.values())
        hits["vertical"] += verdict.vertical == a.vertical
        hits["horizontal"] += verdict.horizontal == a.horizontal
    n = max(len(attrs), 1)
    return {k: v / n for k, v in hits.items()}
