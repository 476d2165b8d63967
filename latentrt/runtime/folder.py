"""ModelFolder: reads and checks an ONNX model folder (latentrt's, optimum's or diffusers' legacy one).

The folder is the contract between export and runtime. Configs are read from the folder's own JSON
into frozen dataclasses; nothing about the architecture is assumed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_COMPONENTS = ("unet", "vae_decoder")  # and a text encoder: text_encoder, or text_encoder_2 (SDXL refiner)
OPTIONAL_COMPONENTS = ("text_encoder", "text_encoder_2", "vae_encoder", "unet_shallow", "vae_decoder_tiny", "vae_encoder_tiny")
TINY_DECODER, TINY_ENCODER = "vae_decoder_tiny", "vae_encoder_tiny"  # the tiny autoencoder (TAESD, AutoencoderTiny)
REEXPORT_HINT = "re-export the model with `latentrt export SRC OUT`"
CONTROLNET_HINT = "export the model with `latentrt export SRC OUT --controlnet [NAME=]CONTROLNET_DIR`"
CONTROLNET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RESIDUAL_UNET = "model_controlnet.onnx"  # unet/model_controlnet.onnx: the UNet taking ControlNet residuals
TINY_VAE_HINT = ("add one with `latentrt add-tiny-vae MODEL TAESD_DIR`, or export with `latentrt export SRC OUT "
                 "--tiny-vae TAESD_DIR` (TAESD_DIR: a local diffusers AutoencoderTiny folder, e.g. madebyollin/taesd)")


class ModelFolderError(ValueError):
    """The folder is not a usable ONNX model folder; the message says what is wrong and the fix."""


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int
    sample_size: int
    cross_attention_dim: int
    num_upsamplers: int  # the UNet halves the latent this many times

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "UNetConfig":
        return cls(
            in_channels=int(cfg.get("in_channels", 4)),
            sample_size=_side(cfg.get("sample_size", 64)),
            cross_attention_dim=_side(cfg.get("cross_attention_dim", 768)),
            num_upsamplers=max(len(cfg.get("block_out_channels", [0])) - 1, 0),
        )


@dataclass(frozen=True)
class VaeConfig:
    latent_channels: int
    scaling_factor: float
    shift_factor: float | None
    scale_factor: int  # pixels per latent along each side: 2 ** (number of VAE blocks - 1)
    latents_mean: tuple[float, ...] | None = None  # per-channel statistics some VAEs declare (SDXL pipelines use them)
    latents_std: tuple[float, ...] | None = None

    def to_unet(self, z: np.ndarray) -> np.ndarray:
        """A VAE latent (the encoder's sample) as the UNet sees it: diffusers' img2img prepare_latents."""
        if self.latents_mean is not None and self.latents_std is not None:
            mean, std = self._statistics()
            return ((z - mean) * np.float32(self.scaling_factor) / std).astype(np.float32)
        if self.shift_factor is not None:
            z = z - np.float32(self.shift_factor)
        return (z * np.float32(self.scaling_factor)).astype(np.float32)

    def from_unet(self, latents: np.ndarray) -> np.ndarray:
        """The UNet's latents as the VAE decoder takes them (the inverse of to_unet)."""
        if self.latents_mean is not None and self.latents_std is not None:
            mean, std = self._statistics()
            return (latents * std / np.float32(self.scaling_factor) + mean).astype(np.float32)
        z = latents / np.float32(self.scaling_factor)
        if self.shift_factor is not None:
            z = z + np.float32(self.shift_factor)
        return z.astype(np.float32)

    def _statistics(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (1, len(self.latents_mean), 1, 1)
        return np.asarray(self.latents_mean, np.float32).reshape(shape), np.asarray(self.latents_std, np.float32).reshape(shape)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "VaeConfig":
        if "scaling_factor" not in cfg:
            raise ModelFolderError(f"the VAE config has no scaling_factor; {REEXPORT_HINT}")
        blocks = cfg.get("block_out_channels") or [0, 0, 0, 0]
        return cls(
            latent_channels=int(cfg.get("latent_channels", 4)),
            scaling_factor=float(cfg["scaling_factor"]),
            shift_factor=None if cfg.get("shift_factor") is None else float(cfg["shift_factor"]),
            scale_factor=2 ** (len(blocks) - 1),
            latents_mean=None if cfg.get("latents_mean") is None else tuple(float(v) for v in cfg["latents_mean"]),
            latents_std=None if cfg.get("latents_std") is None else tuple(float(v) for v in cfg["latents_std"]),
        )


@dataclass(frozen=True)
class TextEncoderConfig:
    max_position_embeddings: int
    hidden_size: int

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "TextEncoderConfig":
        return cls(
            max_position_embeddings=int(cfg.get("max_position_embeddings", 77)),
            hidden_size=int(cfg.get("hidden_size", cfg.get("projection_dim", 768))),
        )


@dataclass(frozen=True)
class Defaults:
    """Generation defaults a folder may declare in its manifest (the shipped model does)."""

    steps: int = 50
    guidance_scale: float = 7.5
    scheduler: str | None = None  # None: the folder's scheduler_config.json

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "Defaults":
        return cls(
            steps=int(cfg.get("steps", cls.steps)),
            guidance_scale=float(cfg.get("guidance_scale", cls.guidance_scale)),
            scheduler=cfg.get("scheduler"),
        )


@dataclass(frozen=True)
class ComponentFiles:
    name: str
    model: Path
    config: dict[str, Any]
    manifest: dict[str, Any] | None  # the manifest's entry, if the folder has a manifest

    @property
    def precision(self) -> str:
        """The manifest's precision of this network ("fp32", "fp16", "int8-qdq"; "" when it does not say)."""
        return str((self.manifest or {}).get("precision", ""))

    @property
    def quantized(self) -> bool:
        """Its weights are int8 (`latentrt quantize`)."""
        return self.precision.startswith("int8")


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    model_index: dict[str, Any]
    manifest: dict[str, Any] | None
    components: dict[str, ComponentFiles]
    scheduler_config: dict[str, Any]
    unet: UNetConfig
    vae: VaeConfig
    text_encoder: TextEncoderConfig
    defaults: Defaults = field(default_factory=Defaults)
    # ControlNets (`latentrt export --controlnet`): name -> controlnet/<name>/ (ComponentFiles.name
    # "controlnet/<name>"), sorted by name; and the UNet taking their residuals, unet/model_controlnet.onnx
    # (ComponentFiles.name "unet": the UNet whichever graph is open; its manifest entry is `unet_controlnet`)
    controlnets: dict[str, ComponentFiles] = field(default_factory=dict)
    unet_controlnet: ComponentFiles | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def inpaint_unet(self) -> bool:
        """A 9-channel inpainting UNet: it takes the latents, the mask and the masked image's latents."""
        return self.unet.in_channels == 2 * self.vae.latent_channels + 1

    @property
    def deepcache(self) -> dict[str, Any] | None:
        """The manifest's `deepcache` entry when the folder can cache (`latentrt export --deepcache`), else None."""
        entry = (self.manifest or {}).get("deepcache")
        return entry if entry and entry.get("shallow", "unet_shallow") in self.components else None

    @property
    def tiny_vae(self) -> VaeConfig | None:
        """The tiny autoencoder's latent scaling (its own config: scaling_factor 1.0 for TAESD, shift_factor), or None
        when the folder has no vae_decoder_tiny/. Its graphs take and give the UNet's latents divided by it, as
        diffusers' pipelines feed an AutoencoderTiny (`VaeConfig.from_unet` / `to_unet`)."""
        files = self.components.get(TINY_DECODER) or self.components.get(TINY_ENCODER)
        if files is None:
            return None
        config = {key: value for key, value in files.config.items() if key not in ("latents_mean", "latents_std")}
        if "scaling_factor" not in config:
            raise ModelFolderError(f"{files.model.parent}/config.json has no scaling_factor: {TINY_VAE_HINT}")
        config["block_out_channels"] = config.get("decoder_block_out_channels") or config.get("block_out_channels")
        return VaeConfig.from_dict(config)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (the VAE's downsampling factor)."""
        return self.vae.scale_factor

    @classmethod
    def open(cls, path: str | Path) -> "ModelFolder":
        path = Path(path)
        if not path.is_dir():
            raise ModelFolderError(f"{path} is not a folder: give the folder that `latentrt export` wrote")
        looks_like_model = (path / "model_index.json").is_file() or (path / "unet").is_dir()
        if not looks_like_model:
            raise ModelFolderError(
                f"{path} is not an ONNX model folder (no model_index.json, no unet/): "
                f"give a folder written by `latentrt export` or optimum-cli, or {REEXPORT_HINT}"
            )
        model_index = _read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
        manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else None
        components = {}
        for name in REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS:
            model = path / name / "model.onnx"
            if not model.is_file():
                if name in REQUIRED_COMPONENTS:
                    raise ModelFolderError(f"{path} lacks {name}/model.onnx; {REEXPORT_HINT}")
                continue
            config_path = path / name / "config.json"
            config = _read_json(config_path) if config_path.is_file() else {}
            entry = (manifest or {}).get("components", {}).get(name)
            if entry is not None:
                _check_sizes(path / name, entry)
            components[name] = ComponentFiles(name, model, config, entry)
        if "text_encoder" not in components and "text_encoder_2" not in components:
            raise ModelFolderError(f"{path} lacks text_encoder/model.onnx; {REEXPORT_HINT}")
        tokenizer = path / ("tokenizer" if "text_encoder" in components else "tokenizer_2")
        has_slow_files = (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
        if not (tokenizer / "tokenizer.json").is_file() and not has_slow_files:
            raise ModelFolderError(f"{path} lacks {tokenizer.name}/tokenizer.json (or vocab.json + merges.txt); {REEXPORT_HINT}")
        if not (path / "scheduler" / "scheduler_config.json").is_file():
            raise ModelFolderError(f"{path} lacks scheduler/scheduler_config.json; {REEXPORT_HINT}")
        if not components["vae_decoder"].config:
            raise ModelFolderError(
                f"{path} lacks vae_decoder/config.json (it holds scaling_factor): {REEXPORT_HINT}, or, for a "
                "folder from diffusers' legacy ONNX converter, copy the source model's vae/config.json there"
            )
        return cls(
            path=path,
            model_index=model_index,
            manifest=manifest,
            components=components,
            scheduler_config=_read_json(path / "scheduler" / "scheduler_config.json"),
            unet=UNetConfig.from_dict(components["unet"].config),
            vae=VaeConfig.from_dict(components["vae_decoder"].config),
            text_encoder=TextEncoderConfig.from_dict(components.get("text_encoder", components.get("text_encoder_2")).config),
            defaults=Defaults.from_dict((manifest or {}).get("defaults", {})),
            **_controlnet_parts(path, manifest, components["unet"]),
        )


def _controlnet_parts(path: Path, manifest: dict[str, Any] | None, unet: ComponentFiles) -> dict[str, Any]:
    """controlnet/<name>/ folders and unet/model_controlnet.onnx, checked against each other and the manifest."""
    listed = (manifest or {}).get("components", {})
    controlnets = {}
    root = path / "controlnet"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not (folder / "model.onnx").is_file():
            continue
        if not CONTROLNET_NAME.fullmatch(folder.name):
            raise ModelFolderError(f"{folder}: {folder.name!r} is not a ControlNet name (letters, digits, '_', '.', '-'); "
                                   "rename the folder")
        entry = listed.get(f"controlnet/{folder.name}")
        if entry is not None:
            _check_sizes(folder, entry)
        config_path = folder / "config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        controlnets[folder.name] = ComponentFiles(f"controlnet/{folder.name}", folder / "model.onnx", config, entry)
    missing = sorted(n.split("/", 1)[1] for n in listed if n.startswith("controlnet/") and n.split("/", 1)[1] not in controlnets)
    if missing:
        raise ModelFolderError(f"{path}'s manifest lists the ControlNet(s) {', '.join(missing)} but controlnet/"
                               f"{missing[0]}/model.onnx is missing; {REEXPORT_HINT} --controlnet ...")
    residual = path / "unet" / RESIDUAL_UNET
    entry = listed.get("unet_controlnet")
    if not residual.is_file():
        if controlnets or entry is not None:
            raise ModelFolderError(f"{path} has ControlNets but no unet/{RESIDUAL_UNET} (the UNet taking their residuals); "
                                   f"{CONTROLNET_HINT}")
        return {"controlnets": controlnets, "unet_controlnet": None}
    if entry is not None:
        _check_sizes(path / "unet", entry)
    return {"controlnets": controlnets, "unet_controlnet": ComponentFiles("unet", residual, unet.config, entry)}


def _side(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read {path}: {exc}; {REEXPORT_HINT}") from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} must hold a JSON object; {REEXPORT_HINT}")
    return data


def _check_sizes(folder: Path, entry: dict[str, Any]) -> None:
    """Cheap truncation check against the manifest (the sha256 check is `latentrt info --verify`)."""
    for name, meta in entry.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise ModelFolderError(f"{file} is missing (the manifest lists it); {REEXPORT_HINT}")
        size = file.stat().st_size
        if size != meta.get("bytes", size):
            raise ModelFolderError(
                f"{file} is {size} bytes but the manifest says {meta['bytes']}: the file is truncated or "
                f"corrupted; {REEXPORT_HINT}"
            )


def file_sha256(path: Path) -> str:
    """The manifest's checksum of a file (read in 4 MiB blocks: model.onnx_data can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
