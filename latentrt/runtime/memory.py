"""How much memory a call will take, estimated from the model's shapes before anything is allocated.

The guard (`check_fits`) compares the estimate with the memory this machine has available and refuses what
cannot fit, naming the estimate and the largest size that fits: a server survives `--height 100000`.

The estimate is structural (it grows with the latents, the channels and the attention maps, read from the
folder's configs) with per-network constants measured on the SD 1.5 architecture at 256, 512 and 768 px
(peak RSS of one call over the resident weights, ONNX Runtime and OpenVINO, the larger kept;
benchmarks/results/memory_guard.md has the estimate against whole generations):
- UNet: `UNET_BYTES_PER_VALUE` bytes per value of its widest feature map (batch x channels x latent area):
  measured 95-106 on ONNX Runtime, 46 on OpenVINO. Its self-attention score maps (batch x heads x tokens^2)
  are added only for graphs without fused attention (optimum's, plain exports): the fused MultiHeadAttention
  never holds them whole (measured: linear in the pixels up to 768 px);
- VAE decoder: `VAE_BYTES_PER_VALUE` per value of its full-resolution feature map (channels of its first block
  x pixels; measured 29-32 with its mid-block attention map, latent tokens^2, added), at the tile size when
  decoding in tiles;
- tiny VAE (TAESD, vae="tiny"): `TINY_VAE_BYTES_PER_VALUE` per value of its decoder's (encoder's) full-resolution
  feature map (its last (first) block's channels x pixels; measured 16.4 (17.0) on ONNX Runtime for TAESD's 64
  channels at 512 and 1024 px), never tiled;
- weights: the component files' sizes, all resident by default, one network at a time with `low_memory`;
  a backend that compiles per shape (OpenVINO) adds a compiled copy of the UNet for a new size.
- ControlNets (a call with control_image): each one's weights when it is not open yet (opened at first use, then
  resident; with low_memory held beside the UNet for the denoise) times `CONTROLNET_LOAD_FACTOR` (a ControlNet
  graph keeps its weights inline: the file's bytes and the session's tensors are both held while it loads;
  measured on SD 1.5's architecture, ONNX Runtime: a 1.45 GB ControlNet added 2.03-2.06 GB to a generation's peak at
  256 and 512 px, benchmarks/results/controlnet_memory.md), and a compiled copy with the UNet's; its
  activations as the UNet's (`UNET_BYTES_PER_VALUE`: a ControlNet is the UNet's encoder half at the same sizes, and
  the backend's allocator keeps its buffers while the UNet runs; not measured apart), plus the residual tensors
  (`RESIDUAL_COPIES` float32 copies of the UNet's skip samples: each ControlNet's scaled outputs, their sum, the feed).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentrt.runtime.controlnet import NETWORK_PREFIX, residual_shapes
from latentrt.runtime.folder import ModelFolder

UNET_BYTES_PER_VALUE = 110  # measured: see the module docstring
VAE_BYTES_PER_VALUE = 30
VAE_ENCODER_BYTES_PER_VALUE = 12
TINY_VAE_BYTES_PER_VALUE = 18  # measured: see the module docstring
ATTENTION_BYTES = 4  # one float32 score
TEXT_ENCODER_ACTIVATIONS = 64 << 20  # (texts, 77, width) stays small at any image size
RUNTIME_OVERHEAD = 256 << 20  # allocator slack and per-call copies (latents, noise, images)
RESIDUAL_COPIES = 3  # the ControlNet residuals held at once besides each ControlNet's outputs (see the docstring)
CONTROLNET_LOAD_FACTOR = 1.6  # peak bytes per byte of a ControlNet's file while it loads (see the docstring)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a call adds, by phase; `peak` is what the guard compares with the available memory."""

    text_encoder: int
    unet: int
    vae: int
    weights_loaded_per_phase: dict[str, int]  # weights a phase must load first (low_memory); {} when all resident
    vae_encoder: int = 0  # 0 for text to image

    @property
    def peak(self) -> int:
        phases = {"text_encoder": self.text_encoder, "unet": self.unet, "vae_decoder": self.vae}
        if self.vae_encoder:
            phases["vae_encoder"] = self.vae_encoder
        return max(act + self.weights_loaded_per_phase.get(name, 0) for name, act in phases.items())


def component_bytes(folder: ModelFolder, name: str) -> int:
    return _files_bytes(folder.components[name].model)


def _files_bytes(model: Path) -> int:
    """A graph file's bytes with its external data (model.onnx*)."""
    return sum(p.stat().st_size for p in model.parent.glob(model.name + "*") if p.is_file())


