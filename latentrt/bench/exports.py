"""latentrt's export of SRC, each peer's and latentrt's int8 folder, made once into a cache keyed by SRC (its
resolved path, its files' latest mtime and latentrt's version) and reused: the folders each system reads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from latentrt.bench.processes import WORKER_TIMEOUT_S, require_peer, run_logged
from latentrt.bench.settings import (LATENTRT_PATHS, BenchConfig, BenchError, controlnet_name, is_model_folder,
                                     missing_modules)

TINY_COMPONENTS = ("vae_decoder_tiny", "vae_encoder_tiny")

# What latentrt's export of a diffusers SRC imports beyond latentrt's own dependencies
EXPORT_MODULES = ("torch", "diffusers", "transformers", "onnx")


def cache_root(cache: Path | None) -> Path:
    if cache is not None:
        return Path(cache).expanduser()
    base = os.environ.get("LATENTRT_CACHE") or Path.home() / ".cache" / "latentrt"
    return Path(base).expanduser() / "bench"


def source_key(src: Path) -> str:
    """SRC's resolved path + its files' latest mtime (+ latentrt's version): a new key when the model changes."""
    from latentrt import __version__

    src = Path(src).resolve()
    latest = max((p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()), default=0)
    digest = hashlib.sha256(f"{src}\n{latest}\n{__version__}".encode()).hexdigest()[:16]
    return f"{src.name}-{digest}"


_EXPORT = (
    "import sys; from latentrt.export.exporter import export_pipeline; "
    "r = export_pipeline(sys.argv[1], sys.argv[2], report=print, cache_branch=0 if sys.argv[3] == 'deepcache' else None, "
    "tiny_vae=sys.argv[4] or None, **({'controlnets': [sys.argv[5]]} if sys.argv[5:6] != [''] else {})); "
    "print(f'exported in {r.seconds:.1f} s')"
)
_ADD_TINY_VAE = "import sys; from latentrt.cli import app; app(['add-tiny-vae', *sys.argv[1:], '--force'])"
TINY_VAE_STAMP = ".tiny-vae.source"  # in a folder the bench added a tiny VAE to: the tiny VAE's source_key


def tiny_vae_key(tiny_vae: Path | None) -> str:
    """What identifies the tiny VAE a folder was given (its resolved path and files' latest mtime); "" for none."""
    return source_key(tiny_vae) if tiny_vae is not None else ""


def _has_tiny_vae(folder: Path, key: str) -> bool:
    """`folder` holds the tiny VAE whose key is `key` (the bench's stamp beside its manifest entry)."""
    stamp = folder / TINY_VAE_STAMP
    return (folder / "vae_decoder_tiny").is_dir() and stamp.is_file() and stamp.read_text().strip() == key


def _ensure_tiny_vae(cfg: BenchConfig, folder: Path, log: Path) -> None:
    """`latentrt add-tiny-vae folder TINY --force` unless the folder already holds this tiny VAE."""
    key = tiny_vae_key(cfg.tiny_vae)
    if _has_tiny_vae(folder, key):
        return
    cfg.progress(f"adding the tiny VAE {cfg.tiny_vae} to {folder} with latentrt add-tiny-vae (once; cached)")
    (folder / TINY_VAE_STAMP).unlink(missing_ok=True)
    run_logged([sys.executable, "-c", _ADD_TINY_VAE, folder, Path(cfg.tiny_vae).resolve()], log)
    (folder / TINY_VAE_STAMP).write_text(key + "\n")


def _networks_digests(fp32: Path) -> tuple[str, str]:
    """What an int8 folder was quantized from: (the sha256 of the fp32 manifest's entries but the tiny VAE's, the
    sha256 of the manifest's bytes, as the stamps written before the tiny VAE existed). Adding a tiny VAE to the fp32
    folder changes neither network, so it does not call for quantizing again."""
    raw = (fp32 / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    manifest["components"] = {k: v for k, v in manifest.get("components", {}).items() if k not in TINY_COMPONENTS}
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(), hashlib.sha256(raw).hexdigest()


def _current_export(out: Path, deepcache: bool = False, controlnet: str | None = None) -> bool:
    """A finished export made with today's default rewrites (fused attention) and, when `deepcache`, with the
    shallow UNet, and with the ControlNet `controlnet`; else it is redone."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("rewrites", {}).get("fused_attention") is True and (not deepcache or "deepcache" in manifest)
            and (controlnet is None or f"controlnet/{controlnet}" in manifest.get("components", {})))


def _peer_export(cfg: BenchConfig, system: str, out: Path, log: Path) -> None:
    """The peer's own export of SRC into `out` (its worker's `export SRC OUT`, in its venv)."""
    cfg.progress(f"exporting {cfg.src} with {system} into {out} (once; cached)")
    shutil.rmtree(out, ignore_errors=True)
    try:
        proc = require_peer(system).run_worker(["export", Path(cfg.src).resolve(), out], timeout=WORKER_TIMEOUT_S)
    except RuntimeError as exc:  # PeerEnvError, PeerWorkerError: the message carries the output
        raise BenchError(f"{system}'s export of {cfg.src} failed: {exc}") from None
    log.write_text(proc.stdout + proc.stderr)


OPTIMUM_INTEL_TINY_VAE = "optimum-intel-tiny-vae"  # the folders key of the tiny VAE decoder's OpenVINO IR


def _optimum_intel_tiny_vae(cfg: BenchConfig, folder: Path) -> Path:
    """The tiny VAE's decoder as OpenVINO IR (vae_decoder/openvino_model.xml + config.json, as FastSD CPU's TAESD
    folders hold it), converted in optimum-intel's venv (its worker's `export-tiny-vae`), made once per tiny VAE."""
    out = folder / OPTIMUM_INTEL_TINY_VAE
    key = tiny_vae_key(cfg.tiny_vae)
    stamp = folder / f"{OPTIMUM_INTEL_TINY_VAE}.source"
    if (out / "vae_decoder" / "openvino_model.xml").is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return out
    cfg.progress(f"converting the tiny VAE {cfg.tiny_vae} to OpenVINO IR for optimum-intel into {out} (once; cached)")
    shutil.rmtree(out, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    try:
        proc = require_peer("optimum-intel").run_worker(["export-tiny-vae", Path(cfg.tiny_vae).resolve(), out],
                                                        timeout=WORKER_TIMEOUT_S)
    except RuntimeError as exc:  # PeerEnvError, PeerWorkerError: the message carries the output
        raise BenchError(f"optimum-intel's conversion of the tiny VAE {cfg.tiny_vae} failed: {exc}") from None
    (folder / "export-optimum-intel-tiny-vae.log").write_text(proc.stdout + proc.stderr)
    stamp.write_text(key + "\n")
    return out


def _ensure_int8(cfg: BenchConfig, folder: Path, fp32: Path) -> Path:
    """`latentrt quantize` of latentrt's export, made once; redone when that export changes."""
    out = folder / "latentrt-int8"
    stamp = folder / "latentrt-int8.source"  # the sha256 of the fp32 manifest it was quantized from
    source, as_before = _networks_digests(fp32)
    if (out / "manifest.json").is_file() and stamp.is_file() and stamp.read_text().strip() in (source, as_before):
        return out
    missing = missing_modules(("onnx",))
    if missing:
        raise BenchError(f"the int8 paths quantize {fp32} with `latentrt quantize`, which needs the export extra "
                         f"({', '.join(missing)} missing): pip install 'latentrt[export]'")
    cfg.progress(f"quantizing {fp32} with latentrt quantize into {out} (once; cached)")
    shutil.rmtree(out, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    # in a process of its own (calibration imports nothing heavy, but runs the pipeline for minutes)
    run_logged([sys.executable, "-c", _QUANTIZE, fp32, out], folder / "quantize.log")
    stamp.write_text(source + "\n")
    return out


_QUANTIZE = "import sys; from latentrt.cli import app; app(['quantize', *sys.argv[1:]])"


def ensure_exports(cfg: BenchConfig, folder: Path) -> dict[str, Path]:
    """latentrt's export of SRC (and each peer's, and the int8 folder) under `folder`, made once; the paths each system reads."""
    folders: dict[str, Path] = {}
    folder.mkdir(parents=True, exist_ok=True)
    tiny_rows = "tiny" in cfg.vaes  # resolve_settings checked that cfg.tiny_vae is an AutoencoderTiny folder
    if is_model_folder(cfg.src):  # a latentrt model folder: run as it is (resolve_settings allows only latentrt paths)
        folders["latentrt"] = Path(cfg.src).resolve()
    elif {*LATENTRT_PATHS, "optimum"} & set(cfg.systems):
        # with a ControlNet a folder of its own: a folder with ControlNets runs the UNet graph that takes their residuals
        controlnet = controlnet_name(cfg)
        out = folder / ("latentrt" if controlnet is None else f"latentrt-controlnet-{controlnet}")
        deepcache = bool(cfg.cache_intervals)
        if not _current_export(out, deepcache, controlnet):
            missing = missing_modules(EXPORT_MODULES)
            if missing:
                raise BenchError(f"exporting {cfg.src} needs the export extra ({', '.join(missing)} missing): "
                                 "pip install 'latentrt[export]', or give a latentrt model folder (ONNX) as SRC")
            cfg.progress(f"exporting {cfg.src} with latentrt into {out} (once; cached)")
            shutil.rmtree(out, ignore_errors=True)  # a folder without manifest is not a finished export
            # in a process of its own: the harness itself never imports torch; the tiny VAE with it when asked
            tiny = Path(cfg.tiny_vae).resolve() if tiny_rows else ""
            spec = f"{controlnet}={Path(cfg.controlnet).resolve()}" if controlnet is not None else ""
            run_logged([sys.executable, "-c", _EXPORT, cfg.src, out, "deepcache" if deepcache else "-", tiny, spec],
                       folder / "export.log")
            if tiny_rows:
                (out / TINY_VAE_STAMP).write_text(tiny_vae_key(cfg.tiny_vae) + "\n")
        if tiny_rows:
            _ensure_tiny_vae(cfg, out, folder / "export.log")
        folders["latentrt"] = out
    if {"latentrt-int8", "latentrt-openvino-int8"} & set(cfg.systems):
        folders["latentrt-int8"] = _ensure_int8(cfg, folder, folders["latentrt"])
        if tiny_rows:
            _ensure_tiny_vae(cfg, folders["latentrt-int8"], folder / "quantize.log")
    if "optimum" in cfg.systems:
        if cfg.optimum_folder == "latentrt":
            folders["optimum"] = folders["latentrt"]
        else:
            out = folder / "optimum"
            if not (out / "model_index.json").is_file():
                _peer_export(cfg, "optimum", out, folder / "export-optimum.log")
            folders["optimum"] = out
    if "optimum-intel" in cfg.systems:
        out = folder / "optimum-intel"
        if not (out / "unet" / "openvino_model.xml").is_file():  # the worker renames a complete export into place
            _peer_export(cfg, "optimum-intel", out, folder / "export-optimum-intel.log")
        folders["optimum-intel"] = out
        if tiny_rows:
            folders[OPTIMUM_INTEL_TINY_VAE] = _optimum_intel_tiny_vae(cfg, folder)
    return folders

