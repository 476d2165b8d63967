"""Tiled VAE decoding: overlapping latent tiles, decoded one at a time and blended linearly.

The same algorithm and arithmetic as diffusers' ``AutoencoderKL.tiled_decode`` (what
``vae.enable_tiling()`` turns on), in NumPy around any decoder call, so that a latentrt image decoded
in tiles can be compared with diffusers' tiled output:

* the latents are cut into tiles of ``tile`` x ``tile`` starting every
  ``stride = int(tile * (1 - overlap))`` latent pixels, rows and columns alike; the last tiles of a
  row or column are whatever is left (slices past the end), so they can be smaller than ``tile``
  (and the decoder sees up to four different input shapes);
* each decoded tile is blended with the tile above it (``blend_v``) and then with the tile to its
  left (``blend_h``) over ``blend = int(tile * scale_factor * overlap)`` image pixels, weights
  ramping linearly from the neighbour to the tile, in place, in diffusers' order (the neighbour is
  the already-blended tile, as in diffusers);
* each tile keeps its first ``row_limit = tile * scale_factor - blend`` rows and columns, and the
  kept parts are laid side by side.

Memory: the decoder only ever runs on one tile, so the peak memory of the decode (the activations
of the VAE decoder's 128-channel full-resolution layers dominate it, several GB for SD 1.5 at
1024x1024) grows with the tile side, not with the image; what grows with the image is only the
output itself plus two rows of decoded tiles (float32, 12 bytes per pixel and image). Cost: the
overlaps are decoded twice or four times (about (tile / stride)^2 = 1.8x the pixels at overlap
0.25), and the output is not the untiled decode of a real VAE: GroupNorm statistics and the
receptive field differ per tile, which the blending hides but does not undo. See
benchmarks/results/tiled_vae.md for measured time, memory and PSNR against the untiled decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np
from numpy.typing import NDArray

DEFAULT_OVERLAP = 0.25  # diffusers' AutoencoderKL.tile_overlap_factor


def vae_scale_factor(block_out_channels: Sequence[int]) -> int:
    """Image pixels per latent pixel of an AutoencoderKL: 2 ** (number of blocks - 1)."""
    return 2 ** (len(block_out_channels) - 1)


def default_tile(sample_size: int | Sequence[int], block_out_channels: Sequence[int]) -> int:
    """The latent tile side diffusers uses for a VAE config (``tile_latent_min_size``).

    ``int(sample_size / 2 ** (len(block_out_channels) - 1))``, the first entry when sample_size is a
    list, as diffusers reads it: 64 for SD 1.x/2.x (512 / 8), 128 for SDXL's VAE (1024 / 8).
    """
    size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
    return int(size / vae_scale_factor(block_out_channels))


def should_tile(latent_h: int, latent_w: int, tile: int) -> bool:
    """Whether diffusers' tiling would decode these latents in tiles: when either side exceeds the tile."""
    return latent_h > tile or latent_w > tile