def estimate(folder: ModelFolder, height: int, width: int, texts: int, images: int, *,
             low_memory: bool = False, vae_tile: int | None = None, compiles: bool = False,
             encodes: bool = False, vae: str = "full", controlnets: Sequence[str] = (),
             resident: Collection[str] = ()) -> MemoryEstimate:
    """Memory one call adds: `texts` UNet batch rows (2 per image with CFG), `images` decoded images.

    compiles: the backend compiles the networks for this shape (OpenVINO at a size it has not seen).
    encodes: the call encodes an image first (image to image, inpainting: one image at a time).
    vae: "full", or "tiny" (the folder's tiny autoencoder decodes, and encodes; vae_tile does not apply to it).
    controlnets: the ControlNets the call runs (names in folder.controlnets); resident: the networks open now.
    """
    unet_cfg = folder.components["unet"].config
    vae_cfg = folder.components["vae_decoder"].config
    factor = folder.vae.scale_factor
    lh, lw = height // factor, width // factor
    channels = list(unet_cfg.get("block_out_channels") or [320])
    unet = UNET_BYTES_PER_VALUE * texts * channels[0] * lh * lw + RUNTIME_OVERHEAD
    if not (folder.components["unet"].manifest or {}).get("fused_attention"):
        unet += ATTENTION_BYTES * texts * _largest_attention_map(unet_cfg, lh, lw)
    if compiles:
        unet += component_bytes(folder, "unet")
    control_weights = 0
    if controlnets:
        unique = sorted(set(controlnets))
        residual_values = sum(int(np.prod(shape)) for shape in residual_shapes(unet_cfg, texts, lh, lw))
        unet += 4 * residual_values * (RESIDUAL_COPIES + len(controlnets))
        unet += UNET_BYTES_PER_VALUE * texts * channels[0] * lh * lw  # its activations (see the docstring)
        sizes = {name: _files_bytes(folder.controlnets[name].model) for name in unique}
        control_weights = int(CONTROLNET_LOAD_FACTOR * sum(
            size for name, size in sizes.items() if low_memory or NETWORK_PREFIX + name not in resident))
        if compiles:
            unet += sum(sizes.values())
    tiny = vae == "tiny"
    vae_tile = None if tiny else vae_tile
    th, tw = (min(lh, vae_tile), min(lw, vae_tile)) if vae_tile else (lh, lw)
    vae_channels = list(vae_cfg.get("block_out_channels") or [128])[0]
    if tiny:
        decoding = TINY_VAE_BYTES_PER_VALUE * _tiny_channels(folder, "vae_decoder_tiny", -1) * height * width
    else:
        decoding = VAE_BYTES_PER_VALUE * vae_channels * (th * factor) * (tw * factor)
        if vae_cfg.get("mid_block_add_attention", True):
            decoding += ATTENTION_BYTES * (th * tw) ** 2
    # Tiles are decoded one image at a time, in up to four shapes (the edge tiles are smaller), and the backend's
    # allocator keeps buffers for each: measured 1.9 GB for SD 1.5 at 1024 px against 1.0 GB for one tile.
    decoding *= 2 if vae_tile else images
    decoding += 12 * images * height * width + RUNTIME_OVERHEAD  # the float32 output (and uint8 copy) of the whole image
    encoder = 0
    if encodes and tiny:
        encoder = TINY_VAE_BYTES_PER_VALUE * _tiny_channels(folder, "vae_encoder_tiny", 0) * height * width + RUNTIME_OVERHEAD
    elif encodes:
        encoder = VAE_ENCODER_BYTES_PER_VALUE * vae_channels * height * width + ATTENTION_BYTES * (lh * lw) ** 2
        encoder += RUNTIME_OVERHEAD
    weights = {}
    if low_memory:
        # each phase's network: the tiny VAE's in the decode (and encode) phases with vae="tiny"
        networks = {"unet": "unet", "vae_decoder": "vae_decoder_tiny" if tiny else "vae_decoder"}
        if encodes:
            networks["vae_encoder"] = "vae_encoder_tiny" if tiny else "vae_encoder"
        weights = {phase: component_bytes(folder, name) for phase, name in networks.items()}
        weights["unet"] += control_weights
        encoders = [name for name in folder.components if name.startswith("text_encoder")]  # SDXL: one after the other
        weights["text_encoder"] = max(component_bytes(folder, name) for name in encoders)
    elif control_weights:  # ControlNets opened by this call stay resident: loaded in the denoise phase
        weights = {"unet": control_weights}
    return MemoryEstimate(TEXT_ENCODER_ACTIVATIONS, int(unet), int(decoding), weights, int(encoder))


def _tiny_channels(folder: ModelFolder, name: str, block: int) -> int:
    """Channels of the tiny VAE's full-resolution block (the decoder's last, the encoder's first; TAESD: 64)."""
    files = folder.components.get(name) or folder.components.get("vae_decoder_tiny")
    key = "encoder_block_out_channels" if name == "vae_encoder_tiny" else "decoder_block_out_channels"
    return int(list((files.config if files else {}).get(key) or [64])[block])


def _largest_attention_map(cfg: dict, lh: int, lw: int) -> int:
    """heads x tokens^2 of the UNet's largest self-attention (at the finest level that has attention)."""
    blocks = cfg.get("down_block_types") or []
    channels = cfg.get("block_out_channels") or []
    head_dims = cfg.get("num_attention_heads") or cfg.get("attention_head_dim") or 8
    for level, block in enumerate(blocks):
        if "CrossAttn" in block:
            tokens = (lh // 2**level) * (lw // 2**level)
            if cfg.get("num_attention_heads"):  # heads given outright
                heads = _at(head_dims, level)
            elif isinstance(cfg.get("attention_head_dim"), list):  # SD 2.x: per-level head width
                heads = max(int(channels[level]) // int(_at(head_dims, level)), 1)
            else:  # SD 1.x: diffusers' legacy name, attention_head_dim is the number of heads
                heads = int(_at(head_dims, level))
            return int(heads) * tokens * tokens
    return 0


def _at(value, index: int):
    return value[index] if isinstance(value, (list, tuple)) else value


def available_memory() -> int:
    """Bytes this process can still take: MemAvailable, capped by a cgroup (container) limit when there is one."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:  # not Linux
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: the guard only applies max_pixels
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def gib(value: int) -> str:
    return f"{value / (1 << 30):.1f} GiB"
