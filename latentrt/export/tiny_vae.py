"""The tiny autoencoder (TAESD / TAESDXL, diffusers' `AutoencoderTiny`) as two more components of a model folder.

    vae_decoder_tiny(latent_sample) -> sample     AutoencoderTiny.decode(latent_sample).sample, images in [-1, 1]
    vae_encoder_tiny(sample) -> latents           AutoencoderTiny.encode(sample).latents, from images in [-1, 1]

Both are traced, saved and validated against PyTorch like every other component (exporter.py, validate.py) and get
a manifest entry with their files, sha256, inputs/outputs and validation figures. They take the UNet's latents
divided by the tiny VAE's own `scaling_factor` (1.0 for TAESD and TAESDXL), as diffusers' pipelines feed an
AutoencoderTiny; the runtime does that scaling (runtime/folder.py `ModelFolder.tiny_vae`).

This module describes and checks them; exporter.py exports them (`export_tiny_components`, also for
`export_pipeline(..., tiny_vae=DIR)`), and tiny_vae_folder.py adds them to an existing folder (`add_tiny_vae`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from latentrt.export.specs import ComponentSpec, TensorSpec

logger = logging.getLogger(__name__)

TINY_DECODER, TINY_ENCODER = "vae_decoder_tiny", "vae_encoder_tiny"
TINY_COMPONENTS = (TINY_DECODER, TINY_ENCODER)
TINY_CLASS = "AutoencoderTiny"


class TinyVaeError(ValueError):
    """The tiny VAE folder cannot be used; the message says why and what to give instead."""


@dataclass(frozen=True)
class TinyVaeSource:
    """A checked AutoencoderTiny folder: its config, and the sizes the model folder must agree with."""

    path: Path
    config: dict
    latent_channels: int
    decoder_scale: int  # image pixels per latent pixel of its decoder
    encoder_scale: int  # of its encoder

    @property
    def label(self) -> str:
        return f"AutoencoderTiny with {self.latent_channels} latent channels"


# --- wrappers and specs --------------------------------------------------------------------------------------


class _TinyDecoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, latent_sample):
        return self.model.decode(latent_sample, return_dict=False)[0]


class _TinyEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sample):
        return self.model.encode(sample, return_dict=False)[0]


VALIDATION_SIDE = 256  # pixels of the sample images; the latents are this / 8


def _decoder_inputs(model: nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    side = VALIDATION_SIDE // _scale(model.config, "decoder")
    return {"latent_sample": rng.standard_normal((1, model.config.latent_channels, side, side), dtype=np.float32)}


def _encoder_inputs(model: nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = rng.uniform(-1.0, 1.0, size=(1, model.config.in_channels, VALIDATION_SIDE, VALIDATION_SIDE))
    return {"sample": image.astype(np.float32)}


TINY_VAE_DECODER = ComponentSpec(
    name=TINY_DECODER,
    source="vae_tiny",
    inputs=(TensorSpec("latent_sample", "float32", ("batch_size", "num_channels_latent", "height_latent", "width_latent")),),
    outputs=(TensorSpec("sample", "float32", ("batch_size", "num_channels", "height", "width")),),
    wrap=_TinyDecoder,
    sample_inputs=_decoder_inputs,
)

TINY_VAE_ENCODER = ComponentSpec(
    name=TINY_ENCODER,
    source="vae_tiny",
    inputs=(TensorSpec("sample", "float32", ("batch_size", "num_channels", "height", "width")),),
    outputs=(TensorSpec("latents", "float32", ("batch_size", "num_channels_latent", "height_latent", "width_latent")),),
    wrap=_TinyEncoder,
    sample_inputs=_encoder_inputs,
)

TINY_VAE_SPECS = (TINY_VAE_DECODER, TINY_VAE_ENCODER)


def _scale(config, part: str) -> int:
    """Pixels per latent pixel: the decoder upsamples by upsampling_scaling_factor after every block but its last,
    the encoder halves the image in every block but its first (diffusers' DecoderTiny, EncoderTiny)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if part == "decoder":
        blocks = get("decoder_block_out_channels") or (64, 64, 64, 64)
        return int(get("upsampling_scaling_factor", 2) or 2) ** (len(blocks) - 1)
    blocks = get("encoder_block_out_channels") or (64, 64, 64, 64)
    return 2 ** (len(blocks) - 1)


# --- checks --------------------------------------------------------------------------------------------------


def check_tiny_vae(path: Path, latent_channels: int, scale_factor: int, unet_in_channels: int | None = None,
                   where: str = "the model") -> TinyVaeSource:
    """``path`` must be a diffusers AutoencoderTiny folder (config.json with that _class_name, weights beside it)
    whose latents are those of the model: ``latent_channels`` (its VAE's; the UNet takes them, or 2 x + 1 for an
    inpainting UNet) and ``scale_factor`` pixels per latent pixel. The weights are read later, at export."""
    path = Path(path)
    if not path.is_dir():
        raise TinyVaeError(f"{path} is not a folder: give a local diffusers {TINY_CLASS} folder (config.json and "
                           "diffusion_pytorch_model.safetensors), e.g. madebyollin/taesd or taesdxl saved with save_pretrained")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise TinyVaeError(f"{path} has no config.json: it is not a diffusers {TINY_CLASS} folder (give the folder "
                           "that AutoencoderTiny.save_pretrained() wrote, e.g. madebyollin/taesd)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinyVaeError(f"cannot read {config_path} ({exc}): give a diffusers {TINY_CLASS} folder") from exc
    if not isinstance(config, dict) or config.get("_class_name") != TINY_CLASS:
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise TinyVaeError(f"{path} holds a {found} (config.json's _class_name), not an {TINY_CLASS}: give a tiny "
                           "autoencoder folder such as madebyollin/taesd (SD 1.x/2.x) or madebyollin/taesdxl (SDXL)")
    weights = [p for p in (path / "diffusion_pytorch_model.safetensors", path / "diffusion_pytorch_model.bin") if p.is_file()]
    if not weights:
        raise TinyVaeError(f"{path} has no weights (diffusion_pytorch_model.safetensors or .bin beside config.json): "
                           "give the whole AutoencoderTiny folder")
    channels = int(config.get("latent_channels", 4))
    expected = [latent_channels] if unet_in_channels is None else sorted({latent_channels, unet_in_channels})
    if channels != latent_channels or (unet_in_channels is not None and unet_in_channels not in (channels, 2 * channels + 1)):
        raise TinyVaeError(
            f"{path} is an {TINY_CLASS} with {channels} latent channels but {where}'s VAE and UNet work in "
            f"{latent_channels} (UNet input channels {unet_in_channels if unet_in_channels is not None else '?'}; "
            f"expected {' or '.join(map(str, expected))}): give the tiny VAE made for this model's latents "
            "(TAESD for SD 1.x/2.x, TAESDXL for SDXL, each 4 channels)")
    decoder, encoder = _scale(config, "decoder"), _scale(config, "encoder")
    if decoder != scale_factor or encoder != scale_factor:
        raise TinyVaeError(f"{path}'s {TINY_CLASS} maps one latent pixel to {decoder}x{decoder} image pixels (decoder) "
                           f"and {encoder}x{encoder} (encoder) but {where}'s VAE to {scale_factor}x{scale_factor}: give "
                           "the tiny VAE made for this model")
    return TinyVaeSource(path, config, channels, decoder, encoder)


def load_tiny_vae(source: TinyVaeSource):
    """The torch AutoencoderTiny (float32, eval), or a TinyVaeError when its weights cannot be read (truncated)."""
    import torch
    from diffusers import AutoencoderTiny

    try:
        with _quiet():
            return AutoencoderTiny.from_pretrained(source.path, torch_dtype=torch.float32).eval()
    except Exception as exc:  # a truncated or corrupt weights file fails in safetensors, torch or diffusers
        reason = " ".join(str(exc).split())[:300]
        raise TinyVaeError(f"cannot read the {TINY_CLASS} weights in {source.path} ({type(exc).__name__}: {reason}): "
                           "the file is truncated or corrupt; copy the tiny VAE folder again") from exc


class _quiet:
    """diffusers logs warnings about missing optional files; the export reports what matters itself."""

    def __enter__(self):
        self.level = logging.getLogger("diffusers").level
        logging.getLogger("diffusers").setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.getLogger("diffusers").setLevel(self.level)


# --- random-weight configs (tests and benchmarks) --------------------------------------------------------------


def build_tiny_autoencoder(out: Path, kind: str = "small", seed: int = 0, latent_channels: int = 4):
    """Save a random-weight AutoencoderTiny to ``out``; return it (torch). kind "taesd": diffusers' default config,
    TAESD's (and TAESDXL's) architecture, 8 pixels per latent pixel; "small": three blocks of 16 channels, 4 pixels
    per latent pixel like the VAE of tiny.py's pipelines, for fast tests."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    if kind == "taesd":
        model = AutoencoderTiny(latent_channels=latent_channels)
    elif kind == "small":
        model = AutoencoderTiny(encoder_block_out_channels=(16, 16, 16), decoder_block_out_channels=(16, 16, 16),
                                num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1),
                                latent_channels=latent_channels)
    else:
        raise ValueError(f"unknown kind {kind!r}: taesd or small")
    model.save_pretrained(out)
    return model.eval()
