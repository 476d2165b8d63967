"""Random diffusers ControlNets for the tiny SD 1.x / SD 2.x / SDXL pipelines, and model folders exported with them.

Used by every ControlNet test (import from a test module: `from controlnet_models import ...`; tests/ is on
sys.path under pytest):

- `random_controlnet(unet, seed)`: `ControlNetModel.from_unet(unet)` with EVERY parameter randomised, the zero
  convolutions included (a zero ControlNet adds nothing and proves nothing), at magnitudes that keep images sane;
- `build_controlnet_source(root, family, names, ...)`: a tiny diffusers pipeline folder plus one ControlNet folder
  per name (`ControlNetModel.save_pretrained`);
- `export_controlnet_folder(root, family, names, ...)`: the same, exported with `--controlnet NAME=DIR` each;
- `controlnet_folder(family, names, ...)`: that export cached per test session (one per set of arguments), and the
  pytest fixture `tiny_sd1_controlnet` (SD1, ControlNets "canny" and "depth").
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ZERO_CONV_PREFIXES = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")
ZERO_CONV_GAIN = 0.5  # residuals of about half the size of the skip samples they are added to: visible, not wild


def random_controlnet(unet, seed: int = 0, vae_scale_factor: int | None = None):
    """A ControlNetModel made from ``unet`` (diffusers' from_unet, its weights copied) with every parameter then
    randomised: the zero convolutions get random weights of fan-in scale (times ZERO_CONV_GAIN), every other
    parameter a small random perturbation (10% of its own spread, or 0.02 where it has none: norms, biases).

    ``vae_scale_factor``: pixels per latent pixel of the pipeline's VAE (8 for real models; the tiny pipelines' VAE
    is 4): the control image's embedding downsamples by as much. A 9-channel inpainting UNet gets a 4-channel
    ControlNet, as diffusers' ControlNet inpaint pipeline feeds it the 4 latent channels."""
    import torch
    from diffusers import ControlNetModel

    factor = vae_scale_factor or 8
    embedding = (16, 32, 96, 256, 256)[: int(math.log2(factor)) + 1]
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding)
    latent_channels = 4
    if controlnet.config.in_channels != latent_channels:  # inpainting UNet (9 channels): a 4-channel ControlNet
        controlnet = ControlNetModel.from_config({**controlnet.config, "in_channels": latent_channels})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.startswith(ZERO_CONV_PREFIXES):
                fan_in = parameter[0].numel() if parameter.ndim > 1 else 1
                parameter.copy_(noise * (ZERO_CONV_GAIN / math.sqrt(fan_in) if parameter.ndim > 1 else 0.02))
            else:
                spread = float(parameter.std()) if parameter.numel() > 1 else 0.0
                parameter.add_(noise * (0.1 * spread if spread > 0 else 0.02))
    return controlnet.eval()


@dataclass(frozen=True)
class ControlNetSource:
    src: Path  # the tiny diffusers pipeline folder
    controlnets: dict[str, Path]  # name -> ControlNetModel folder


def build_controlnet_source(root: Path, family: str = "sd1", names: tuple[str, ...] = ("canny",), seed: int = 0,
                            inpaint: bool = False) -> ControlNetSource:
    """A tiny diffusers pipeline of ``family`` (latentrt.export.tiny) under ``root``/<family>-diffusers and one
    random ControlNet folder per name under ``root``/controlnets/<name> (seeds seed+1, seed+2, ...)."""
    from latentrt.export.tiny import build_tiny_pipeline

    root = Path(root)
    src = root / f"{family}{'-inpaint' if inpaint else ''}-diffusers"
    pipe = build_tiny_pipeline(src, family=family, seed=seed, inpaint=inpaint)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    folders = {}
    for i, name in enumerate(names):
        folders[name] = root / "controlnets" / name
        random_controlnet(pipe.unet, seed=seed + 1 + i, vae_scale_factor=scale).save_pretrained(folders[name])
    return ControlNetSource(src, folders)


def export_controlnet_folder(root: Path, family: str = "sd1", names: tuple[str, ...] = ("canny",), seed: int = 0,
                             inpaint: bool = False, **export_options) -> tuple[ControlNetSource, Path]:
    """`build_controlnet_source`, then `latentrt export SRC OUT --controlnet NAME=DIR ...` into ``root``/<...>-onnx;
    returns (the sources, the ONNX folder). ``export_options``: export_pipeline's (cache_branch, ...)."""
    from latentrt.export.exporter import export_pipeline

    source = build_controlnet_source(root, family, names, seed, inpaint)
    out = Path(root) / f"{source.src.name.removesuffix('-diffusers')}-onnx"
    export_pipeline(source.src, out, report=logging.getLogger("test-export").info,
                    controlnets=[f"{name}={path}" for name, path in source.controlnets.items()], **export_options)
    return source, out


_CACHE: dict[tuple, tuple[ControlNetSource, Path]] = {}
_ROOT: list[tempfile.TemporaryDirectory] = []


def controlnet_folder(family: str = "sd1", names: tuple[str, ...] = ("canny", "depth"), seed: int = 0,
                      inpaint: bool = False, cache_branch: int | None = None,
                      precision: str = "fp32") -> tuple[ControlNetSource, Path]:
    """`export_controlnet_folder` built once per test session for each set of arguments (a temporary folder removed
    when the interpreter exits)."""
    key = (family, tuple(names), seed, inpaint, cache_branch, precision)
    if key not in _CACHE:
        if not _ROOT:
            _ROOT.append(tempfile.TemporaryDirectory(prefix="latentrt-controlnet-"))
        root = Path(_ROOT[0].name) / f"{len(_CACHE)}"
        options = {"cache_branch": cache_branch} if cache_branch is not None else {}
        options.update({"precision": precision} if precision != "fp32" else {})
        _CACHE[key] = export_controlnet_folder(root, family, tuple(names), seed, inpaint, **options)
    return _CACHE[key]


@pytest.fixture(scope="session")
def tiny_sd1_controlnet() -> tuple[ControlNetSource, Path]:
    """(sources: the tiny SD1 diffusers folder and ControlNets "canny", "depth"; the ONNX folder exported with both)."""
    return controlnet_folder("sd1", ("canny", "depth"))
