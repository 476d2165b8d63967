"""Model families: how prompts become the UNet's conditioning, described once per family around the one loop.

A family is read from the folder (`family_for`), never passed by the user:
- `StableDiffusion` (SD 1.x, 2.x and their few-step and LCM variants): one CLIP text encoder, the UNet's
  `encoder_hidden_states` is its last hidden state (or, with clip_skip, an earlier one through the final layer
  norm, as diffusers' StableDiffusionPipeline.encode_prompt);
- `StableDiffusionXL` (base, refiner, SDXL-Turbo): two text encoders (the refiner has only the second) whose
  penultimate hidden states are concatenated, the second's pooled projection as `text_embeds`, and `time_ids`
  from the original size, crop and target size (the refiner: an aesthetic score in place of the target size),
  as diffusers' StableDiffusionXLPipeline.

Across families, a UNet with a `timestep_cond` input (LCM, `time_cond_proj_dim`) takes the guidance scale as an
embedding (`guidance_embedding`) instead of classifier-free guidance, as diffusers does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from latentrt.runtime.folder import REEXPORT_HINT, ModelFolder
from latentrt.runtime.tokenizer import ClipTokenizer

RunNetwork = Callable[[str, dict[str, NDArray]], dict[str, NDArray]]  # (network name, feeds) -> outputs


@dataclass(frozen=True)
class Prompts:
    """One call's text: prompts and negatives (one per prompt), and what the call asked for."""

    prompts: list[str]
    negatives: list[str]
    negative_given: bool  # False when the caller left negative_prompt out (SDXL may then use zeros)
    do_cfg: bool
    num_images: int
    clip_skip: int | None = None


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's micro-conditioning (diffusers' arguments; None = diffusers' default)."""

    height: int
    width: int
    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5


