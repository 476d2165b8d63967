"""One description per exported component: names, dtypes, dynamic axes, sample inputs, wrapper.

The same `ComponentSpec` drives the export (input/output names and dynamic axes), the
validation (sample inputs fed to both PyTorch and ONNX Runtime) and the manifest the runtime
trusts. Graph conventions follow optimum's exporter so folders move between the two tools:
text_encoder(input_ids) -> last_hidden_state, pooler_output, hidden_states.0 .. hidden_states.N;
text_encoder_2 (SDXL, with projection)(input_ids) -> text_embeds, last_hidden_state, hidden_states.0 .. N;
unet(sample, timestep, encoder_hidden_states[, text_embeds, time_ids][, timestep_cond]) -> out_sample;
vae_decoder(latent_sample) -> sample; vae_encoder(sample) -> latent_parameters.

hidden_states.0 is the embeddings and hidden_states.N the last layer's output before the final layer norm
(transformers' output_hidden_states=True); the norm itself is saved as final_layer_norm.npz beside the graph.
The text and UNet specs depend on the source's configs (layer count, SDXL's and LCM's extra inputs), so they
are built per export by `text_encoder_spec` and `unet_spec`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from latentrt.export import deepcache


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    axes: tuple[str | int, ...]  # a str is a dynamic axis name, an int a fixed size


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # folder name in the ONNX model folder
    source: str  # diffusers subfolder it comes from
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    wrap: Callable[[nn.Module], nn.Module]
    sample_inputs: Callable[[nn.Module, np.random.Generator], dict[str, np.ndarray]]
    # writes files beside the graph from the source model (folder, model) -> their names, for the manifest
    extra_files: Callable[[Path, nn.Module], list[str]] | None = None

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for tensor in self.inputs + self.outputs:
            named = {i: a for i, a in enumerate(tensor.axes) if isinstance(a, str)}
            if named:
                axes[tensor.name] = named
        return axes


# --- wrappers: plain tensors in, plain tensors out, in the order of the spec -------------------
# Each keeps the wrapped diffusers/transformers model as `.model` (its config sizes sample inputs).


class _TextEncoder(nn.Module):
    """CLIPTextModel -> last_hidden_state, pooler_output, *hidden_states;
    CLIPTextModelWithProjection (projection=True) -> text_embeds, last_hidden_state, *hidden_states."""

    def __init__(self, model: nn.Module, projection: bool = False):
        super().__init__()
        self.model = model
        self.projection = projection

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, output_hidden_states=True, return_dict=True)
        first = (out.text_embeds, out.last_hidden_state) if self.projection else (out.last_hidden_state, out.pooler_output)
        return (*first, *out.hidden_states)


class _UNet(nn.Module):
    """Positional graph inputs -> diffusers' keywords: text_embeds and time_ids go in added_cond_kwargs.
    With `cache_branch` (DeepCache), the output is (out_sample, deepcache_feature) at that split."""

    def __init__(self, model: nn.Module, extra: tuple[str, ...] = (), cache_branch: int | None = None):
        super().__init__()
        self.model = model
        self.extra = extra  # names of the inputs after encoder_hidden_states, in graph order
        self.split = None if cache_branch is None else deepcache.locate_split(model, cache_branch)

    def keywords(self, extra: tuple) -> dict:
        named = dict(zip(self.extra, extra))
        added = {k: named[k] for k in ("text_embeds", "time_ids") if k in named}
        return {"timestep_cond": named.get("timestep_cond"), "added_cond_kwargs": added or None}

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        if self.split is None:
            return self.model(sample, timestep, encoder_hidden_states, **self.keywords(extra), return_dict=False)[0]
        with deepcache.FeatureTap(self.model, self.split) as tap:
            out = self.model(sample, timestep, encoder_hidden_states, **self.keywords(extra), return_dict=False)[0]
        return out, tap.value


class _ShallowUNet(_UNet):
    """DeepCache's shallow UNet: (sample, timestep, encoder_hidden_states, *extra, deepcache_feature) -> out_sample."""

    def forward(self, sample, timestep, encoder_hidden_states, *extra_and_feature):
        *extra, feature = extra_and_feature
        return deepcache.shallow_forward(self.model, self.split, sample, timestep, encoder_hidden_states, feature,
                                         **self.keywords(tuple(extra)))

    def full_unet(self) -> _UNet:
        """The plain UNet wrapper around the same model: the output the shallow UNet must reproduce."""
        return _UNet(self.model, self.extra)


