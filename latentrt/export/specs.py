"""One description per exported component: names, dtypes, dynamic axes, sample inputs, wrapper.

The same `ComponentSpec` drives the export (input/output names and dynamic axes), the
validation (sample inputs fed to both PyTorch and ONNX Runtime) and the manifest the runtime
trusts. Graph conventions follow optimum's exporter so folders move between the two tools:
text_encoder(input_ids) -> last_hidden_state, pooler_output;
unet(sample, timestep, encoder_hidden_states) -> out_sample;
vae_decoder(latent_sample) -> sample; vae_encoder(sample) -> latent_parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn


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
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class _UNet(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]


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


def _unet_inputs(model: nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg = model.config
    h, w = _latent_hw(cfg)
    return {
        "sample": rng.standard_normal((2, cfg.in_channels, h, w), dtype=np.float32),
        "timestep": np.array([981.0, 21.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, SAMPLE_SEQUENCE_LENGTH, cfg.cross_attention_dim), dtype=np.float32),
    }


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


TEXT_ENCODER = ComponentSpec(
    name="text_encoder",
    source="text_encoder",
    inputs=(TensorSpec("input_ids", "int64", ("batch_size", "sequence_length")),),
    outputs=(
        TensorSpec("last_hidden_state", "float32", ("batch_size", "sequence_length", "hidden_size")),
        TensorSpec("pooler_output", "float32", ("batch_size", "hidden_size")),
    ),
    wrap=_TextEncoder,
    sample_inputs=_text_inputs,
)

UNET = ComponentSpec(
    name="unet",
    source="unet",
    inputs=(
        TensorSpec("sample", "float32", ("batch_size", "num_channels", "height", "width")),
        # float so that fractional timesteps (Euler, Heun, DPM-Solver Karras) reach the UNet intact
        TensorSpec("timestep", "float32", ("steps",)),
        TensorSpec("encoder_hidden_states", "float32", ("batch_size", "sequence_length", "hidden_size")),
    ),
    outputs=(TensorSpec("out_sample", "float32", ("batch_size", "num_channels", "height", "width")),),
    wrap=_UNet,
    sample_inputs=_unet_inputs,
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

COMPONENTS: tuple[ComponentSpec, ...] = (TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER)


def to_torch(inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values())