class StableDiffusion:
    """SD 1.x / 2.x: the UNet is conditioned on one CLIP text encoder's hidden states."""

    name = "stable-diffusion"
    text_encoders = ("text_encoder",)
    is_refiner = False  # an image to image only model (SDXL's refiner)
    skip_offset = 0  # how many layers below the last the family already reads without clip_skip

    def __init__(self, folder: ModelFolder):
        self.folder = folder
        self.tokenizers = {"text_encoder": ClipTokenizer.from_folder(folder.path / "tokenizer")}

    @property
    def tokenizer(self) -> ClipTokenizer:
        return self.tokenizers[self.text_encoders[-1]]

    def conditioning(self, run: RunNetwork, text: Prompts, size: SizeConditioning) -> dict[str, NDArray[np.float32]]:
        """The UNet's inputs besides sample and timestep; rows are [negatives..., prompts...] with CFG, each
        prompt's rows repeated num_images times (diffusers' order)."""
        texts = (text.negatives + text.prompts) if text.do_cfg else text.prompts
        # clip_skip 0 skips nothing: the graph's own last_hidden_state, exactly as without clip_skip (diffusers takes
        # the hidden states + final layer norm path for 0, the same values up to float rounding)
        outputs = self._encode(run, "text_encoder", texts, needs_hidden=bool(text.clip_skip))
        hidden = _last_hidden_state(outputs)
        if text.clip_skip:  # diffusers applies clip_skip to the prompts only, never to the negatives
            n = len(text.prompts)
            layers = self._hidden_states(outputs)
            skipped = _final_layer_norm(self.folder, layers[-(text.clip_skip + 1)][-n:])
            hidden = np.concatenate([hidden[:-n], skipped]) if text.do_cfg else skipped
        return {"encoder_hidden_states": _per_image(hidden, text.num_images)}

    def check_clip_skip(self, clip_skip) -> None:
        """clip_skip as diffusers defines it: 1 = the penultimate layer's output; 0 or None = the last (the same
        path, so 0 and None give identical images; A1111's "CLIP skip 1" is 0 here)."""
        if clip_skip is None:
            return
        layers = self._layers()
        largest = layers - self.skip_offset
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, (int, np.integer)) or not 0 <= clip_skip <= largest:
            raise ValueError(
                f"clip_skip must be a whole number from 0 to {largest} for this model (its text encoder has {layers} "
                f"layers; 1 uses the penultimate layer's output), got {clip_skip!r}"
            )

    def _layers(self) -> int:
        """The text encoders' depth (the shallower one bounds clip_skip where there are two)."""
        return min(int(self.folder.components[name].config.get("num_hidden_layers", 12)) for name in self.text_encoders)

    def _encode(self, run: RunNetwork, name: str, texts: list[str], needs_hidden: bool) -> dict[str, NDArray]:
        ids = self.tokenizers[name].encode(texts)  # (N, L) int64
        outputs = run(name, {"input_ids": ids})
        if needs_hidden and "hidden_states.0" not in outputs:
            raise ValueError(
                f"{self.folder.path}'s {name} does not output its hidden states, which clip_skip (and SDXL) needs: "
                f"{REEXPORT_HINT}"
            )
        return outputs

    def _hidden_states(self, outputs: dict[str, NDArray]) -> list[NDArray[np.float32]]:
        count = sum(1 for key in outputs if key.startswith("hidden_states."))
        return [outputs[f"hidden_states.{i}"].astype(np.float32, copy=False) for i in range(count)]

    def unet_input_shapes(self, texts: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the family's UNet inputs besides sample and timestep (for ahead-of-time compilation)."""
        return {"encoder_hidden_states": (texts, self.tokenizer.max_length, self.folder.unet.cross_attention_dim)}


class StableDiffusionXL(StableDiffusion):
    """SDXL base and refiner: two text encoders (the refiner: the second only), pooled embeddings and time ids."""

    name = "stable-diffusion-xl"
    skip_offset = 1  # SDXL reads the penultimate layer already

    def __init__(self, folder: ModelFolder):
        self.folder = folder
        missing = [part for part in ("text_encoder_2", "tokenizer_2") if not (folder.path / part).is_dir()]
        if missing:
            raise ValueError(
                f"{folder.path} is an SDXL folder (its UNet takes text_embeds and time_ids) but lacks "
                f"{' and '.join(missing)}: {REEXPORT_HINT} from the whole StableDiffusionXLPipeline folder"
            )
        self.text_encoders = (("text_encoder",) if "text_encoder" in folder.components else ()) + ("text_encoder_2",)
        tokenizer_folders = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
        self.tokenizers = {name: ClipTokenizer.from_folder(folder.path / tokenizer_folders[name]) for name in self.text_encoders}
        index = folder.model_index
        self.force_zeros_for_empty_prompt = bool(index.get("force_zeros_for_empty_prompt", True))
        self.requires_aesthetics_score = bool(index.get("requires_aesthetics_score", False))
        self.is_refiner = self.requires_aesthetics_score

    def conditioning(self, run: RunNetwork, text: Prompts, size: SizeConditioning) -> dict[str, NDArray[np.float32]]:
        zeros = text.do_cfg and not text.negative_given and self.force_zeros_for_empty_prompt
        encode_negatives = text.do_cfg and not zeros
        texts = (text.negatives + text.prompts) if encode_negatives else text.prompts
        n = len(text.prompts)
        hidden, pooled = [], None
        for name in self.text_encoders:
            outputs = self._encode(run, name, texts, needs_hidden=True)
            layers = self._hidden_states(outputs)
            chosen = layers[-2]
            if text.clip_skip:  # diffusers: the prompts only, never the negatives (0: the penultimate, as without)
                chosen = np.concatenate([chosen[:-n], layers[-(text.clip_skip + 2)][-n:]]) if encode_negatives else layers[-(text.clip_skip + 2)]
            hidden.append(chosen)
            if "text_embeds" in outputs:  # the projection of the second encoder (CLIPTextModelWithProjection)
                pooled = outputs["text_embeds"].astype(np.float32, copy=False)
        if pooled is None:
            raise ValueError(f"{self.folder.path}'s text_encoder_2 has no text_embeds output: {REEXPORT_HINT}")
        states = np.concatenate(hidden, axis=-1)
        if zeros:  # diffusers' force_zeros_for_empty_prompt: no negative prompt -> zero conditioning
            states, pooled = np.concatenate([np.zeros_like(states), states]), np.concatenate([np.zeros_like(pooled), pooled])
        positive, negative = self.time_ids(size)
        rows = len(text.prompts) * text.num_images
        time_ids = np.repeat(positive[None], rows, axis=0)
        if text.do_cfg:
            time_ids = np.concatenate([np.repeat(negative[None], rows, axis=0), time_ids])
        return {
            "encoder_hidden_states": _per_image(states, text.num_images),
            "text_embeds": _per_image(pooled, text.num_images),
            "time_ids": time_ids.astype(np.float32),
        }

    def time_ids(self, size: SizeConditioning) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(positive, negative) time ids as diffusers' _get_add_time_ids (the negative equals the positive on
        the base model; the refiner's differ by the aesthetic score)."""
        original = tuple(size.original_size or (size.height, size.width))
        target = tuple(size.target_size or (size.height, size.width))
        crop = tuple(size.crops_coords_top_left)
        if self.requires_aesthetics_score:
            positive = original + crop + (size.aesthetic_score,)
            negative = original + crop + (size.negative_aesthetic_score,)
        else:
            positive = negative = original + crop + target
        expected = self.time_ids_width
        if expected is not None and len(positive) != expected:
            raise ValueError(
                f"this UNet takes {expected} time ids but the model_index says requires_aesthetics_score="
                f"{self.requires_aesthetics_score} ({len(positive)} ids): the folder's model_index.json is wrong; {REEXPORT_HINT}"
            )
        return np.asarray(positive, np.float32), np.asarray(negative, np.float32)

    @property
    def time_ids_width(self) -> int | None:
        entry = self.folder.components["unet"].manifest or {}
        for tensor in entry.get("inputs", []):
            if tensor["name"] == "time_ids" and isinstance(tensor["axes"][-1], int):
                return tensor["axes"][-1]
        return 5 if self.requires_aesthetics_score else 6

    def unet_input_shapes(self, texts: int) -> dict[str, tuple[int, ...]]:
        projection = int(self.folder.components["text_encoder_2"].config.get("projection_dim", 1280))
        return {
            **super().unet_input_shapes(texts),
            "text_embeds": (texts, projection),
            "time_ids": (texts, self.time_ids_width),
        }


def is_sdxl(unet_config: dict, model_index: dict) -> bool:
    """SDXL's UNet takes text_embeds and time_ids (`addition_embed_type` "text_time" in its config), or the
    model_index names a StableDiffusionXL* pipeline; for ONNX folders and diffusers folders alike."""
    return unet_config.get("addition_embed_type") == "text_time" or "XL" in str(model_index.get("_class_name", ""))


def family_for(folder: ModelFolder) -> StableDiffusion:
    """The folder's family, read from its UNet config and model_index (`is_sdxl`)."""
    if is_sdxl(folder.components["unet"].config, folder.model_index):
        return StableDiffusionXL(folder)
    return StableDiffusion(folder)


def guidance_embedding(guidance_scale: float, dim: int, rows: int) -> NDArray[np.float32]:
    """LCM's `timestep_cond`: diffusers' get_guidance_scale_embedding of w = guidance_scale - 1, (rows, dim)."""
    w = np.float32((guidance_scale - 1.0) * 1000.0)
    half = dim // 2
    scale = np.float32(math.log(10000.0) / (half - 1))
    freqs = np.exp(np.arange(half, dtype=np.float32) * -scale)
    angles = w * freqs
    emb = np.concatenate([np.sin(angles), np.cos(angles)])
    if dim % 2:
        emb = np.concatenate([emb, np.zeros(1, np.float32)])
    return np.repeat(emb[None].astype(np.float32), rows, axis=0)


def _last_hidden_state(outputs: dict[str, NDArray]) -> NDArray[np.float32]:
    hidden = outputs.get("last_hidden_state", next(iter(outputs.values())))
    return hidden.astype(np.float32, copy=False)  # (N, L, D)


def _final_layer_norm(folder: ModelFolder, hidden: NDArray[np.float32]) -> NDArray[np.float32]:
    """The text encoder's final LayerNorm, in NumPy, with the weights the exporter saved beside the graph."""
    path: Path = folder.path / "text_encoder" / "final_layer_norm.npz"
    if not path.is_file():
        raise ValueError(f"{folder.path} lacks text_encoder/final_layer_norm.npz, which clip_skip needs: {REEXPORT_HINT}")
    with np.load(path) as norm:
        weight, bias, eps = norm["weight"], norm["bias"], float(norm["eps"])
    mean = hidden.mean(axis=-1, keepdims=True)
    var = ((hidden - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((hidden - mean) / np.sqrt(var + np.float32(eps)) * weight + bias).astype(np.float32)


def _per_image(rows: NDArray, num_images: int) -> NDArray:
    """Each row repeated num_images times, consecutively (a prompt's images stay together)."""
    return np.repeat(rows, num_images, axis=0)


__all__: Sequence[str] = ["Prompts", "SizeConditioning", "StableDiffusion", "StableDiffusionXL", "family_for", "guidance_embedding", "is_sdxl"]
