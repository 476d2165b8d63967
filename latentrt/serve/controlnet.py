"""ControlNet over HTTP: AUTOMATIC1111's ControlNet extension API (`alwayson_scripts.controlnet.args`, as
sd-webui-controlnet's clients send it) and the OpenAI route's `controlnet` extension field, both turned into the
pipeline's ControlNet arguments (diffusers' names: `controlnet`, `control_image`, `controlnet_conditioning_scale`,
`control_guidance_start`, `control_guidance_end`, `guess_mode`).

Each unit's preprocessor runs here, with the unit's own thresholds, when its image is decoded (off the event loop,
once the request is admitted): the pipeline gets the control map. What differs from A1111, by design:
- `control_mode` "ControlNet is more important" is diffusers' guess mode (A1111's own: ControlNet on the conditional
  half only, with a ramp of layer weights from about 0.1 to 1); "My prompt is more important" (A1111: the ramp on
  both halves, no counterpart in diffusers) is mapped to guess mode too. Guess mode applies to the whole call, so
  every enabled unit must ask for the same mode.
- the control image is resized to the output size ("Just Resize"); `resize_mode`, `processor_res`,
  `pixel_perfect`, `low_vram`, masks and `advanced_weighting` are accepted and ignored.
- a unit without `enabled` counts as enabled (older clients leave it out); `threshold_a`/`threshold_b` of canny
  outside [1, 255] (or -1) fall back to 100/200 as A1111 does.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from latentrt.runtime.control_preprocess import PREPROCESSORS, preprocess

from .inputs import Upload
from .state import ApiError

CANNY_DEFAULTS = (100, 200)  # A1111's canny sliders: low, high, each in [1, 255]
GUESS_MODES = {"balanced": False, "my prompt is more important": True, "controlnet is more important": True}
A1111_CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")


@dataclass
class ControlUpload(Upload):
    """A control image as sent, decoded as RGB and then passed through its preprocessor (`module`)."""

    module: str = "none"
    low_threshold: float = CANNY_DEFAULTS[0]
    high_threshold: float = CANNY_DEFAULTS[1]

    def decode(self, max_pixels: int | None) -> Image.Image:
        image = super().decode(max_pixels)
        try:
            return preprocess(self.module, image, low_threshold=self.low_threshold, high_threshold=self.high_threshold)
        except ValueError as error:
            raise ApiError(422, "validation", f"{self.field}: {error}") from None


@dataclass
class ControlUnits:
    """The enabled units of a request, in order, as the pipeline's arguments; `modules` says which ran a preprocessor."""

    names: list[str | None]
    images: list[ControlUpload]
    scales: list[float]
    starts: list[float]
    ends: list[float]
    guess_mode: bool = False
    keep_maps: list[bool] | None = None  # per unit: return the control map with the images (A1111's save_detected_map)

    def request_fields(self) -> dict[str, Any]:
        """The Request fields (lists, one entry per unit); `controlnet` None when no unit names one (the folder's one)."""
        if not self.images:
            return {}
        names = None if all(n is None for n in self.names) else self.names
        return {"controlnet": names, "control_image": list(self.images), "controlnet_conditioning_scale": self.scales,
                "control_guidance_start": self.starts, "control_guidance_end": self.ends, "guess_mode": self.guess_mode}


def folder_controlnets(pipe) -> list[str]:
    """The served folder's ControlNet names, sorted (none for a folder exported without --controlnet)."""
    return sorted(getattr(pipe.folder, "controlnets", None) or {})


def match_model(model: str | None, names: list[str], where: str) -> str | None:
    """A1111's `model` to one of the folder's ControlNet names: the text before " [" (A1111 appends the hash),
    compared case-insensitively; None or "None" with a single ControlNet: that one. An unknown name is passed on
    as given (the pipeline's check lists the folder's names)."""
    text = (model or "").split(" [", 1)[0].strip()
    if text.lower() in ("", "none"):
        if len(names) == 1:
            return names[0]
        listed = ", ".join(names) if names else "none: export it with `latentrt export ... --controlnet DIR`"
        raise ApiError(422, "validation", f"{where}.model: name the ControlNet to use (this model's: {listed}; GET "
                       "/controlnet/model_list)")
    by_lower = {n.lower(): n for n in names}
    return by_lower.get(text.lower(), text)


def check_module(module: str | None, where: str) -> str:
    key = (module or "none").strip().lower()
    if key not in PREPROCESSORS:
        raise ApiError(422, "validation", f"{where}: unknown preprocessor {module!r}: use one of "
                       f"{', '.join(PREPROCESSORS)} (GET /controlnet/module_list)")
    return key


def _number(value, where: str, default: float, low: float | None = None, high: float | None = None) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(422, "validation", f"{where} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(422, "validation", f"{where} must be in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _a1111_image(unit: dict, where: str) -> str | None:
    """The unit's base64 image from any of the shapes A1111's API takes: `image` as a string, {"image": ...,
    "mask": ...}, [image, mask] or [{"image": ...}] (the first), or the older `input_image`."""
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, (list, tuple)):
        image = image[0] if image else None
    if isinstance(image, dict):
        image = image.get("image")
    if image is not None and not isinstance(image, str):
        raise ApiError(422, "validation", f"{where}.image must be a base64 image (or {{\"image\": base64}}), got "
                       f"{type(image).__name__}")
    return image