def tile_layout(tile: int, scale_factor: int, overlap: float = DEFAULT_OVERLAP) -> tuple[int, int, int]:
    """(stride in latent pixels, blend extent and kept part in image pixels) for a tile, or a clear error.

    diffusers computes the stride in latent pixels and the blend in image pixels, each truncated
    on its own; the kept parts then tile the image only when ``stride * scale_factor`` equals
    ``row_limit`` (true for every power-of-two tile at overlap 0.25, e.g. SD's 64). Otherwise
    diffusers' output would not have the image's size, so such a tile is refused here.
    """
    if not isinstance(tile, (int, np.integer)) or isinstance(tile, bool) or tile < 1:
        raise ValueError(f"tile must be a positive integer (latent pixels), got {tile!r}")
    if not isinstance(scale_factor, (int, np.integer)) or scale_factor < 1:
        raise ValueError(f"scale_factor must be a positive integer, got {scale_factor!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    sample_tile = tile * scale_factor
    stride = int(tile * (1 - overlap))
    blend = int(sample_tile * overlap)
    row_limit = sample_tile - blend
    if stride < 1 or stride * scale_factor != row_limit:
        raise ValueError(
            f"tile {tile} with overlap {overlap} does not tile the image: the stride "
            f"({stride} latent px = {stride * scale_factor} px) differs from the kept part of each tile "
            f"({row_limit} px); choose a tile such that tile * (1 - overlap) is a whole number (e.g. a multiple of 4 at 0.25)"
        )
    return stride, blend, row_limit


def _blend_v(a: NDArray[np.float32], b: NDArray[np.float32], blend: int) -> None:
    """diffusers' AutoencoderKL.blend_v, in place on b."""
    blend = min(a.shape[2], b.shape[2], blend)
    for y in range(blend):
        b[:, :, y, :] = a[:, :, -blend + y, :] * (1 - y / blend) + b[:, :, y, :] * (y / blend)


def _blend_h(a: NDArray[np.float32], b: NDArray[np.float32], blend: int) -> None:
    """diffusers' AutoencoderKL.blend_h, in place on b."""
    blend = min(a.shape[3], b.shape[3], blend)
    for x in range(blend):
        b[:, :, :, x] = a[:, :, :, -blend + x] * (1 - x / blend) + b[:, :, :, x] * (x / blend)


def decode_tiled(
    decode: Callable[[NDArray[np.float32]], NDArray[np.float32]],
    z: NDArray[np.float32],
    scale_factor: int,
    tile: int,
    overlap: float = DEFAULT_OVERLAP,
) -> NDArray[np.float32]:
    """Decode latents ``z`` (B, C, h, w) in overlapping tiles; return images (B, 3, h * f, w * f).

    ``decode`` is the VAE decoder call on already scaled latents (z = latents / scaling_factor
    [+ shift]), mapping (B, C, th, tw) to (B, 3, th * f, tw * f) with f = ``scale_factor``;
    ``tile`` is the latent tile side (``default_tile`` gives diffusers' for a VAE config). Latents
    no larger than a tile are decoded in one call, as diffusers does when it would not tile.
    The result equals diffusers' ``tiled_decode`` given the same per-tile decodes; only the
    previous row of decoded tiles is kept while the next is decoded (diffusers keeps them all).
    Each tile carries the whole batch, as in diffusers; the decoder treats images independently,
    so calling this per image gives the same images (to float rounding) with the decoder memory of one.
    """
    z = np.asarray(z)
    if z.ndim != 4:
        raise ValueError(f"latents must be (batch, channels, height, width), got shape {z.shape}")
    stride, blend, row_limit = tile_layout(tile, scale_factor, overlap)
    batch, _, h, w = z.shape

    def run(part: NDArray[np.float32]) -> NDArray[np.float32]:
        out = np.array(decode(np.ascontiguousarray(part)), dtype=np.float32, copy=True)  # own, writable
        want = (part.shape[0], part.shape[2] * scale_factor, part.shape[3] * scale_factor)
        if out.ndim != 4 or (out.shape[0], out.shape[2], out.shape[3]) != want:
            raise ValueError(
                f"decode returned shape {out.shape} for latents {part.shape}: expected "
                f"({want[0]}, channels, {want[1]}, {want[2]}) with scale_factor {scale_factor}"
            )
        return out

    if not should_tile(h, w, tile):
        return run(z)

    result: NDArray[np.float32] | None = None
    above: list[NDArray[np.float32]] = []
    for i in range(0, h, stride):
        row: list[NDArray[np.float32]] = []
        for col, j in enumerate(range(0, w, stride)):
            decoded = run(z[:, :, i : i + tile, j : j + tile])
            if result is None:
                result = np.empty((batch, decoded.shape[1], h * scale_factor, w * scale_factor), dtype=np.float32)
            if above:
                _blend_v(above[col], decoded, blend)
            if row:
                _blend_h(row[-1], decoded, blend)
            row.append(decoded)
            kept = decoded[:, :, :row_limit, :row_limit]
            y, x = i * scale_factor, j * scale_factor
            result[:, :, y : y + kept.shape[2], x : x + kept.shape[3]] = kept
        above = row
    assert result is not None
    return result
