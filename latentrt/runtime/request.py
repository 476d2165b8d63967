"""What a generation is: the `Request` a caller describes, and the `Plan` a pipeline checks it into.

The Python call, the CLI, the server and the bench all describe a generation as a `Request`; `Pipeline.check`
turns it into a `Plan` (every default resolved, every check made against the model folder, nothing allocated),
and `Pipeline.run` runs a plan. So a check and its message exist once: the server's 422 and the CLI's exit-2
error are the same sentence. A new call option is a new field here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from latentrt.runtime.families import Prompts, SizeConditioning

ImageInput = Image.Image | NDArray[np.uint8] | str | Path

__all__ = ["Plan", "Request"]


@dataclass(frozen=True, eq=False)
class Request:
    """One generation as the caller describes it; None means the model's default (its folder's, or diffusers').

    Text to image by default; image to image when `image` is given (a PIL image, a uint8 (H, W, 3) array or a
    path); inpainting when `mask_image` is given too. `Pipeline.__call__`'s docstring says what each field does.
    """

    prompt: str | Sequence[str]
    negative_prompt: str | Sequence[str] | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    seed: int | None = None
    num_images: int = 1
    latents: NDArray[np.float32] | None = None
    image: ImageInput | None = None
    strength: float | None = None
    mask_image: ImageInput | None = None
    padding_mask_crop: int | None = None
    clip_skip: int | None = None
    original_size: tuple[int, int] | None = None  # SDXL's micro-conditioning
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    aesthetic_score: float = 6.0  # SDXL refiner
    negative_aesthetic_score: float = 2.5
    cache_interval: int = 1  # DeepCache: one full UNet call in N
    cache_schedule: str = "uniform"
    vae: str | None = None  # "full" or "tiny" (the folder's tiny autoencoder); None: the pipeline's default
    preview_every: int | None = None  # a preview image to the progress callback every N UNet calls
    # ControlNet (diffusers' names; a folder exported with --controlnet): see latentrt.runtime.controlnet
    control_image: ImageInput | Sequence[ImageInput] | None = None  # one per ControlNet
    controlnet: str | Sequence[str] | None = None  # None: the folder's one ControlNet
    controlnet_conditioning_scale: float | Sequence[float] = 1.0
    control_guidance_start: float | Sequence[float] = 0.0  # fractions of the UNet calls
    control_guidance_end: float | Sequence[float] = 1.0
    guess_mode: bool = False
    control_preprocess: str | Sequence[str | None] | None = None  # "canny", "none" (control_preprocess.PREPROCESSORS)
    canny_low_threshold: float = 100
    canny_high_threshold: float = 200


@dataclass(frozen=True, eq=False)
class Plan:
    """A checked request: defaults resolved against the folder, the task chosen, the memory guard passed."""

    request: Request
    prompts: tuple[str, ...]
    negatives: tuple[str, ...]
    height: int
    width: int
    steps: int
    guidance_scale: float
    do_cfg: bool  # classifier-free guidance: two UNet rows per image
    scheduler: str  # the scheduler's name
    task: Any  # a latentrt.runtime.tasks.Task
    cache_interval: int
    tiled: bool  # decode the VAE in tiles (the full VAE only)
    vae: str = "full"  # "full" or "tiny": decodes, and encodes an image to image's source
    preview_every: int | None = None
    control: Any = None  # a latentrt.runtime.controlnet.Control (no unit without ControlNet)

    @property
    def batch(self) -> int:
        """Images of the call (UNet rows without guidance)."""
        return len(self.prompts) * self.request.num_images

    @property
    def text(self) -> Prompts:
        r = self.request
        return Prompts(list(self.prompts), list(self.negatives), r.negative_prompt is not None, self.do_cfg,
                       r.num_images, r.clip_skip)

    @property
    def size(self) -> SizeConditioning:
        r = self.request
        return SizeConditioning(self.height, self.width, r.original_size, tuple(r.crops_coords_top_left), r.target_size,
                                float(r.aesthetic_score), float(r.negative_aesthetic_score))


# --- the checks of single values, each with the message a user sees -------------------------------------------
def check_prompts(prompt) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.80}")
    return prompts


def check_negatives(negative_prompt, count: int) -> list[str]:
    if negative_prompt is None:
        return [""] * count
    negatives = [negative_prompt] * count if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != count:
        raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {count}: give one per prompt")
    return negatives


MAX_GUIDANCE = 100.0  # far past any useful scale (7.5 is usual); larger ones overflow the UNet's guided noise to inf


def check_guidance(value) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value)
            or not 0 <= value <= MAX_GUIDANCE):
        raise ValueError(f"guidance_scale must be a finite number >= 0 and <= {MAX_GUIDANCE:g} (values <= 1 turn guidance "
                         f"off; 7.5 is usual), got {value!r}")
    return float(value)


def check_strength(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 < value <= 1:
        raise ValueError(f"strength must be a number in (0, 1] (the fraction of the steps that run on the image), got {value!r}")
    return float(value)


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
    return int(value)


def check_steps(value, train_steps: int) -> int:
    """At least 1 and at most the scheduler's training timesteps (there are no more timesteps to visit)."""
    steps = check_positive_int("steps", value)
    if steps > train_steps:
        raise ValueError(f"steps must be in [1, {train_steps}] for this model (its scheduler's training timesteps), got {steps}")
    return steps


VAES = ("full", "tiny")


def check_vae(value) -> str:
    if value not in VAES:
        raise ValueError(f"vae must be 'full' (the model's VAE) or 'tiny' (its tiny autoencoder, TAESD), got {value!r}")
    return value


def check_preview_every(value) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"preview_every must be a whole number of UNet calls >= 1 (a preview every N calls), got {value!r}")
    return None if value is None else int(value)


def check_padding(value) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
        raise ValueError(f"padding_mask_crop must be a whole number of pixels >= 0, got {value!r}")
    return None if value is None else int(value)
