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
from latentrt.bench.settings import LATENTRT_PATHS, BenchConfig, BenchError, is_model_folder, missing_modules

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
    "r = export_pipeline(sys.argv[1], sys.argv[2], report=print, cache_branch=0 if sys.argv[3:] == ['deepcache'] else None); "
    "print(f'exported in {r.seconds:.1f} s')"
)


def _current_export(out: Path, deepcache: bool = False) -> bool:
    """A finished export made with today's default rewrites (fused attention) and, when `deepcache`, with the
    shallow UNet; else it is redone."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("rewrites", {}).get("fused_attention") is True and (not deepcache or "deepcache" in manifest)


def _peer_export(cfg: BenchConfig, system: str, out: Path, log: Path) -> None:
    """The peer's own export of SRC into `out` (its worker's `export SRC OUT`, in its venv)."""
    cfg.progress(f"exporting {cfg.src} with {system} into {out} (once; cached)")
    shutil.rmtree(out, ignore_errors=True)
    try:
        proc = require_peer(system).run_worker(["export", Path(cfg.src).resolve(), out], timeout=WORKER_TIMEOUT_S)
    except RuntimeError as exc:  # PeerEnvError, PeerWorkerError: the message carries the output
        raise BenchError(f"{system}'s export of {cfg.src} failed: {exc}") from None
    log.write_text(proc.stdout + proc.stderr)


def _ensure_int8(cfg: BenchConfig, folder: Path, fp32: Path) -> Path:
    """`latentrt quantize` of latentrt's export, made once; redone when that export changes."""
    out = folder / "latentrt-int8"
    stamp = folder / "latentrt-int8.source"  # the sha256 of the fp32 manifest it was quantized from
    source = hashlib.sha256((fp32 / "manifest.json").read_bytes()).hexdigest()
    if (out / "manifest.json").is_file() and stamp.is_file() and stamp.read_text().strip() == source:
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
    if is_model_folder(cfg.src):  # a latentrt model folder: run as it is (resolve_settings allows only latentrt paths)
        folders["latentrt"] = Path(cfg.src).resolve()
    elif {*LATENTRT_PATHS, "optimum"} & set(cfg.systems):
        out = folder / "latentrt"
        deepcache = bool(cfg.cache_intervals)
        if not _current_export(out, deepcache):
            missing = missing_modules(EXPORT_MODULES)
            if missing:
                raise BenchError(f"exporting {cfg.src} needs the export extra ({', '.join(missing)} missing): "
                                 "pip install 'latentrt[export]', or give a latentrt model folder (ONNX) as SRC")
            cfg.progress(f"exporting {cfg.src} with latentrt into {out} (once; cached)")
            shutil.rmtree(out, ignore_errors=True)  # a folder without manifest is not a finished export
            # in a process of its own: the harness itself never imports torch
            run_logged([sys.executable, "-c", _EXPORT, cfg.src, out, *(["deepcache"] if deepcache else [])],
                        folder / "export.log")
        folders["latentrt"] = out
    if {"latentrt-int8", "latentrt-openvino-int8"} & set(cfg.systems):
        folders["latentrt-int8"] = _ensure_int8(cfg, folder, folders["latentrt"])
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
    return folders

