"""ControlNets in a model folder: the `--controlnet [NAME=]DIR` sources checked against the UNet, and the UNet
written twice over ONE copy of its weights.

Layout (docs/model-folder.md):
- controlnet/<name>/model.onnx: sample, timestep, encoder_hidden_states, controlnet_cond[, text_embeds, time_ids]
  -> down_block_res_sample_0 .. _{N-1}, mid_block_res_sample (unscaled: the runtime applies the scale);
- unet/model_controlnet.onnx: the UNet's inputs + down_block_additional_residual_0 .. _{N-1},
  mid_block_additional_residual -> the UNet's outputs;
- unet/model.onnx: the plain UNet, derived from the residual graph by dropping each residual input and the one Add
  that consumes it. Both graphs point at the same unet/model.onnx_data (same tensors, same offsets): the weights
  are stored once.

Everything a source is checked for happens before any export work, so a bad `--controlnet` writes nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from latentrt.export.folder_io import EXTERNAL_DATA_NAME

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CONTROLNET_CLASS = "ControlNetModel"
RESIDUAL_GRAPH = "model_controlnet.onnx"  # beside unet/model.onnx
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# the config keys that decide the residuals' count and shapes, and the added conditioning (SDXL)
FITTING_KEYS = ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
                "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")


class ControlNetError(ValueError):
    """A --controlnet source does not fit; the message says what and how to fix it."""


@dataclass(frozen=True)
class ControlNetSource:
    name: str  # controlnet/<name> in the model folder
    path: Path
    config: dict[str, Any]


def parse_controlnet_arg(text: str) -> tuple[str | None, Path]:
    """`NAME=DIR` or `DIR` (NAME: the folder's name). A DIR that exists as written wins over a NAME= reading."""
    name, sep, rest = text.partition("=")
    if sep and NAME_PATTERN.fullmatch(name) and not Path(text).exists():
        return name, Path(rest)
    return None, Path(text)


def check_controlnets(requested: Iterable[tuple[str | None, Path] | str | Path], unet_config: Mapping[str, Any],
                      latent_channels: int, vae_scale: int) -> list[ControlNetSource]:
    """Each requested (name or None, folder) checked: a diffusers ControlNetModel folder with its weights, a valid
    and unique name, and a config that fits the UNet (residual count and shapes, cross-attention width, SDXL's added
    conditioning, latent channels, the control image's downsampling to the latents)."""
    sources: list[ControlNetSource] = []
    for item in requested:
        name, path = parse_controlnet_arg(str(item)) if isinstance(item, (str, Path)) else item
        path = Path(path)
        name = name if name is not None else path.resolve().name
        if not NAME_PATTERN.fullmatch(name):
            raise ControlNetError(f"ControlNet name {name!r} ({path}) is not usable: names are letters, digits, '_', "
                                  "'.', '-' and start with a letter or digit; give one with --controlnet NAME=DIR")
        if any(s.name == name for s in sources):
            raise ControlNetError(f"two ControlNets are named {name!r}: give each its own name with --controlnet NAME=DIR")
        config = _read_config(path)
        _check_fit(name, path, config, unet_config, latent_channels, vae_scale)
        sources.append(ControlNetSource(name, path, config))
    return sources


def _read_config(path: Path) -> dict[str, Any]:
    hint = "give a local diffusers ControlNetModel folder (ControlNetModel.save_pretrained: config.json + weights)"
    if not path.is_dir():
        raise ControlNetError(f"--controlnet {path}: not a folder: {hint}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ControlNetError(f"--controlnet {path}: cannot read config.json ({exc}): {hint}") from exc
    if not isinstance(config, dict) or config.get("_class_name") != CONTROLNET_CLASS:
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise ControlNetError(f"--controlnet {path} holds a {found}, not a {CONTROLNET_CLASS}: {hint}")
    if not any((path / f).is_file() and (path / f).stat().st_size > 0 for f in WEIGHT_FILES):
        raise ControlNetError(f"--controlnet {path} has no weights ({' or '.join(WEIGHT_FILES)}): {hint}")
    return config


def _normalised(config: Mapping[str, Any], key: str) -> Any:
    value = config.get(key)
    if key == "layers_per_block" and isinstance(value, list) and len(set(value)) == 1:
        return value[0]
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_fit(name: str, path: Path, config: Mapping[str, Any], unet: Mapping[str, Any], latent_channels: int,
               vae_scale: int) -> None:
    defaults = {"layers_per_block": 2, "addition_embed_type": None, "addition_time_embed_dim": None,
                "projection_class_embeddings_input_dim": None}
    wrong = []
    for key in FITTING_KEYS:
        mine, theirs = _normalised({**defaults, **config}, key), _normalised({**defaults, **unet}, key)
        if mine != theirs:
            wrong.append(f"{key} {mine} (the UNet's: {theirs})")
    if int(config.get("in_channels", 4)) != latent_channels:
        wrong.append(f"in_channels {config.get('in_channels')} (the latents have {latent_channels} channels; an "
                     "inpainting UNet's ControlNet takes the 4 latent channels too)")
    embedding = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
    if 2 ** (len(embedding) - 1) != vae_scale:
        wrong.append(f"a control image downsampled {2 ** (len(embedding) - 1)}x (conditioning_embedding_out_channels "
                     f"{list(embedding)}) where the VAE's latents are {vae_scale}x smaller than the image")
    if wrong:
        raise ControlNetError(
            f"ControlNet {name!r} ({path}) does not fit the UNet: {'; '.join(wrong)}. A ControlNet is trained for one "
            "base model family (SD 1.x, SD 2.x or SDXL): use one made for this model"
        )


# --- the residual UNet graph and the plain one over the same weights ---------------------------------------------


def strip_residual_inputs(model, residual_names: Iterable[str]) -> None:
    """Turn the residual UNet (an onnx.ModelProto) into the plain UNet in place: each residual input is removed
    with the Add that consumes it (through any Casts), whose other operand takes its place."""
    graph = model.graph
    for name in residual_names:
        add, chain = _consuming_add(graph, name)
        other = next(i for i in add.input if i != (chain[-1].output[0] if chain else name))
        produced = add.output[0]
        outputs = {o.name for o in graph.output}
        if produced in outputs:  # keep the graph output's name: the Add becomes an Identity
            add.op_type, add.domain = "Identity", ""
            del add.input[:]
            add.input.append(other)
        else:
            for node in graph.node:
                for k, value in enumerate(node.input):
                    if value == produced:
                        node.input[k] = other
            graph.node.remove(add)
        for node in chain:
            graph.node.remove(node)
        graph.input.remove(next(i for i in graph.input if i.name == name))
        for info in [v for v in graph.value_info if v.name in {produced, *(n.output[0] for n in chain)}]:
            graph.value_info.remove(info)


def _consuming_add(graph, name: str):
    """The one Add a residual input reaches (through Casts), and the Casts on the way."""
    chain = []
    value = name
    while True:
        users = [n for n in graph.node if value in n.input]
        if len(users) != 1:
            raise ValueError(f"the residual input {name} reaches {len(users)} nodes, not one Add: the UNet's graph is "
                             "not diffusers' UNet2DConditionModel")
        node = users[0]
        if node.op_type == "Add":
            return node, chain
        if node.op_type != "Cast":
            raise ValueError(f"the residual input {name} reaches a {node.op_type}, not an Add")
        chain.append(node)
        value = node.output[0]


def save_shared_unet(model, folder: Path, residual_names: Iterable[str]) -> list[str]:
    """Write ``model`` (the residual UNet, weights loaded) as ``folder``/model_controlnet.onnx with EVERY initializer
    in ``folder``/model.onnx_data, then the plain UNet as ``folder``/model.onnx pointing at that same file. Returns
    the file names."""
    import onnx

    folder = Path(folder)
    residual = folder / RESIDUAL_GRAPH
    onnx.save_model(model, str(residual), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA_NAME, size_threshold=0)  # all of them: a LoRA's map is then valid for both
    plain = onnx.load(str(residual), load_external_data=False)  # the graph with references to the data, no weights
    strip_residual_inputs(plain, residual_names)
    (folder / "model.onnx").write_bytes(plain.SerializeToString())
    return ["model.onnx", RESIDUAL_GRAPH, EXTERNAL_DATA_NAME]


__all__ = ["CONTROLNET_CLASS", "ControlNetError", "ControlNetSource", "NAME_PATTERN", "RESIDUAL_GRAPH",
           "check_controlnets", "parse_controlnet_arg", "save_shared_unet", "strip_residual_inputs"]
