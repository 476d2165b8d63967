"""ControlNet: a step modifier around the UNet call, as diffusers' StableDiffusion(XL)ControlNet pipelines run it.

A folder exported with `latentrt export ... --controlnet [NAME=]DIR` holds each ControlNet as `controlnet/<name>/`
and a UNet graph that takes the residuals (`unet/model_controlnet.onnx`, the same weights as `unet/model.onnx`):
such a folder opens that graph only, and feeds it zeros on the calls that run no ControlNet.

- `check_control(folder, request)` turns a request's ControlNet fields into a `Control` (one `ControlUnit` per
  ControlNet: its name, image, scale, guidance window, preprocessor), with the errors a user sees;
- `Control.images(height, width, crop)` preprocesses each control image and resizes it to the output size (Lanczos,
  as diffusers' `prepare_image`; a padded inpainting crop as its "fill" mode);
- `ControlStep` is one generation's ControlNets: per UNet call, `residuals(i, sample, t)` runs the ControlNets that
  this call keeps and returns the UNet's residual feeds (their outputs scaled and summed, as diffusers'
  MultiControlNetModel), or None when none runs (the UNet call then feeds zeros: `ResidualZeros`).

diffusers' semantics, kept: the keep mask over the UNet calls (`1 - (i/n < start or (i+1)/n > end)`); the control
image repeated over the batch and, with classifier-free guidance, over both halves [uncond, cond]; guess mode runs
the ControlNets on the conditional half only (zeros for the unconditional one) with the scales ramped over the
residuals (`logspace(-1, 0)`, the deepest residual at the full scale); a ControlNet with `global_pool_conditions`
turns guess mode on. DeepCache's shallow calls run no ControlNet and take no residuals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from latentrt.runtime.control_preprocess import PREPROCESSORS, preprocess
from latentrt.runtime.folder import CONTROLNET_HINT
from latentrt.runtime.image_inputs import LANCZOS, as_pil, resize_fill
from latentrt.runtime.session import to_host

DOWN_RESIDUAL, MID_RESIDUAL = "down_block_additional_residual_", "mid_block_additional_residual"  # the UNet's inputs
DOWN_OUTPUT, MID_OUTPUT = "down_block_res_sample_", "mid_block_res_sample"  # a ControlNet's outputs
NETWORK_PREFIX = "controlnet/"  # a ControlNet's network name: "controlnet/<name>"


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet of a call: its folder name, the image as given, and diffusers' per-ControlNet settings."""

    name: str
    source: Image.Image
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocess: str = "none"  # a name of control_preprocess.PREPROCESSORS
    pooled: bool = False  # the ControlNet's config has global_pool_conditions (no guess-mode ramp)

    @property
    def network(self) -> str:
        return NETWORK_PREFIX + self.name


@dataclass(frozen=True)
class Control:
    """A call's checked ControlNet settings; no units for a call without ControlNet."""

    units: tuple[ControlUnit, ...] = ()
    guess_mode: bool = False
    low_threshold: float = 100
    high_threshold: float = 200

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(unit.name for unit in self.units)

    def size(self, height: int | None, width: int | None, multiple: int) -> tuple[int | None, int | None]:
        """height/width, each left out taken from the first control image rounded down to `multiple` (diffusers'
        ControlNet pipeline: the output is the control image's size unless given)."""
        if not self.units:
            return height, width
        source = self.units[0].source
        height = source.height // multiple * multiple if height is None else height
        width = source.width // multiple * multiple if width is None else width
        if height == 0 or width == 0:
            raise ValueError(f"the control image is {source.width}x{source.height}: both sides must be at least {multiple} "
                             "pixels for this model (or give height and width)")
        return height, width

    def images(self, height: int, width: int, crop: tuple[int, int, int, int] | None = None) -> list[Image.Image]:
        """Each unit's control image as its ControlNet sees it: preprocessed, then (cropped like the inpainted region
        and) resized to width x height, RGB (diffusers' control_image_processor: crop, resize, convert)."""
        images = []
        for unit in self.units:
            image = unit.source
            if unit.preprocess != "none":
                image = preprocess(unit.preprocess, image, low_threshold=self.low_threshold, high_threshold=self.high_threshold)
            if crop is not None:
                image = resize_fill(image.crop(crop), width, height)
            elif image.size != (width, height):
                image = image.resize((width, height), resample=LANCZOS)
            images.append(image.convert("RGB"))
        return images

    def infotext(self) -> tuple[str, ...]:
        """One AUTOMATIC1111-style unit text per ControlNet (the PNG writes them as `ControlNet <i>: "..."`)."""
        mode = "ControlNet is more important" if self.guess_mode else "Balanced"
        texts = []
        for unit in self.units:
            fields = [f"Module: {unit.preprocess}", f"Model: {unit.name}", f"Weight: {unit.scale:g}"]
            if unit.preprocess == "canny":
                fields += [f"Threshold A: {self.low_threshold:g}", f"Threshold B: {self.high_threshold:g}"]
            fields += [f"Guidance Start: {unit.start:g}", f"Guidance End: {unit.end:g}", f"Control Mode: {mode}"]
            texts.append(", ".join(fields))
        return tuple(texts)