class _VaeDecoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, latent_sample):
        return self.model.decode(latent_sample, return_dict=False)[0]


class _VaeEncoder(nn.Module):
    """Outputs the diagonal Gaussian's parameters (mean, logvar); the runtime samples with NumPy."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sample):
        moments = self.model.encoder(sample)
        if self.model.quant_conv is not None:
            moments = self.model.quant_conv(moments)
        return moments


# --- sample inputs, sized from each model's own config -----------------------------------------


def _text_inputs(model: nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg = model.config
    ids = rng.integers(0, cfg.vocab_size - 1, size=(2, cfg.max_position_embeddings), dtype=np.int64)
    ids[:, 0] = cfg.bos_token_id if cfg.bos_token_id is not None else 0
    ids[:, -1] = cfg.vocab_size - 1  # CLIP pools at the highest id (the end-of-text token)
    return {"input_ids": ids}


def _latent_hw(unet_config) -> tuple[int, int]:
    """A latent size NOT divisible by the UNet's total downsampling, kept small for CPU validation.

    diffusers' UNet takes a Python branch on that divisibility and, when it does not divide, passes
    explicit sizes to its upsamplers. Tracing through that branch makes the exported graph take any
    multiple of the VAE factor (e.g. 520 px for SD 1.5), not only multiples of 64.
    """
    factor = 2 ** (len(unet_config.block_out_channels) - 1)
    side = min(int(unet_config.sample_size), 32)
    if factor > 1 and side % factor == 0:
        side += factor // 2
    return side, side


SAMPLE_SEQUENCE_LENGTH = 77  # any length works (dynamic axis); CLIP's is the common case


def _unet_inputs(model: nn.Module, rng: np.random.Generator, extra: tuple[TensorSpec, ...] = ()) -> dict[str, np.ndarray]:
    cfg = model.config
    h, w = _latent_hw(cfg)
    inputs = {
        "sample": rng.standard_normal((2, cfg.in_channels, h, w), dtype=np.float32),
        "timestep": np.array([981.0, 21.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, SAMPLE_SEQUENCE_LENGTH, cfg.cross_attention_dim), dtype=np.float32),
    }
    inputs.update(_extra_inputs(rng, extra, h, w))
    return inputs


def _extra_inputs(rng: np.random.Generator, extra: tuple[TensorSpec, ...], h: int, w: int) -> dict[str, np.ndarray]:
    """Sample values of the UNet's extra inputs (SDXL's text_embeds and time_ids, LCM's timestep_cond), batch 2."""
    inputs = {}
    for tensor in extra:
        width = tensor.axes[-1]
        if tensor.name == "time_ids" and width in (5, 6):
            # as the pipelines pass them: original size, crop, then the target size (base) or the aesthetic
            # score, 2.5 for the negative row and 6 for the positive (refiner)
            size = [h * 8.0, w * 8.0]
            rows = [size + [0.0, 0.0] + (size if width == 6 else [score]) for score in (2.5, 6.0)]
            inputs["time_ids"] = np.array(rows, dtype=np.float32)
        elif tensor.name == "timestep_cond":  # a sinusoidal guidance embedding lies in [-1, 1]
            inputs["timestep_cond"] = rng.uniform(-1.0, 1.0, size=(2, width)).astype(np.float32)
        else:
            inputs[tensor.name] = rng.standard_normal((2, width), dtype=np.float32)
    return inputs


def _vae_scale(vae_config) -> int:
    return 2 ** (len(vae_config.block_out_channels) - 1)


