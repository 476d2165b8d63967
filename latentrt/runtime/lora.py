"""LoRA adapters merged into the networks' weights when a session is created (never written to the folder).

A LoRA file (safetensors, read with its NumPy API) holds, per adapted layer, a down (A) and an up (B) matrix and
optionally an alpha; the layer's weight becomes W + scale * (alpha / rank) * B @ A (a Conv's factors reshaped).
Two key styles are read:

- diffusers / PEFT: `unet.<module>.lora_A.weight`, `.lora_B.weight` (or the older `.lora.down.weight` /
  `.lora.up.weight`), `text_encoder.` / `text_encoder_2.` for the text encoders; alpha from `<module>.alpha`
  when present, else from the file's `lora_adapter_metadata` (diffusers' `lora_alpha` and `r`), else alpha = rank.
- kohya: `lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`, `.alpha`; `lora_te_` (`lora_te1_`,
  `lora_te2_` for SDXL) for the text encoders.

Which ONNX initializer holds each layer's weight is read from the manifest (`weights`, written at export by
content matching), so a key maps exactly; a folder without that map (optimum's) is refused with the fix
(re-export with latentrt). Keys that match no layer are reported, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

LORA_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "unet_shallow")
_PEFT_PREFIXES = {"unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}
# networks holding copies of another's weights under the same names (DeepCache's shallow UNet): adapted alike
_SHARES_WEIGHTS_OF = {"unet_shallow": "unet"}
_KOHYA_PREFIXES = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"}
_DOWN_UP = (("lora_A.weight", "lora_B.weight"), ("lora.down.weight", "lora.up.weight"),
            ("lora_down.weight", "lora_up.weight"))


@dataclass(frozen=True)
class StoredWeight:
    """An initializer's LoRA-merged values and where the file keeps its bytes (the manifest's weight map): `file`
    "model.onnx" (inline) or its external data file, at byte `offset`."""

    values: NDArray
    file: str
    offset: int

    @property
    def external(self) -> bool:
        return self.file != "model.onnx"


class LoraError(ValueError):
    """A LoRA that cannot be applied: not safetensors, empty, for another architecture, or matching nothing."""


@dataclass(frozen=True)
class Lora:
    """One adapter and its scale: `Lora("style.safetensors", 0.8)`; tuples `(path, scale)` are accepted too."""

    path: Path
    scale: float = 1.0

    @classmethod
    def of(cls, value) -> "Lora":
        if isinstance(value, Lora):
            return value
        if isinstance(value, (str, Path)):
            return cls(Path(value), 1.0)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            path, scale = value
            if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) or not math.isfinite(scale):
                raise LoraError(f"a LoRA's scale must be a finite number, got {scale!r} for {path}")
            return cls(Path(path), float(scale))
        raise LoraError(f"a LoRA is a path or a (path, scale) pair, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> "Lora":
        """The CLI's FILE[:SCALE]."""
        path, sep, scale = text.rpartition(":")
        if not sep or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", scale):
            return cls(Path(text), 1.0)
        return cls.of((path, float(scale)))


@dataclass
class LoraPatch:
    """The merged weights per network: {component: {initializer: StoredWeight (its layout and dtype)}}."""

    weights: dict[str, dict[str, StoredWeight]] = field(default_factory=dict)
    matched: int = 0  # adapted layers
    unmatched: list[str] = field(default_factory=list)  # key stems of the files that matched no layer


def read_lora(path: Path) -> tuple[dict[str, NDArray], dict[str, str]]:
    """The tensors (as float32) and the metadata of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise LoraError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key).astype(np.float32) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise LoraError(f"{path} is not a safetensors file ({error}); LoRAs are read from .safetensors only") from None
    if not tensors:
        raise LoraError(f"{path} holds no tensors: an empty LoRA")
    return tensors, metadata


def _split(key: str) -> tuple[str, str, str] | None:
    """(component, module path as the file names it, part) for a LoRA key; part is "down", "up" or "alpha"."""
    for down, up in _DOWN_UP:
        for part, suffix in (("down", down), ("up", up)):
            if key.endswith("." + suffix):
                stem = key[: -len(suffix) - 1]
                break
        else:
            continue
        break
    else:
        if not key.endswith(".alpha"):
            return None
        part, stem = "alpha", key[: -len(".alpha")]
    if stem.startswith("lora_"):  # kohya: lora_unet_down_blocks_0_..., lora_te1_text_model_...
        prefix, _, rest = stem.partition("_")
        head, _, rest = rest.partition("_")
        component = _KOHYA_PREFIXES.get(f"{prefix}_{head}")
        return (component, rest, part) if component else None
    head, _, rest = stem.partition(".")
    component = _PEFT_PREFIXES.get(head)
    return (component, rest, part) if component else None


def _alpha_from_metadata(metadata: dict[str, str], component: str) -> float | None:
    """diffusers' `lora_adapter_metadata`: {"<component>.lora_alpha": ..., "<component>.r": ...} (or nested)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    config = data.get(component) if isinstance(data.get(component), dict) else {
        k.split(".", 1)[1]: v for k, v in data.items() if k.startswith(component + ".")}
    alpha = config.get("lora_alpha")
    return float(alpha) if isinstance(alpha, (int, float)) else None