NO_CONTROL = Control()


# --- the checks, each with the message a user sees -----------------------------------------------------------------
def check_control(folder, request) -> Control:
    """The request's ControlNet fields checked against the folder (ValueError saying the fix), images opened but not
    resized; `NO_CONTROL` without control_image."""
    r = request
    if r.control_image is None:
        extras = [name for name, given in (("controlnet", r.controlnet is not None),
                                           ("control_preprocess", r.control_preprocess is not None),
                                           ("guess_mode", r.guess_mode is True)) if given]
        if extras:
            raise ValueError(f"{' and '.join(extras)} configure ControlNet, which needs control_image= (one image per "
                             "ControlNet)")
        return NO_CONTROL
    available = folder.controlnets
    if not available:
        raise ValueError(f"{folder.path} has no ControlNet, which control_image= needs: {CONTROLNET_HINT}")
    names = _names(r.controlnet, available)
    count = len(names)
    images = list(r.control_image) if isinstance(r.control_image, (list, tuple)) else [r.control_image]
    if len(images) != count:
        raise ValueError(f"control_image has {len(images)} image(s) for {count} ControlNet(s) ({', '.join(names)}): "
                         "give one control image per ControlNet, in the order of controlnet=")
    scales = [_finite("controlnet_conditioning_scale", v) for v in _per_unit("controlnet_conditioning_scale",
                                                                                r.controlnet_conditioning_scale, names)]
    starts = [_fraction("control_guidance_start", v) for v in _per_unit("control_guidance_start", r.control_guidance_start, names)]
    ends = [_fraction("control_guidance_end", v) for v in _per_unit("control_guidance_end", r.control_guidance_end, names)]
    for name, start, end in zip(names, starts, ends):
        if start >= end:
            raise ValueError(f"control_guidance_start must be below control_guidance_end (fractions of the steps), got "
                             f"{start:g} and {end:g} for ControlNet {name!r}")
    processors = [_preprocessor(v) for v in _per_unit("control_preprocess", r.control_preprocess, names)]
    if not isinstance(r.guess_mode, (bool, np.bool_)):
        raise ValueError(f"guess_mode must be True or False, got {r.guess_mode!r}")  # noqa: TRY004 (the server: 422)
    low, high = (_threshold(what, v) for what, v in (("canny_low_threshold", r.canny_low_threshold),
                                                      ("canny_high_threshold", r.canny_high_threshold)))
    sources = [as_pil(image, "control_image") for image in images]
    pooled = [bool(available[name].config.get("global_pool_conditions", False)) for name in names]
    units = tuple(ControlUnit(name, source, scale, start, end, processor, pool)
                  for name, source, scale, start, end, processor, pool in zip(names, sources, scales, starts, ends, processors, pooled))
    # diffusers: guess mode is on whenever the (first) ControlNet pools its conditions
    return Control(units, bool(r.guess_mode) or pooled[0], low, high)


def check_crop(control: Control, image_size: tuple[int, int]) -> None:
    """With padding_mask_crop the control images are cropped with the image: they must have its size."""
    for unit in control.units:
        if unit.source.size != image_size:
            raise ValueError(
                f"padding_mask_crop crops the control image with the image, and the control image for {unit.name!r} is "
                f"{unit.source.width}x{unit.source.height} while the image is {image_size[0]}x{image_size[1]}: give "
                "control images of the image's size")


def checked_names(value, available: dict) -> list[str]:
    """`Pipeline.compile`'s and `check_fits`' `controlnet` (a name, a list, or None for none), checked against the folder."""
    return [] if value is None or (isinstance(value, (list, tuple)) and not value) else _names(value, available)