def _decoder_inputs(model: nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg = model.config
    side = min(int(cfg.sample_size) // _vae_scale(cfg), 32)
    return {"latent_sample": rng.standard_normal((1, cfg.latent_channels, side, side), dtype=np.float32)}


def _encoder_inputs(model: nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg = model.config
    side = min(int(cfg.sample_size), 256)
    image = rng.uniform(-1.0, 1.0, size=(1, cfg.in_channels, side, side)).astype(np.float32)
    return {"sample": image}


def _save_final_layer_norm(folder: Path, model: nn.Module) -> list[str]:
    """The CLIP text model's final LayerNorm as final_layer_norm.npz (weight, bias, eps): clip_skip takes an
    earlier hidden state through it, which the NumPy runtime then applies itself."""
    norm = getattr(model, "text_model", model).final_layer_norm  # transformers 5's CLIPTextModel has no text_model
    np.savez(
        folder / "final_layer_norm.npz",
        weight=norm.weight.detach().float().numpy(),
        bias=norm.bias.detach().float().numpy(),
        eps=np.float32(norm.eps),
    )
    return ["final_layer_norm.npz"]


def text_encoder_spec(name: str, config: Mapping[str, Any], projection: bool = False) -> ComponentSpec:
    """A CLIP text encoder with ``config["num_hidden_layers"]`` layers (hidden_states.0 .. N as outputs);
    ``projection``: a CLIPTextModelWithProjection (SDXL's text_encoder_2), whose first output is text_embeds."""
    hidden = ("batch_size", "sequence_length", "hidden_size")
    first = (
        (TensorSpec("text_embeds", "float32", ("batch_size", "projection_dim")), TensorSpec("last_hidden_state", "float32", hidden))
        if projection
        else (TensorSpec("last_hidden_state", "float32", hidden), TensorSpec("pooler_output", "float32", ("batch_size", "hidden_size")))
    )
    layers = int(config["num_hidden_layers"])
    return ComponentSpec(
        name=name,
        source=name,
        inputs=(TensorSpec("input_ids", "int64", ("batch_size", "sequence_length")),),
        outputs=first + tuple(TensorSpec(f"hidden_states.{i}", "float32", hidden) for i in range(layers + 1)),
        wrap=functools.partial(_TextEncoder, projection=projection),
        sample_inputs=_text_inputs,
        extra_files=_save_final_layer_norm,
    )


def time_ids_width(unet_config: Mapping[str, Any], text_embeds_width: int) -> int:
    """How many time ids an SDXL UNet takes (6 for the base, 5 for the refiner), from the width of its added
    embedding's first layer: text_embeds plus one sinusoidal embedding of addition_time_embed_dim per id."""
    total = int(unet_config["projection_class_embeddings_input_dim"])
    per_id = int(unet_config["addition_time_embed_dim"])
    count, rest = divmod(total - text_embeds_width, per_id)
    if rest or count < 1:
        raise ValueError(
            f"the UNet's added embedding takes {total} values, which is not {text_embeds_width} text_embeds plus "
            f"a whole number of time ids of {per_id}: text_encoder_2 does not belong to this UNet"
        )
    return count


def unet_extra_inputs(unet_config: Mapping[str, Any], text_embeds_width: int | None = None) -> tuple[TensorSpec, ...]:
    """The UNet's inputs after encoder_hidden_states: SDXL's text_embeds and time_ids ("text_time"), LCM's
    timestep_cond (time_cond_proj_dim), in optimum's order."""
    extra: tuple[TensorSpec, ...] = ()
    if unet_config.get("addition_embed_type") == "text_time":
        if text_embeds_width is None:
            raise ValueError("an SDXL UNet (addition_embed_type text_time) needs the width of text_encoder_2's text_embeds")
        extra += (
            TensorSpec("text_embeds", "float32", ("batch_size", text_embeds_width)),
            TensorSpec("time_ids", "float32", ("batch_size", time_ids_width(unet_config, text_embeds_width))),
        )
    if unet_config.get("time_cond_proj_dim"):
        extra += (TensorSpec("timestep_cond", "float32", ("batch_size", int(unet_config["time_cond_proj_dim"]))),)
    return extra


_UNET_INPUTS = (
    TensorSpec("sample", "float32", ("batch_size", "num_channels", "height", "width")),
    # float so that fractional timesteps (Euler, Heun, DPM-Solver Karras) reach the UNet intact
    TensorSpec("timestep", "float32", ("steps",)),
    TensorSpec("encoder_hidden_states", "float32", ("batch_size", "sequence_length", "hidden_size")),
)
_UNET_OUTPUT = TensorSpec("out_sample", "float32", ("batch_size", "num_channels", "height", "width"))
_FEATURE = TensorSpec(deepcache.FEATURE, "float32", ("batch_size", "feature_channels", "feature_height", "feature_width"))


def unet_spec(unet_config: Mapping[str, Any], text_embeds_width: int | None = None,
              cache_branch: int | None = None) -> ComponentSpec:
    """The UNet; with `cache_branch` (DeepCache), it also outputs the feature the shallow UNet takes."""
    extra = unet_extra_inputs(unet_config, text_embeds_width)
    return ComponentSpec(
        name="unet",
        source="unet",
        inputs=_UNET_INPUTS + extra,
        outputs=(_UNET_OUTPUT,) + ((_FEATURE,) if cache_branch is not None else ()),
        wrap=functools.partial(_UNet, extra=tuple(t.name for t in extra), cache_branch=cache_branch),
        sample_inputs=functools.partial(_unet_inputs, extra=extra),
    )


def _shallow_inputs(model: nn.Module, rng: np.random.Generator, extra: tuple[TensorSpec, ...], cache_branch: int) -> dict[str, np.ndarray]:
    """The UNet's sample inputs and the feature the full UNet computes from them: the shallow UNet must then
    reproduce the full UNet's output (the check the export makes, `validate_shallow`)."""
    inputs = _unet_inputs(model, rng, extra)
    full = _UNet(model, tuple(t.name for t in extra), cache_branch)
    with torch.no_grad():
        _, feature = full(*to_torch(inputs))
    inputs[deepcache.FEATURE] = feature.numpy()
    return inputs


def unet_shallow_spec(unet_config: Mapping[str, Any], text_embeds_width: int | None, cache_branch: int) -> ComponentSpec:
    """DeepCache's shallow UNet (deepcache.py): the UNet's inputs and the cached feature -> out_sample."""
    extra = unet_extra_inputs(unet_config, text_embeds_width)
    return ComponentSpec(
        name="unet_shallow",
        source="unet",
        inputs=_UNET_INPUTS + extra + (_FEATURE,),
        outputs=(_UNET_OUTPUT,),
        wrap=functools.partial(_ShallowUNet, extra=tuple(t.name for t in extra), cache_branch=cache_branch),
        sample_inputs=functools.partial(_shallow_inputs, extra=extra, cache_branch=cache_branch),
    )


# --- ControlNet: the ControlNet graph and the UNet that takes its residuals ---------------------------------------

RESIDUAL_DOWN = "down_block_additional_residual_{}"
RESIDUAL_MID = "mid_block_additional_residual"
CONTROL_DOWN = "down_block_res_sample_{}"
CONTROL_MID = "mid_block_res_sample"


def residual_channels(unet_config: Mapping[str, Any]) -> tuple[list[int], int]:
    """The channels of the UNet's down-block skip samples, in diffusers' order (conv_in's output, then each down
    resnet's, then each downsampler's), and of its mid block: what a ControlNet's residuals must match. Their
    sides: the latent's, halved (rounding up) by every downsampler before them (`residual_downsamples`)."""
    blocks = list(unet_config["block_out_channels"])
    layers = unet_config.get("layers_per_block", 2)
    layers = [int(layers)] * len(blocks) if isinstance(layers, int) else [int(n) for n in layers]
    channels = [blocks[0]]
    for i, width in enumerate(blocks):
        channels += [width] * layers[i] + ([width] if i < len(blocks) - 1 else [])
    return channels, blocks[-1]


def residual_downsamples(unet_config: Mapping[str, Any]) -> list[int]:
    """How many times each down residual's sides are halved from the latent's (the mid residual: len(blocks) - 1)."""
    blocks = list(unet_config["block_out_channels"])
    layers = unet_config.get("layers_per_block", 2)
    layers = [int(layers)] * len(blocks) if isinstance(layers, int) else [int(n) for n in layers]
    halvings = [0]
    for i in range(len(blocks)):
        halvings += [i] * layers[i] + ([i + 1] if i < len(blocks) - 1 else [])
    return halvings


def _halved(side: int, times: int) -> int:
    for _ in range(times):
        side = (side + 1) // 2  # a stride-2 convolution with padding 1
    return side


def _residual_tensors(unet_config: Mapping[str, Any], down: str, mid: str) -> tuple[TensorSpec, ...]:
    channels, mid_channels = residual_channels(unet_config)
    tensors = tuple(TensorSpec(down.format(i), "float32", ("batch_size", c, f"{down.format(i)}_height", f"{down.format(i)}_width"))
                    for i, c in enumerate(channels))
    return tensors + (TensorSpec(mid, "float32", ("batch_size", mid_channels, f"{mid}_height", f"{mid}_width")),)


class _ResidualUNet(_UNet):
    """The UNet taking a ControlNet's residuals: (sample, timestep, encoder_hidden_states, *extra, down residuals...,
    mid residual) -> out_sample (+ deepcache_feature), diffusers' down_block_additional_residuals and
    mid_block_additional_residual."""

    def __init__(self, model: nn.Module, extra: tuple[str, ...] = (), cache_branch: int | None = None, residuals: int = 0):
        super().__init__(model, extra, cache_branch)
        self.residuals = residuals  # how many down residuals

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        extra, down, mid = rest[: -self.residuals - 1], rest[-self.residuals - 1 : -1], rest[-1]
        keywords = dict(self.keywords(tuple(extra)), down_block_additional_residuals=tuple(down),
                        mid_block_additional_residual=mid, return_dict=False)
        if self.split is None:
            return self.model(sample, timestep, encoder_hidden_states, **keywords)[0]
        with deepcache.FeatureTap(self.model, self.split) as tap:
            out = self.model(sample, timestep, encoder_hidden_states, **keywords)[0]
        return out, tap.value


RESIDUAL_SAMPLE_STD = 0.5  # random residuals of about a trained ControlNet's size at scale 1 (order of the skips')


def _residual_unet_inputs(model: nn.Module, rng: np.random.Generator, extra: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    inputs = _unet_inputs(model, rng, extra)
    batch, _, h, w = inputs["sample"].shape
    channels, mid_channels = residual_channels(model.config)
    halvings = residual_downsamples(model.config)
    for i, (c, times) in enumerate(zip(channels, halvings)):
        shape = (batch, c, _halved(h, times), _halved(w, times))
        inputs[RESIDUAL_DOWN.format(i)] = (RESIDUAL_SAMPLE_STD * rng.standard_normal(shape)).astype(np.float32)
    times = len(model.config.block_out_channels) - 1
    shape = (batch, mid_channels, _halved(h, times), _halved(w, times))
    inputs[RESIDUAL_MID] = (RESIDUAL_SAMPLE_STD * rng.standard_normal(shape)).astype(np.float32)
    return inputs


def unet_controlnet_spec(unet_config: Mapping[str, Any], text_embeds_width: int | None = None,
                         cache_branch: int | None = None) -> ComponentSpec:
    """The UNet with a ControlNet's residuals as extra inputs (unet/model_controlnet.onnx); its outputs are the
    plain UNet's."""
    plain = unet_spec(unet_config, text_embeds_width, cache_branch)
    extra = unet_extra_inputs(unet_config, text_embeds_width)
    residuals = _residual_tensors(unet_config, RESIDUAL_DOWN, RESIDUAL_MID)
    return ComponentSpec(
        name="unet_controlnet",
        source="unet",
        inputs=plain.inputs + residuals,
        outputs=plain.outputs,
        wrap=functools.partial(_ResidualUNet, extra=tuple(t.name for t in extra), cache_branch=cache_branch,
                               residuals=len(residuals) - 1),
        sample_inputs=functools.partial(_residual_unet_inputs, extra=extra),
    )


class _ControlNet(nn.Module):
    """ControlNetModel -> its down residuals and mid residual, UNSCALED (conditioning_scale 1, no guess mode: the
    runtime scales them); SDXL's text_embeds and time_ids go in added_cond_kwargs."""

    def __init__(self, model: nn.Module, extra: tuple[str, ...] = ()):
        super().__init__()
        self.model = model
        self.extra = extra

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *extra):
        added = dict(zip(self.extra, extra)) or None
        down, mid = self.model(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                               added_cond_kwargs=added, guess_mode=False, return_dict=False)
        return (*down, mid)


def _controlnet_inputs(model: nn.Module, rng: np.random.Generator, extra: tuple[TensorSpec, ...], vae_scale: int,
                       unet_config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The UNet's sample inputs (the ControlNet's latent channels) and an RGB control image in [0, 1] at the pixel
    size (a ControlNet config has no sample_size: the UNet's sizes the latents)."""
    cfg = model.config
    h, w = _latent_hw(SimpleNamespace(block_out_channels=unet_config["block_out_channels"],
                                      sample_size=_first(unet_config.get("sample_size", 64))))
    inputs = {
        "sample": rng.standard_normal((2, cfg.in_channels, h, w), dtype=np.float32),
        "timestep": np.array([981.0, 21.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, SAMPLE_SEQUENCE_LENGTH, cfg.cross_attention_dim), dtype=np.float32),
        "controlnet_cond": rng.uniform(0.0, 1.0, size=(2, cfg.conditioning_channels, h * vae_scale, w * vae_scale)).astype(np.float32),
    }
    inputs.update(_extra_inputs(rng, extra, h, w))
    return inputs


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def controlnet_spec(name: str, controlnet_config: Mapping[str, Any], unet_config: Mapping[str, Any],
                    text_embeds_width: int | None, vae_scale: int) -> ComponentSpec:
    """A ControlNet (controlnet/<name>/model.onnx): the UNet's inputs and the control image -> its residuals."""
    extra = tuple(t for t in unet_extra_inputs(unet_config, text_embeds_width) if t.name != "timestep_cond")
    cond = TensorSpec("controlnet_cond", "float32", ("batch_size", int(controlnet_config.get("conditioning_channels", 3)),
                                                     "image_height", "image_width"))
    return ComponentSpec(
        name=f"controlnet/{name}",
        source="controlnet",
        inputs=_UNET_INPUTS[:3] + (cond,) + extra,
        outputs=_residual_tensors(unet_config, CONTROL_DOWN, CONTROL_MID),
        wrap=functools.partial(_ControlNet, extra=tuple(t.name for t in extra)),
        sample_inputs=functools.partial(_controlnet_inputs, extra=extra, vae_scale=vae_scale, unet_config=dict(unet_config)),
    )


VAE_DECODER = ComponentSpec(
    name="vae_decoder",
    source="vae",
    inputs=(TensorSpec("latent_sample", "float32", ("batch_size", "num_channels_latent", "height_latent", "width_latent")),),
    outputs=(TensorSpec("sample", "float32", ("batch_size", "num_channels", "height", "width")),),
    wrap=_VaeDecoder,
    sample_inputs=_decoder_inputs,
)

VAE_ENCODER = ComponentSpec(
    name="vae_encoder",
    source="vae",
    inputs=(TensorSpec("sample", "float32", ("batch_size", "num_channels", "height", "width")),),
    outputs=(
        TensorSpec("latent_parameters", "float32", ("batch_size", "num_channels_latent_x2", "height_latent", "width_latent")),
    ),
    wrap=_VaeEncoder,
    sample_inputs=_encoder_inputs,
)

VAE_COMPONENTS: tuple[ComponentSpec, ...] = (VAE_DECODER, VAE_ENCODER)


def to_torch(inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values())