def _lookup(component: str, weights: dict[str, list]) -> dict[str, str]:
    """Every way a file may name a layer -> its parameter name in the manifest map."""
    names: dict[str, str] = {}
    for param in weights:
        module = param[: -len(".weight")]
        variants = [module]
        if component.startswith("text_encoder"):  # transformers 5 names CLIP's layers without "text_model."
            base = module.removeprefix("text_model.")
            variants = [base, "text_model." + base]
        for variant in variants:
            names[variant] = param
            names[variant.replace(".", "_")] = param  # kohya
    return names


def build_patch(loras: list[Lora], manifest_weights: dict[str, dict[str, list]], read_weight) -> LoraPatch:
    """Merge `loras` into the weights they adapt.

    manifest_weights: {component: the manifest's `weights` map}; read_weight(component, file, offset, dtype, shape)
    returns an initializer's current values (float32 or float16, in its own layout)."""
    patch = LoraPatch()
    deltas: dict[tuple[str, str], NDArray] = {}  # (component, param) -> summed delta, diffusers layout
    lookups = {component: _lookup(component, weights) for component, weights in manifest_weights.items()}
    for lora in loras:
        tensors, metadata = read_lora(lora.path)
        layers: dict[tuple[str, str], dict[str, NDArray]] = {}
        ignored = []
        for key, value in tensors.items():
            split = _split(key)
            if split is None:
                ignored.append(key)
                continue
            component, module, part = split
            layers.setdefault((component, module), {})[part] = value
        matched_here = 0
        for (component, module), parts in layers.items():
            if component not in manifest_weights:
                patch.unmatched.append(f"{component}.{module}")
                continue
            param = lookups[component].get(module)
            if param is None or "down" not in parts or "up" not in parts:
                patch.unmatched.append(f"{component}.{module}")
                continue
            down, up = parts["down"], parts["up"]
            rank = down.shape[0]
            alpha = float(parts["alpha"].reshape(-1)[0]) if "alpha" in parts else _alpha_from_metadata(metadata, component)
            factor = lora.scale * ((alpha / rank) if alpha is not None else 1.0)
            delta = _product(up, down, f"{lora.path.name}: {component}.{module}")
            key = (component, param)
            deltas[key] = deltas.get(key, 0) + np.float32(factor) * delta
            matched_here += 1
        if matched_here == 0:
            raise LoraError(f"{lora.path} adapts no layer of this model: none of its {len(tensors)} keys names a "
                            f"layer of {', '.join(sorted(manifest_weights))} (first keys: {', '.join(list(tensors)[:3])})")
        patch.matched += matched_here
        patch.unmatched.extend(ignored)
    for (owner, param), delta in list(deltas.items()):
        for copy, source in _SHARES_WEIGHTS_OF.items():
            if source == owner and param in manifest_weights.get(copy, {}):
                deltas[(copy, param)] = delta
    for (component, param), delta in deltas.items():
        entry = manifest_weights[component][param]
        if len(entry) != 6:
            raise LoraError(f"the weight map of {component} predates byte offsets: re-export the model with `latentrt "
                            "export` (or rerun weight_map.add_weight_maps) to apply LoRAs")
        initializer, layout, dtype, shape, file, offset = entry
        current = read_weight(component, file, offset, dtype, shape)
        shaped = delta.T if layout == "transposed" else delta
        if tuple(shaped.shape) != tuple(current.shape):
            raise LoraError(
                f"the LoRA's layer {component}.{param[: -len('.weight')]} has shape {tuple(delta.shape)} but the model's "
                f"weight is {tuple(current.shape if layout != 'transposed' else current.T.shape)}: a LoRA for another "
                "architecture")
        merged = (current.astype(np.float32) + shaped).astype(current.dtype)
        patch.weights.setdefault(component, {})[initializer] = StoredWeight(merged, file, int(offset))
    if patch.unmatched:
        logger.warning("%d LoRA layer(s) matched no layer of the model and were not applied, e.g. %s",
                       len(patch.unmatched), ", ".join(patch.unmatched[:3]))
    return patch


def _product(up: NDArray, down: NDArray, where: str) -> NDArray:
    """B @ A for Linear (out, r) @ (r, in), and for Conv (out, r, 1, 1) x (r, in, kh, kw) -> (out, in, kh, kw)."""
    if up.ndim == 2 and down.ndim == 2:
        if up.shape[1] != down.shape[0]:
            raise LoraError(f"{where}: up {up.shape} and down {down.shape} do not multiply")
        return up @ down
    if up.ndim == 4 and down.ndim == 4:
        out, rank = up.shape[:2]
        if down.shape[0] != rank:
            raise LoraError(f"{where}: up {up.shape} and down {down.shape} do not multiply")
        return (up.reshape(out, rank) @ down.reshape(rank, -1)).reshape(out, *down.shape[1:])
    raise LoraError(f"{where}: up {up.shape} and down {down.shape} are neither Linear (2-D) nor Conv (4-D) factors")


def read_weight(folder: Path, file: str, offset: int, dtype: str, shape: list[int]) -> NDArray:
    """An initializer's values from its raw little-endian bytes (the manifest's weight map says where)."""
    path = Path(folder) / file
    count = int(np.prod(shape)) if shape else 1
    values = np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=int(offset))
    if values.size != count:
        raise LoraError(f"{path} ends before the weight the manifest places at byte {offset}: the folder is truncated "
                        "or was changed after export; re-export it")
    return values.astype(np.dtype(dtype)).reshape(shape)