def _names(value, available: dict) -> list[str]:
    if value is None:
        if len(available) > 1:
            raise ValueError(f"this folder has {len(available)} ControlNets ({', '.join(available)}): say which with "
                             "controlnet= (a name or a list, one per control image)")
        return list(available)
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not names or not all(isinstance(name, str) for name in names):
        raise ValueError(f"controlnet must be a ControlNet name or a non-empty list of names, got {value!r:.80}")
    for name in names:
        if name not in available:
            raise ValueError(f"unknown ControlNet {name!r}: this folder has {', '.join(available) or 'none'}")
    return names


def _per_unit(field: str, value, names: list[str]) -> list:
    """A value for every ControlNet: a list of one per ControlNet, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(f"{field} has {len(value)} value(s) for {len(names)} ControlNet(s) ({', '.join(names)}): give "
                             "one value, or one per ControlNet")
        return list(value)
    return [value] * len(names)


def _finite(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number (1.0: the ControlNet as trained), got {value!r}")
    return float(value)


def _fraction(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 <= value <= 1:
        raise ValueError(f"{field} must be a fraction of the steps in [0, 1], got {value!r}")
    return float(value)


def _preprocessor(value) -> str:
    key = "none" if value is None else value.strip().lower() if isinstance(value, str) else None
    if key not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessor {value!r}: use one of {', '.join(PREPROCESSORS)}")
    return key


def _threshold(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a finite number >= 0 (an 8-bit gradient level, e.g. 100), got {value!r}")
    return float(value)


# --- residual inputs ---------------------------------------------------------------------------------------------
def residual_inputs(inputs) -> list[str]:
    """The UNet graph's residual inputs in order (down 0..N-1, then mid); [] for a plain UNet graph."""
    down = sorted((name for name in inputs if re.fullmatch(DOWN_RESIDUAL + r"\d+", name)), key=lambda n: int(n[len(DOWN_RESIDUAL):]))
    return down + [MID_RESIDUAL] if down else []


