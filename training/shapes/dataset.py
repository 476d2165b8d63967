"""Procedural "shapes" dataset: one coloured shape on a plain background, with its caption.

The spec is fixed by issue 4 (other checks rely on it):

- 64x64 RGB, one shape (circle, square, triangle with the apex up) of radius 7-9 px,
- six shape colours, three backgrounds (exact RGB values below),
- position on a 3x3 grid (top/middle/bottom x left/center/right), centred in the grid cell with a
  little jitter (kept fully inside the image),
- canonical caption ``a {color} {shape} at the {vertical} {horizontal} on a {background} background``,
- a fixed, deterministic ~10% of attribute combinations held out from training (``HELD_OUT``).

Rendering is pure NumPy with 4x4 supersampling (antialiased edges; interior pixels keep the exact
colour, so the judge can read colours by nearest neighbour).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

IMAGE_SIZE = 64
SUPERSAMPLE = 4

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
VERTICALS: tuple[str, ...] = ("top", "middle", "bottom")
HORIZONTALS: tuple[str, ...] = ("left", "center", "right")

RADIUS_RANGE = (7.0, 9.0)  # px
JITTER = 2.0  # px, uniform in [-JITTER, JITTER] on each axis
MARGIN = 1.0  # px kept between the shape's bounding box and the image border
HELD_OUT_FRACTION = 0.10


@dataclass(frozen=True, order=True)
class Attributes:
    color: str
    shape: str
    vertical: str
    horizontal: str
    background: str

    @property
    def caption(self) -> str:
        return caption(self)

    @property
    def cell(self) -> tuple[int, int]:
        """(row, column) of the grid cell."""
        return VERTICALS.index(self.vertical), HORIZONTALS.index(self.horizontal)


def caption(a: Attributes) -> str:
    return f"a {a.color} {a.shape} at the {a.vertical} {a.horizontal} on a {a.background} background"


def parse_caption(text: str) -> Attributes:
    """Inverse of ``caption`` for the canonical form."""
    w = text.strip().lower().split()
    if len(w) != 11 or w[0] != "a" or w[3:5] != ["at", "the"] or w[7:9] != ["on", "a"] or w[10] != "background":
        raise ValueError(f"not a canonical shapes caption: {text!r}")
    a = Attributes(color=w[1], shape=w[2], vertical=w[5], horizontal=w[6], background=w[9])
    if a.color not in COLORS or a.shape not in SHAPES or a.vertical not in VERTICALS:
        raise ValueError(f"unknown attribute in caption: {text!r}")
    if a.horizontal not in HORIZONTALS or a.background not in BACKGROUNDS:
        raise ValueError(f"unknown attribute in caption: {text!r}")
    return a


ALL_COMBINATIONS: tuple[Attributes, ...] = tuple(
    Attributes(c, s, v, h, b)
    for c, s, v, h, b in itertools.product(COLORS, SHAPES, VERTICALS, HORIZONTALS, BACKGROUNDS)
)


def _held_out() -> frozenset[Attributes]:
    """The fixed held-out combinations: the 10% whose caption has the smallest SHA-256.

    Defined by a hash rather than an RNG so that it never depends on a library version.
    """
    ranked = sorted(ALL_COMBINATIONS, key=lambda a: hashlib.sha256(a.caption.encode()).hexdigest())
    return frozenset(ranked[: round(HELD_OUT_FRACTION * len(ALL_COMBINATIONS))])


HELD_OUT: frozenset[Attributes] = _held_out()
TRAIN_COMBINATIONS: tuple[Attributes, ...] = tuple(a for a in ALL_COMBINATIONS if a not in HELD_OUT)
HELD_OUT_COMBINATIONS: tuple[Attributes, ...] = tuple(a for a in ALL_COMBINATIONS if a in HELD_OUT)


def cell_center(row: int, col: int) -> tuple[float, float]:
    """Centre (y, x) in pixels of grid cell (row, col)."""
    step = IMAGE_SIZE / 3
    return (row + 0.5) * step, (col + 0.5) * step


def _coverage(shape: str, cy: float, cx: float, r: float) -> NDArray[np.float32]:
    """Fraction of each pixel covered by the shape, (H, W) in [0, 1], from SUPERSAMPLE^2 samples."""
    n = IMAGE_SIZE * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE  # sample positions in pixels
    y = coords[:, None]
    x = coords[None, :]
    if shape == "circle":
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r)
    elif shape == "triangle":
        # apex (cy - r, cx), base from (cy + r, cx - r) to (cy + r, cx + r)
        t = (y - (cy - r)) / (2 * r)  # 0 at the apex, 1 at the base
        inside = (t >= 0) & (t <= 1) & (np.abs(x - cx) <= t * r)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    cov = inside.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(1, 3))
    return cov.astype(np.float32)


def render(a: Attributes, rng: np.random.Generator | None = None, *, radius: float | None = None,
           jitter: tuple[float, float] | None = None) -> NDArray[np.uint8]:
    """Render one image, (64, 64, 3) uint8. Radius and jitter are drawn from ``rng`` unless given."""
    if rng is None:
        rng = np.random.default_rng(0)
    r = float(rng.uniform(*RADIUS_RANGE)) if radius is None else float(radius)
    dy, dx = (rng.uniform(-JITTER, JITTER, size=2) if jitter is None else jitter)
    cy, cx = cell_center(*a.cell)
    lo, hi = r + MARGIN, IMAGE_SIZE - r - MARGIN
    cy = float(np.clip(cy + dy, lo, hi))
    cx = float(np.clip(cx + dx, lo, hi))
    cov = _coverage(a.shape, cy, cx, r)[..., None]  # (H, W, 1)
    bg = np.asarray(BACKGROUNDS[a.background], np.float32)
    fg = np.asarray(COLORS[a.color], np.float32)
    img = bg * (1 - cov) + fg * cov
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sample_batch(rng: np.random.Generator, n: int, combos: tuple[Attributes, ...] = TRAIN_COMBINATIONS
                 ) -> tuple[NDArray[np.uint8], list[Attributes]]:
    """n random renders of combinations drawn uniformly from ``combos``: (n, 64, 64, 3) uint8."""
    idx = rng.integers(0, len(combos), size=n)
    attrs = [combos[i] for i in idx]
    imgs = np.stack([render(a, rng) for a in attrs])
    return imgs, attrs


def main() -> None:  # pragma: no cover - a preview grid for humans
    import argparse

    from PIL import Image

    p = argparse.ArgumentParser(description="Write a preview grid of random renders")
    p.add_argument("out", help="PNG path")
    p.add_argument("--n", type=int, default=36)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    imgs, attrs = sample_batch(np.random.default_rng(args.seed), args.n, ALL_COMBINATIONS)
    side = int(np.ceil(np.sqrt(args.n)))
    grid = np.full((side * 66, side * 66, 3), 200, np.uint8)
    for i, im in enumerate(imgs):
        y, x = divmod(i, side)
        grid[y * 66 + 1 : y * 66 + 65, x * 66 + 1 : x * 66 + 65] = im
    Image.fromarray(grid).resize((side * 132, side * 132), Image.NEAREST).save(args.out)
    for a in attrs:
        print(a.caption)


if __name__ == "__main__":
    main()