def _a1111_thresholds(unit: dict, module: str, where: str) -> tuple[float, float]:
    low, high = CANNY_DEFAULTS
    if module != "canny":
        return low, high
    values = []
    for key, default in (("threshold_a", low), ("threshold_b", high)):
        value = _number(unit.get(key), f"{where}.{key}", default)
        values.append(value if 1 <= value <= 255 else default)  # A1111: out of its slider's range -> the default
    return values[0], values[1]


def a1111_units(alwayson_scripts: Any, pipe, init_image: str | None = None) -> ControlUnits:
    """`alwayson_scripts.controlnet.args` (the script's name in any case) as ControlUnits; disabled units dropped.
    A unit without an image uses the img2img init image (`init_image`), as A1111 does."""
    units = ControlUnits([], [], [], [], [], keep_maps=[])
    if not isinstance(alwayson_scripts, dict):
        return units
    script = next((v for k, v in alwayson_scripts.items() if str(k).lower() == "controlnet"), None)
    if script is None:
        return units
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise ApiError(422, "validation", "alwayson_scripts.controlnet.args must be a list of ControlNet units "
                       "(objects with image, module, model, weight, ...)")
    names = folder_controlnets(pipe)
    modes = set()
    for index, unit in enumerate(args):
        where = f"alwayson_scripts.controlnet.args[{index}]"
        if not isinstance(unit, dict):
            raise ApiError(422, "validation", f"{where} must be an object (a ControlNet unit), got {type(unit).__name__}")
        if unit.get("enabled", True) is False:
            continue
        module = check_module(unit.get("module"), f"{where}.module")
        image = _a1111_image(unit, where) or init_image
        if image is None:
            raise ApiError(422, "validation", f"{where}.image: the unit has no image (send the control image base64-encoded)")
        low, high = _a1111_thresholds(unit, module, where)
        start = _number(unit.get("guidance_start"), f"{where}.guidance_start", 0.0, 0.0, 1.0)
        end = _number(unit.get("guidance_end", unit.get("guidance")), f"{where}.guidance_end", 1.0, 0.0, 1.0)
        modes.add(_control_mode(unit.get("control_mode"), f"{where}.control_mode"))
        units.names.append(match_model(unit.get("model"), names, where))
        units.images.append(ControlUpload(image, f"{where}.image", "RGB", module=module, low_threshold=low,
                                          high_threshold=high))
        units.scales.append(_number(unit.get("weight"), f"{where}.weight", 1.0, 0.0, 2.0))
        units.starts.append(start)
        units.ends.append(end)
        units.keep_maps.append(module != "none" and unit.get("save_detected_map", True) is not False)
    if len(modes) > 1:
        raise ApiError(422, "validation", "alwayson_scripts.controlnet.args: every enabled unit must have the same "
                       "control_mode (guess mode applies to the whole call)")
    units.guess_mode = modes.pop() if modes else False
    return units


def _control_mode(value, where: str) -> bool:
    """A1111's control_mode (its name, or its index 0-2) -> guess mode."""
    if value is None:
        return False
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(A1111_CONTROL_MODES):
        value = A1111_CONTROL_MODES[value]
    if isinstance(value, str) and value.strip().lower() in GUESS_MODES:
        return GUESS_MODES[value.strip().lower()]
    raise ApiError(422, "validation", f"{where} must be one of {', '.join(map(repr, A1111_CONTROL_MODES))} (or 0-2), "
                   f"got {value!r}")


def openai_units(entries: list | None, guess_mode: bool, pipe) -> ControlUnits:
    """The OpenAI route's `controlnet` field: [{"name", "image", "scale", "start", "end", "preprocess",
    "low_threshold", "high_threshold"}] (pydantic checked the types) as ControlUnits."""
    units = ControlUnits([], [], [], [], [], guess_mode=guess_mode, keep_maps=[])
    for index, entry in enumerate(entries or []):
        where = f"controlnet[{index}]"
        module = check_module(entry.preprocess, f"{where}.preprocess")
        units.names.append(entry.name)
        units.images.append(ControlUpload(entry.image, f"{where}.image", "RGB", module=module,
                                          low_threshold=entry.low_threshold, high_threshold=entry.high_threshold))
        units.scales.append(entry.scale)
        units.starts.append(entry.start)
        units.ends.append(entry.end)
        units.keep_maps.append(True)
    return units


def unit_names(units: ControlUnits, pipe) -> list[str]:
    """Each unit's ControlNet name as the result's control maps are labelled (a unit that names none: the folder's one)."""
    names = folder_controlnets(pipe)
    return [n if n is not None else (names[0] if len(names) == 1 else "controlnet") for n in units.names]


def map_b64(image: Image.Image) -> str:
    """A control map as a base64 PNG (no generation parameters: it is an input)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