def residual_shapes(unet_config: dict, rows: int, height: int, width: int) -> list[tuple[int, ...]]:
    """Shapes of the UNet's down-block skip samples (the residuals, in order, then the mid block's) for latents of
    height x width: conv_in's output, each block's layers, each downsampler's (halving a side, rounding up)."""
    channels = list(unet_config.get("block_out_channels") or [320, 640, 1280, 1280])
    layers = unet_config.get("layers_per_block", 2)
    shapes = [(rows, channels[0], height, width)]
    for block, width_channels in enumerate(channels):
        count = layers[block] if isinstance(layers, (list, tuple)) else layers
        shapes += [(rows, width_channels, height, width)] * int(count)
        if block < len(channels) - 1:
            height, width = -(-height // 2), -(-width // 2)
            shapes.append((rows, width_channels, height, width))
    return shapes + [(rows, channels[-1], height, width)]


class ResidualZeros:
    """Zero residuals for a UNet call that runs no ControlNet (one set per latent shape, made once); {} for a plain UNet."""

    def __init__(self, inputs, unet_config: dict):
        self.names = residual_inputs(inputs)
        self.config = unet_config
        self._made: dict[tuple[int, ...], dict[str, NDArray[np.float32]]] = {}

    def __call__(self, sample_shape: tuple[int, ...]) -> dict[str, NDArray[np.float32]]:
        if not self.names:
            return {}
        zeros = self._made.get(sample_shape)
        if zeros is None:
            shapes = residual_shapes(self.config, sample_shape[0], *sample_shape[2:])
            if len(shapes) != len(self.names):
                raise ValueError(f"the UNet graph takes {len(self.names)} residuals and its config describes {len(shapes)}: "
                                 "re-export the model with `latentrt export ... --controlnet`")
            zeros = self._made[sample_shape] = {name: np.zeros(shape, np.float32) for name, shape in zip(self.names, shapes)}
        return zeros


# --- the step modifier -------------------------------------------------------------------------------------------
def control_array(image: Image.Image) -> NDArray[np.float32]:
    """(1, 3, H, W) float32 in [0, 1]: diffusers' control image (no normalisation to [-1, 1])."""
    return (np.asarray(image.convert("RGB")).astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None]


def keep_mask(calls: int, start: float, end: float) -> list[float]:
    """diffusers' controlnet_keep: 1 for the UNet calls inside [start, end) of the call count, else 0."""
    return [1.0 - float(i / calls < start or (i + 1) / calls > end) for i in range(calls)]


def unit_scales(unit: ControlUnit, guess_mode: bool, residuals: int) -> NDArray[np.float32]:
    """The factor of each residual (down 0..N-1, mid): the scale, or guess mode's logspace(-1, 0) ramp times it."""
    if guess_mode and not unit.pooled:
        return (np.logspace(-1, 0, residuals, dtype=np.float32) * np.float32(unit.scale)).astype(np.float32)
    return np.full(residuals, unit.scale, np.float32)


class ControlStep:
    """One generation's ControlNets (from `Pipeline.control_step`): `residuals(i, sample, t)` per UNet call.

    `sample` is what the UNet sees before a task adds its channels (the scaled latents, (2B, 4, h, w) with
    classifier-free guidance): a 9-channel inpainting UNet's ControlNets get the 4 latent channels, as diffusers'."""

    def __init__(self, control: Control, images: list[Image.Image], batch: int, do_cfg: bool, calls: int,
                 residual_names: list[str], observers, timestep: Callable[[Any, Any, NDArray], NDArray]):
        self.control = control
        self.cond_half = control.guess_mode and do_cfg  # ControlNets on the conditional half only
        repeat = 1 if self.cond_half or not do_cfg else 2
        self.images = [np.concatenate([np.repeat(control_array(image), batch, axis=0)] * repeat) for image in images]
        self.keep = [keep_mask(calls, unit.start, unit.end) for unit in control.units]
        self.scales = [unit_scales(unit, control.guess_mode, len(residual_names)) for unit in control.units]
        self.names = residual_names
        self.outputs = [f"{DOWN_OUTPUT}{k}" for k in range(len(residual_names) - 1)] + [MID_OUTPUT]
        self.observers, self.timestep = observers, timestep
        self.networks: list[tuple[Any, Callable, dict]] = []  # (network, run, constants) per unit: `attach`

    def constants(self, index: int, conditioning: dict[str, NDArray]) -> dict[str, NDArray]:
        """The feeds of unit `index` that stay the same over the generation: its image and the conditioning rows it
        sees (the conditional half in guess mode with guidance)."""
        rows = {k: v[len(v) // 2:] for k, v in conditioning.items()} if self.cond_half else conditioning
        return {**rows, "controlnet_cond": self.images[index]}

    def attach(self, network) -> None:
        """Unit len(networks)'s (network, run(**feeds), constants), as `Pipeline._conditioned` yields them."""
        self.networks.append(network)

    def residuals(self, i: int, sample: NDArray[np.float32], t) -> dict[str, NDArray[np.float32]] | None:
        """The UNet's residual feeds for call `i`: each kept ControlNet's outputs times its scales, summed; None when
        no ControlNet runs at this call (diffusers runs it at scale 0: zeros, the same UNet output)."""
        x = sample[len(sample) // 2:] if self.cond_half else sample  # (B, 4, h, w) in guess mode with guidance
        total = None
        for unit, (network, run, constants), scales, keep in zip(self.control.units, self.networks, self.scales, self.keep):
            if keep[i] * unit.scale == 0:
                continue
            out = self.observers.network(unit.network, run, {"sample": x, "timestep": self.timestep(network, t, x)}, constants)
            scaled = [to_host(out[name]) * scale for name, scale in zip(self.outputs, scales)]
            total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
        if total is None:
            return None
        if self.cond_half:  # the unconditional half gets no residual (diffusers adds zeros)
            total = [np.concatenate([np.zeros_like(value), value]) for value in total]
        return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in zip(self.names, total)}


def check_residual_count(names: Sequence[str], network, unit: str) -> None:
    """A ControlNet's outputs match the UNet's residual inputs (the export checks it; a folder edited by hand may not)."""
    outputs = set(network.outputs)
    missing = [f"{DOWN_OUTPUT}{k}" for k in range(len(names) - 1) if f"{DOWN_OUTPUT}{k}" not in outputs]
    if missing or MID_OUTPUT not in outputs or len(outputs) != len(names):
        raise ValueError(f"ControlNet {unit!r} gives {len(outputs)} residuals and the UNet takes {len(names)}: it does not "
                         f"fit this UNet; {CONTROLNET_HINT}")
