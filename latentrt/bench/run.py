"""latentrt against the PyTorch reference (diffusers) and what a user would pick instead, side by side.

    latentrt bench SRC [--steps N --height H --width W --runs R --guidance G --scheduler S --threads T
                        --systems latentrt,diffusers,optimum --modes default,low_memory
                        --task txt2img|img2img|inpaint --strength S
                        --json PATH --markdown PATH --plot PATH]
    python -m latentrt.bench.harness SRC ...      (the same, without the CLI)

Systems (SYSTEMS below; each names its worker in WORKERS):
- latentrt paths: `latentrt` (ONNX Runtime fp32), `latentrt-openvino` (the OpenVINO backend, precision
  "auto"), `latentrt-int8` (ONNX Runtime on the folder `latentrt quantize` writes from latentrt's export),
  `latentrt-openvino-int8` (the OpenVINO backend, precision "auto", on that int8 folder).
- PyTorch: `diffusers` (fp32, the reference for image agreement) and `diffusers-bf16` (the same pipeline
  under `torch.autocast("cpu", dtype=torch.bfloat16)`).
- Peers in virtual environments of their own, built from a source checkout's benchmarks/peers/ (an
  installed wheel has none: asking for a peer is then a clear error): `optimum` (ORTStableDiffusionPipeline on
  optimum's ONNX export) and `optimum-intel` (OVStableDiffusionPipeline on `optimum-cli export openvino`,
  reshaped to the benchmark's static shapes and compiled, bf16 by OpenVINO's default where the CPU has it).

Method (issue 5):
- SRC is a diffusers folder. latentrt's export of it (and optimum's, optimum-intel's and latentrt's int8
  folder, for those rows) is made once into a cache keyed by SRC's resolved path and its files' latest
  mtime, then reused. SRC may instead be a latentrt model folder (ONNX, e.g. the shipped model): the
  latentrt paths run it as it is (no export, no torch needed); the other systems need a diffusers folder.
- Every system gets the same prompt, negative prompt, initial latents (drawn here from --seed and saved
  to latents.npy), scheduler, steps, guidance, size and thread count (ORT intra-op threads, inter-op 1;
  torch.set_num_threads; OMP/MKL variables).
- Each system runs in a process of its own, a fresh one per run (latentrt/bench/systems/*_worker.py): it
  imports its libraries, loads the pipeline (timed: `load`), warms each component up once (untimed, same
  shapes), then times one whole generation to uint8 images (`end_to_end`) with the pipeline's own stage
  functions wrapped by timers: `text_encoder` (tokenize + encode the prompt and, with CFG, the negative
  prompt), `unet_step` (the median of the denoising loop's UNet calls, each on the CFG batch) and
  `vae_decode`; it reports its peak RSS (ru_maxrss). Only the diffusers and peer workers import torch;
  the latentrt worker's report lists the heavy modules it imported (none).
- A warm-up round (load only: fills the OS file cache) is discarded; then R runs, systems interleaved
  A/B within each run and the order rotated from run to run. Medians are quoted with min–max.
- The roof: ONNX Runtime's fp32 GEMM throughput (latentrt/bench/roof.py), one sample per run, interleaved
  with the systems. The UNet's FLOPs come from the export's manifest (counted once at export time by
  latentrt/export/flops.py) or are counted here at the benchmark's size; achieved GFLOP/s = FLOPs of one
  UNet call / its median time.
- Image agreement: PSNR and max abs difference of each system's uint8 image against diffusers'.
- Ratios: every latentrt path against every other system; and the issue-9 figures for the fastest
  latentrt path present (lowest end to end) against PyTorch fp32, PyTorch bf16 and optimum-intel.

Tasks (`--task`, TASKS; issue 11): `txt2img` (the default: everything above) or the image tasks, one img2img or
one inpainting call per run:
- `img2img`: `pipe(prompt, image=..., strength=...)` for latentrt, StableDiffusionImg2ImgPipeline (from_pretrained
  of the same folder) for diffusers; `inpaint`: with `mask_image=...` too, StableDiffusionInpaintPipeline, on the
  plain 4-channel UNet (after every step the unmasked region is the image's latents noised to the next timestep; a
  9-channel inpainting UNet is refused). Both workers keep the same prompt, steps, guidance and scheduler.
- The inputs, made here deterministically (task_inputs) and saved beside latents.npy in the run folder: init.png,
  a synthetic picture (gradient sky, ground, sun, house, a little texture) rendered at the bench's size, and for
  inpaint mask.png, a centred rectangle of half the width and height (white = repaint). latents.npy is not used.
- `--strength` (default DEFAULT_STRENGTH = 0.75 for both tasks, so that the same --steps give both the same
  UNet calls; diffusers' own inpainting default is 1.0): int(steps x strength) of the steps run, as diffusers'
  get_timesteps. Refused with txt2img, outside (0, 1], or when it leaves no step.
- Noise: latentrt draws the VAE posterior sample and the noise from NumPy with --seed; the diffusers worker
  replaces diffusers' randn_tensor (in the VAE's module and the pipeline's) by draws from the same seeded NumPy
  generator in call order, so the images agree as for txt2img (PSNR against diffusers).
- Stages: `vae_encode` (the VAE encoder's calls, median; latentrt's `_encode_image`, diffusers' `vae.encode`)
  is timed and warmed up with the others, and the report gives each row's `vae_encode_calls_per_image` (diffusers'
  inpainting encodes the masked image too, for a 4-channel UNet unused; latentrt skips it). latentrt's `load`
  does not open the VAE encoder (neither Pipeline() nor compile() does): its first use, in the untimed warm-up,
  does (`info.vae_encoder_first_call_s`).
- Only IMAGE_TASK_SYSTEMS run them: the latentrt paths, diffusers, diffusers-bf16; asking a peer (optimum,
  optimum-intel) for an image task is a clear error. Time to first image is measured for txt2img only.

SDXL (issue 12; SDXL_SYSTEMS): SRC may be a StableDiffusionXLPipeline folder (the family is read from the folder,
protocol.model_family: a UNet with addition_embed_type "text_time" or an XL pipeline class; settings["family"]).
- latentrt's export handles it (two text encoders; the UNet takes text_embeds and time_ids); the latents' shape
  comes from the folder (the UNet's in_channels, the VAE's downsampling factor), the native size from its
  sample_size (1024x1024 for SDXL base). The latentrt worker times the family's conditioning (both encoders) as
  `text_encoder` and the UNet with its conditioning dict.
- The diffusers worker loads StableDiffusionXLPipeline (img2img: StableDiffusionXLImg2ImgPipeline, inpaint:
  StableDiffusionXLInpaintPipeline, same NumPy noise as for SD) with add_watermarker=False; `text_encoder` = its
  encode_prompt (both encoders, pooled embeddings), the UNet calls with added_cond_kwargs (text_embeds, time_ids:
  original size, crop (0, 0), target size = the bench's), `vae_decode` its VAE decode (fp32 weights: the VAE's
  force_upcast only acts in fp16). diffusers-bf16 is the same under autocast.
- The peers (optimum, optimum-intel) are refused for SDXL in words (their workers load SD 1.x/2.x pipeline classes);
  so is text to image on an SDXL refiner folder (requires_aesthetics_score: image tasks only).
- FLOPs: the export's manifest formula (latentrt/export/flops.py counts the SDXL UNet with text_embeds and
  time_ids), else counted here with the same extra inputs.
- Guidance <= 1 (SDXL-Turbo's 0) runs no CFG in either system: UNet batch 1, no negative prompt encoded.
- W4 (SDXL architecture, random weights from the published configs, 1024x1024, 1-2 steps, against diffusers):
      latentrt bench <bench-cache>/sdxl-random --height 1024 --width 1024 --steps 2 --guidance 0 --runs 3 \
          --systems latentrt,latentrt-openvino,diffusers,diffusers-bf16 \
          --json <bench-cache>/w4.json --markdown <bench-cache>/w4.md --plot <bench-cache>/w4.png
  where <bench-cache>/sdxl-random is a StableDiffusionXLPipeline folder with random weights built from the
  published configs (SDXL base's scheduler, EulerDiscreteScheduler: deterministic, so the images compare; an
  ancestral scheduler draws torch noise in diffusers and NumPy noise in latentrt, and the images then differ after
  a first step that adds noise). tests/test_bench.py runs the same on the tiny SDXL folder.

Embedding (issue 10): load with a cold and a warm cache, time to first image, peak RSS, per mode:
- Modes (`--modes`, MODES): each latentrt path runs once per mode as its own row, `default` named as the path
  (`latentrt-openvino-int8`), the others with the mode (`latentrt-openvino-int8 (low_memory)`: Pipeline(...,
  low_memory=True), one network resident at a time). The other systems have no modes: one row each.
- The load cache: every latentrt row loads from a folder made for this run (a temporary folder, removed at the
  end: SD 1.5's UNet entry alone is about 4.5 GB), never the user's. `load_cold`: the row's first process, on an
  empty cache folder of its own, after the model's files were read into the OS file cache (the figure is the
  load cache's, not the disk's): ONNX Runtime optimizes each network and writes its optimized copy (a
  low_memory row then opens each network once, untimed, to fill the cache as the default mode does). `load`
  (= `load_warm`): every timed run, a new process on the cache that load filled. Both include
  `pipe.compile(H, W, batch, guidance)`. The OpenVINO rows use no load cache (its compiled-model cache is
  opt-in, left off as by default: $LATENTRT_CACHE is removed from their environment), so both of their loads
  compile.
- `ttfi`, time to first image (`--no-ttfi`: not measured): in every run, after each row's timed run, a fresh process that makes one image
  with the benchmark's settings and latents (seed) and writes the PNG, timed from its start (Popen) to its exit
  (the PNG checked): `latentrt generate ...` (the console script beside this interpreter) with the warm cache
  for latentrt rows, `diffusers_worker.py --first-image` (from_pretrained, one pipeline call, the PNG) for
  diffusers and diffusers-bf16; not measured for the peers. Its peak RSS (the child's ru_maxrss) is
  `ttfi_peak_rss_mb`; the PNG is compared with the row's timed image (`ttfi_psnr_vs_run_db`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
# A source checkout: the folder holding the latentrt package (an editable install); its benchmarks/peers/
# builds the peers' virtual environments. An installed wheel's is site-packages, which has none.
SOURCE_ROOT = HERE.parents[1]

logger = logging.getLogger(__name__)

SYSTEMS = ("latentrt", "latentrt-openvino", "latentrt-int8", "latentrt-openvino-int8", "diffusers", "diffusers-bf16",
           "optimum", "optimum-intel")
LATENTRT_PATHS = ("latentrt", "latentrt-openvino", "latentrt-int8", "latentrt-openvino-int8")
# latentrt's modes (--modes): each latentrt path runs once per mode, as a row of its own; "cacheN" (--cache-interval
# N) is the default mode with DeepCache, one full UNet call in N (the export then includes the shallow UNet)
MODES = ("default", "low_memory")
CACHE_MODE = re.compile(r"cache([2-9]|[1-9][0-9]+)$")


def cache_interval(mode: str) -> int:
    """The DeepCache interval a mode runs with: N for "cacheN", else 1 (no caching)."""
    match = CACHE_MODE.match(mode)
    return int(match.group(1)) if match else 1
# systems whose time to first image is measured (latentrt's CLI; diffusers' worker with --first-image)
TTFI_SYSTEMS = (*LATENTRT_PATHS, "diffusers", "diffusers-bf16")
REFERENCE = "diffusers"
METRICS = ("load", "text_encoder", "unet_step", "vae_decode", "end_to_end")
# --task: text to image (METRICS), or the image tasks, which also time the VAE encoder (IMAGE_METRICS)
TASKS = ("txt2img", "img2img", "inpaint")
IMAGE_METRICS = ("load", "text_encoder", "vae_encode", "unet_step", "vae_decode", "end_to_end")
DEFAULT_STRENGTH = 0.75  # img2img and inpaint alike: the same steps give the same UNet calls for both
# the systems whose workers run the image tasks (the peers' workers do text to image only)
IMAGE_TASK_SYSTEMS = (*LATENTRT_PATHS, "diffusers", "diffusers-bf16")
# the systems whose workers run an SDXL folder (the peers' workers load SD 1.x/2.x pipeline classes only)
SDXL_SYSTEMS = (*LATENTRT_PATHS, "diffusers", "diffusers-bf16")
INIT_IMAGE, MASK_IMAGE = "init.png", "mask.png"  # the image tasks' inputs, beside latents.npy in the run folder
METRIC_LABELS = {
    "load": "load",
    "text_encoder": "text encoder",
    "vae_encode": "VAE encode",
    "unet_step": "UNet call",
    "vae_decode": "VAE decode",
    "end_to_end": "end to end",
    "peak_rss_mb": "peak RSS",
}
# system -> its worker script (one script serves several systems; the worker reads cfg["system"])
WORKERS = {
    name: HERE / "systems" / f"{module}_worker.py"
    for name, module in {
        "latentrt": "latentrt", "latentrt-openvino": "latentrt", "latentrt-int8": "latentrt", "latentrt-openvino-int8": "latentrt",
        "diffusers": "diffusers", "diffusers-bf16": "diffusers",
        "optimum": "optimum", "optimum-intel": "optimum_intel",
    }.items()
}
# systems that run in a peer's own virtual environment: system -> the module holding its PeerEnv (ENV)
PEERS = {"optimum": "benchmarks.peers.optimum.env", "optimum-intel": "benchmarks.peers.optimum_intel.env"}
ROOF = HERE / "roof.py"
WORKER_TIMEOUT_S = 3600
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, sharp focus"
DEFAULT_NEGATIVE = "blurry, low quality"
# The figures issue 5 asks for on W2 (reported, never asserted)
TARGETS = {
    "unet_speedup_vs_diffusers": 2.5,
    "end_to_end_speedup_vs_diffusers": 2.0,
    "peak_rss_ratio_vs_diffusers": 0.6,  # at most
    "fraction_of_gemm_roof": 0.8,
}
# Issue 9's figures for latentrt's fastest selectable CPU path (W3; W2 the same ratios reported, never asserted):
# (metric, other system, goal for other's time / latentrt's time, or None: reported without a goal)
FAST_PATH_TARGETS = (
    ("unet_step", "diffusers", 4.5),
    ("unet_step", "diffusers-bf16", 2.0),
    ("unet_step", "optimum-intel", 1.25),
    ("end_to_end", "diffusers", None),
    ("end_to_end", "diffusers-bf16", None),
    ("end_to_end", "optimum-intel", 1.25),
    ("load", "diffusers", None),
    ("load", "diffusers-bf16", None),
    ("load", "optimum-intel", 1.0),  # load <= optimum-intel's
)
PSNR_CAP_DB = 100.0
# What a system's worker (or latentrt's export of a diffusers SRC) imports beyond latentrt's own dependencies
SYSTEM_MODULES = {"diffusers": ("torch", "diffusers", "transformers"), "diffusers-bf16": ("torch", "diffusers", "transformers")}
EXPORT_MODULES = ("torch", "diffusers", "transformers", "onnx")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class BenchError(RuntimeError):
    """A system failed or the settings cannot be benchmarked; the message says which and why."""


@dataclass
class BenchConfig:
    src: Path
    steps: int = 20
    height: int | None = None  # default: the model's native size
    width: int | None = None
    runs: int = 5
    guidance: float = 7.5
    scheduler: str | None = None  # default: the folder's own (a latentrt short name)
    threads: int | None = None  # default: every core
    systems: tuple[str, ...] = ("latentrt", "diffusers")
    modes: tuple[str, ...] = ("default",)  # MODES: each latentrt path runs once per mode; other systems ignore them
    prompt: str = DEFAULT_PROMPT
    negative: str = DEFAULT_NEGATIVE
    seed: int = 0
    batch: int = 1
    task: str = "txt2img"  # TASKS; img2img and inpaint start from the harness's init image (and mask)
    strength: float | None = None  # the image tasks' strength, default DEFAULT_STRENGTH; txt2img takes none
    cache: Path | None = None  # default: $LATENTRT_CACHE/bench or ~/.cache/latentrt/bench
    warmup_round: bool = True
    optimum_folder: str = "own"  # "own": optimum's export; "latentrt": latentrt's folder
    optimum_intel_model_cache: bool = False  # True: OpenVINO CACHE_DIR for optimum-intel (off by its default on CPU)
    fast_path: str | None = None  # the latentrt path the issue-9 figures are for; default: lowest end to end
    ttfi: bool = True  # time to first image in every run (False: not measured, for long settings)
    command: str | None = None  # the exact command line, recorded in the report
    note: str | None = None  # conditions worth recording (machine load, ...)
    progress: Callable[[str], None] = field(default=lambda message: None, repr=False)


# ------------------------------------------------------------------------------------------ cache


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


def _run_logged(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, timeout: float = WORKER_TIMEOUT_S) -> None:
    with open(log, "a") as fh:
        fh.write(f"\n$ {shlex.join(map(str, cmd))}\n")
        fh.flush()
        proc = subprocess.run(list(map(str, cmd)), stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                              check=False)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(map(str, cmd[:4]))}... failed (exit {proc.returncode}); its output:\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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


def peers_available() -> bool:
    """True in a source checkout (benchmarks/peers/ beside the package), where the peers' venvs can be built."""
    return (SOURCE_ROOT / "benchmarks" / "peers" / "venv.py").is_file()


def _peer_env(system: str):
    """The PeerEnv of a system that runs in a peer's own virtual environment (from the source checkout)."""
    if not peers_available():
        raise BenchError(_no_peers_message([system]))
    if str(SOURCE_ROOT) not in sys.path:
        sys.path.insert(0, str(SOURCE_ROOT))
    return importlib.import_module(PEERS[system]).ENV


def _no_peers_message(systems: Sequence[str]) -> str:
    one = len(systems) == 1
    return (f"{', '.join(systems)} {'runs in a virtual environment' if one else 'run in virtual environments'} built "
            f"from benchmarks/peers/, which only latentrt's source checkout has (the installed package, in {SOURCE_ROOT}, "
            f"has none): clone the repository and install it with `pip install -e .`, or leave "
            f"{'it' if one else 'them'} out of --systems")


def _missing(modules: Sequence[str]) -> list[str]:
    """Those of `modules` this interpreter cannot import (looked up, not imported: torch stays out)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _peer_export(cfg: BenchConfig, system: str, out: Path, log: Path) -> None:
    """The peer's own export of SRC into `out` (its worker's `export SRC OUT`, in its venv)."""
    cfg.progress(f"exporting {cfg.src} with {system} into {out} (once; cached)")
    shutil.rmtree(out, ignore_errors=True)
    try:
        proc = _peer_env(system).run_worker(["export", Path(cfg.src).resolve(), out], timeout=WORKER_TIMEOUT_S)
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
    missing = _missing(("onnx",))
    if missing:
        raise BenchError(f"the int8 paths quantize {fp32} with `latentrt quantize`, which needs the export extra "
                         f"({', '.join(missing)} missing): pip install 'latentrt[export]'")
    cfg.progress(f"quantizing {fp32} with latentrt quantize into {out} (once; cached)")
    shutil.rmtree(out, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    # in a process of its own (calibration imports nothing heavy, but runs the pipeline for minutes)
    _run_logged([sys.executable, "-c", _QUANTIZE, fp32, out], folder / "quantize.log")
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
        deepcache = any(cache_interval(mode) > 1 for mode in cfg.modes)
        if not _current_export(out, deepcache):
            missing = _missing(EXPORT_MODULES)
            if missing:
                raise BenchError(f"exporting {cfg.src} needs the export extra ({', '.join(missing)} missing): "
                                 "pip install 'latentrt[export]', or give a latentrt model folder (ONNX) as SRC")
            cfg.progress(f"exporting {cfg.src} with latentrt into {out} (once; cached)")
            shutil.rmtree(out, ignore_errors=True)  # a folder without manifest is not a finished export
            # in a process of its own: the harness itself never imports torch
            _run_logged([sys.executable, "-c", _EXPORT, cfg.src, out, *(["deepcache"] if deepcache else [])],
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


# ---------------------------------------------------------------------------------------- settings


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def is_model_folder(src: Path) -> bool:
    """A latentrt model folder (ONNX graphs, what `latentrt export` writes), not a diffusers folder."""
    return (Path(src) / "unet" / "model.onnx").is_file()


def row_name(system: str, mode: str) -> str:
    """A row's name in the report and the tables: the path for the default mode, else "path (mode)"."""
    if cache_interval(mode) > 1:
        return f"{system} (cache interval {cache_interval(mode)})"
    return system if mode == "default" else f"{system} ({mode})"


def bench_rows(systems: Sequence[str], modes: Sequence[str]) -> list[tuple[str, str, str]]:
    """(row, system, mode) in --systems order: each latentrt path once per mode, every other system once."""
    rows = []
    for system in systems:
        for mode in (modes if system in LATENTRT_PATHS else ("default",)):
            rows.append((row_name(system, mode), system, mode))
    return rows


def resolve_settings(cfg: BenchConfig) -> dict[str, Any]:
    """Size, scheduler and thread count made explicit, checked before anything runs."""
    from latentrt.runtime.schedulers import create_scheduler

    src = Path(cfg.src)
    model_folder = is_model_folder(src)
    if not model_folder and not (src / "model_index.json").is_file():
        raise BenchError(f"{src} is not a diffusers folder (no model_index.json) nor a latentrt model folder (no "
                         "unet/model.onnx): give a local StableDiffusionPipeline or StableDiffusionXLPipeline folder, or a folder `latentrt export` wrote")
    unknown = [s for s in cfg.systems if s not in SYSTEMS]
    if unknown or not cfg.systems:
        raise BenchError(f"unknown systems {unknown or '(none)'}: choose from {', '.join(SYSTEMS)}")
    others = [s for s in cfg.systems if s not in LATENTRT_PATHS]
    if model_folder and others:
        raise BenchError(f"{', '.join(others)} {'needs' if len(others) == 1 else 'need'} a diffusers folder as SRC: "
                         f"{src} is a latentrt model folder (ONNX), "
                         f"which only the latentrt paths run ({', '.join(LATENTRT_PATHS)})")
    peers = [s for s in cfg.systems if s in PEERS]
    if peers and not peers_available():
        raise BenchError(_no_peers_message(peers))
    for system in cfg.systems:
        missing = _missing(SYSTEM_MODULES.get(system, ()))
        if missing:
            raise BenchError(f"{system} needs {', '.join(missing)}, not installed here: pip install 'latentrt[export]', "
                             "or leave it out of --systems")
    bad_modes = [m for m in cfg.modes if m not in MODES and not CACHE_MODE.match(m)]
    if bad_modes or not cfg.modes:
        raise BenchError(f"unknown modes {bad_modes or '(none)'}: --modes takes a comma-separated list of {', '.join(MODES)} "
                         "(and cacheN, which --cache-interval N adds)")
    if model_folder and any(cache_interval(m) > 1 for m in cfg.modes) and not ((src / "manifest.json").is_file() and "deepcache" in _read_json(src / "manifest.json")):
        raise BenchError(f"{src} has no DeepCache shallow UNet, which --cache-interval needs: export it with "
                         "`latentrt export --deepcache`, or give the diffusers folder (the bench exports it so)")
    if len(set(cfg.modes)) != len(cfg.modes):
        raise BenchError(f"--modes names a mode twice: {', '.join(cfg.modes)}")
    if cfg.fast_path is not None and (cfg.fast_path not in LATENTRT_PATHS or cfg.fast_path not in cfg.systems):
        raise BenchError(f"fast path {cfg.fast_path!r} must be one of the latentrt paths in --systems")
    if cfg.fast_path is not None and "default" not in cfg.modes:
        raise BenchError("the fast path is a default-mode row: add default to --modes")
    for name, value in (("steps", cfg.steps), ("runs", cfg.runs), ("batch", cfg.batch)):
        if value < 1:
            raise BenchError(f"--{name} must be at least 1, got {value}")
    strength = _check_task(cfg, src, model_folder)
    family = _check_family(cfg, src)
    unet = _read_json(src / "unet" / "config.json")
    vae = _read_json(src / ("vae_decoder" if model_folder else "vae") / "config.json")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    native = int(unet["sample_size"]) * factor
    height, width = cfg.height or native, cfg.width or native
    for name, value in (("height", height), ("width", width)):
        if value % factor:
            raise BenchError(f"--{name} must be a multiple of {factor} for this model, got {value}")
    scheduler_config = _read_json(src / "scheduler" / "scheduler_config.json")
    scheduler = create_scheduler(cfg.scheduler, scheduler_config).name  # None -> the folder's own
    from latentrt.bench.systems.protocol import DIFFUSERS_SCHEDULERS

    if scheduler not in DIFFUSERS_SCHEDULERS:
        raise BenchError(f"scheduler {scheduler!r} has no diffusers counterpart to compare with: use one of {', '.join(DIFFUSERS_SCHEDULERS)}")
    return {
        "prompt": cfg.prompt,
        "negative": cfg.negative,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "cfg": cfg.guidance > 1.0,
        "scheduler": scheduler,
        "height": height,
        "width": width,
        "batch": cfg.batch,
        "latent_shape": [cfg.batch, int(unet["in_channels"]), height // factor, width // factor],
        "unet_batch": cfg.batch * (2 if cfg.guidance > 1.0 else 1),
        "seed": cfg.seed,
        "threads": cfg.threads or os.cpu_count() or 1,
        "runs": cfg.runs,
        "task": cfg.task,
        "strength": strength,
        "family": family,
        "metrics": list(task_metrics(cfg.task)),
        "warmup": "a discarded load-only round; in every run, one call of each component before timing",
        "systems": list(cfg.systems),
        "modes": list(cfg.modes),
        "rows": [row for row, _, _ in bench_rows(cfg.systems, cfg.modes)],
        "dtype": "float32",
        "device": "cpu",
        "downsampling": 2 ** (len(unet["block_out_channels"]) - 1),
    }


def _check_family(cfg: BenchConfig, src: Path) -> str:
    """The model's family ("sd" or "sdxl", protocol.model_family), checked against the systems and the task."""
    from latentrt.bench.systems.protocol import model_family

    family = model_family(src)
    if family != "sdxl":
        return family
    unable = [s for s in cfg.systems if s not in SDXL_SYSTEMS]
    if unable:
        one = len(unable) == 1
        raise BenchError(f"{', '.join(unable)} cannot run {src}, an SDXL model: {'its worker runs' if one else 'their workers run'} "
                         f"Stable Diffusion 1.x/2.x pipelines only (ORTStableDiffusionPipeline, OVStableDiffusionPipeline); "
                         f"leave {'it' if one else 'them'} out of --systems (SDXL runs {', '.join(SDXL_SYSTEMS)})")
    index = src / "model_index.json"
    if cfg.task == "txt2img" and index.is_file() and _read_json(index).get("requires_aesthetics_score"):
        raise BenchError(f"{src} is an SDXL refiner (requires_aesthetics_score, no text-to-image pipeline): it runs "
                         "--task img2img or --task inpaint only")
    return family


def task_metrics(task: str) -> tuple[str, ...]:
    """What a run of `task` times: METRICS, and the VAE encode for the image tasks."""
    return METRICS if task == "txt2img" else IMAGE_METRICS


def _check_task(cfg: BenchConfig, src: Path, model_folder: bool) -> float | None:
    """--task and --strength checked against the systems and the model; the strength the image tasks run with."""
    if cfg.task not in TASKS:
        raise BenchError(f"unknown task {cfg.task!r}: --task takes one of {', '.join(TASKS)}")
    if cfg.task == "txt2img":
        if cfg.strength is not None:
            raise BenchError("--strength applies to the image tasks only: add --task img2img or --task inpaint")
        return None
    unable = [s for s in cfg.systems if s not in IMAGE_TASK_SYSTEMS]
    if unable:
        raise BenchError(f"{', '.join(unable)} cannot run --task {cfg.task}: {'its worker does' if len(unable) == 1 else 'their workers do'} "
                         f"text to image only; leave {'it' if len(unable) == 1 else 'them'} out of --systems "
                         f"(--task {cfg.task} runs {', '.join(IMAGE_TASK_SYSTEMS)})")
    strength = DEFAULT_STRENGTH if cfg.strength is None else cfg.strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise BenchError(f"--strength must be a number in (0, 1] (the fraction of the steps that run on the image), got {strength!r}")
    if int(cfg.steps * strength) < 1:
        raise BenchError(f"--strength {strength:g} with --steps {cfg.steps} leaves no step to run (int(steps x strength) = 0): "
                         f"raise --strength to at least {1 / cfg.steps:.3g} or use more steps")
    unet = _read_json(src / "unet" / "config.json")
    vae = _read_json(src / ("vae_decoder" if model_folder else "vae") / "config.json")
    if int(unet["in_channels"]) != int(vae.get("latent_channels", 4)):
        raise BenchError(f"{src} has a {unet['in_channels']}-channel UNet: the bench's image tasks time the plain "
                         f"{vae.get('latent_channels', 4)}-channel UNet (inpainting by blending the known region)")
    if model_folder and not (src / "vae_encoder" / "model.onnx").is_file():
        raise BenchError(f"{src} has no vae_encoder/model.onnx, which --task {cfg.task} needs: export the model again "
                         "with `latentrt export` (it writes the VAE encoder)")
    return float(strength)


def task_inputs(settings: dict, workdir: Path) -> dict[str, str]:
    """The image tasks' init image (a rendered synthetic picture at the bench's size) and, for inpaint, the mask
    (white = repaint: a centred rectangle of half the height and width), made deterministically and saved in the
    run folder; the paths every worker reads. None for txt2img."""
    if settings["task"] == "txt2img":
        return {}
    import numpy as np
    from PIL import Image

    h, w = settings["height"], settings["width"]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = y / max(h - 1, 1), x / max(w - 1, 1)
    image = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.8 - 0.5 * x * y], axis=-1)  # a sky-like gradient
    image[y > 0.7] = (0.35, 0.55, 0.25)  # ground
    sun = (x - 0.7) ** 2 + (y - 0.25) ** 2 < 0.12**2
    image[sun] = (0.95, 0.85, 0.3)
    house = (np.abs(x - 0.3) < 0.12) & (y > 0.5) & (y <= 0.75)
    image[house] = (0.7, 0.25, 0.2)
    image += 0.04 * (np.sin(40 * x) * np.cos(30 * y))[..., None]  # some texture for the VAE
    paths = {"image": str(workdir / INIT_IMAGE)}
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(paths["image"])
    if settings["task"] == "inpaint":
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: h - h // 4, w // 4: w - w // 4] = 255
        paths["mask"] = str(workdir / MASK_IMAGE)
        Image.fromarray(mask).save(paths["mask"])
    return paths


def unet_flops(settings: dict, src: Path, latentrt_folder: Path | None, log: Path) -> dict[str, Any]:
    """FLOPs of one UNet call and one VAE decode at the benchmark's shapes (manifest formula, else counted)."""
    from latentrt.export.flops import flops_at

    b, _, h, w = settings["latent_shape"]
    manifest = _read_json(latentrt_folder / "manifest.json") if latentrt_folder and (latentrt_folder / "manifest.json").is_file() else {}
    entries = {name: manifest.get("components", {}).get(name, {}).get("flops") for name in ("unet", "vae_decoder")}
    exact = h % settings["downsampling"] == 0 and w % settings["downsampling"] == 0
    if all(entries.values()) and exact:
        return {
            "unet": flops_at(entries["unet"], settings["unet_batch"], h, w),
            "vae_decoder": flops_at(entries["vae_decoder"], b, h, w),
            "source": "manifest (counted at export time: " + entries["unet"]["method"] + ")",
        }
    out = log.parent / "flops.json"
    cmd = [sys.executable, "-c",
           "import sys; from latentrt.export.flops import main; main(sys.argv[1:])",
           src, "--height", settings["height"], "--width", settings["width"],
           "--batch", settings["unet_batch"], "--vae-batch", b]
    with open(out, "w") as fh:
        proc = subprocess.run(list(map(str, cmd)), stdout=fh, stderr=subprocess.DEVNULL, timeout=900, check=False)
    if proc.returncode != 0:
        return {"unet": None, "vae_decoder": None, "source": "could not be counted"}
    counted = _read_json(out)
    return {"unet": counted["unet"], "vae_decoder": counted["vae_decoder"], "source": "counted for this run: " + counted["method"]}


# ----------------------------------------------------------------------------------- machine, versions


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "physical_cores": None,
        "memory_gb": None,
        "cpu_flags": [],
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
                break
    except OSError:
        pass
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def harness_versions() -> dict[str, str | None]:
    from latentrt.bench.systems.protocol import versions

    return versions("latentrt", "numpy", "onnxruntime", "onnx")


# -------------------------------------------------------------------------------------------- runs


def _thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _interpreter(system: str) -> tuple[str, dict[str, str]]:
    if system in PEERS:
        env = _peer_env(system)  # puts the source checkout on sys.path
        from benchmarks.peers.venv import clean_env

        return str(env.python(env.ensure())), clean_env()
    return sys.executable, dict(os.environ)


def _slug(system: str, mode: str = "default") -> str:
    """A row's file-name stem in the workdir: the system, with `.mode` for the other modes."""
    return system if mode == "default" else f"{system}.{mode}"


def _worker_env(system: str, threads: int, base_env: dict[str, str]) -> dict[str, str]:
    env = _thread_env(threads, base_env)
    if system in LATENTRT_PATHS:  # the harness names the load cache itself (and OpenVINO's stays off)
        env.pop("LATENTRT_CACHE", None)
    return env


def run_worker(system: str, worker_cfg: dict, workdir: Path, tag: str) -> dict:
    python, base_env = _interpreter(system)
    worker_cfg = {**worker_cfg, "system": system}
    mode = worker_cfg.get("mode", "default")
    stem = _slug(system, mode)
    label = row_name(system, mode)
    cfg_path = workdir / f"{stem}-{tag}.config.json"
    out_path = workdir / f"{stem}-{tag}.json"
    cfg_path.write_text(json.dumps(worker_cfg, indent=1, default=str))
    out_path.unlink(missing_ok=True)
    log = workdir / f"{stem}.log"
    env = _worker_env(system, worker_cfg["threads"], base_env)
    try:
        _run_logged([python, WORKERS[system], cfg_path, out_path], log, env=env)
    except BenchError as exc:
        report = _read_json(out_path) if out_path.is_file() else {}
        raise BenchError(f"{label} ({tag}) failed: {report.get('error') or exc}") from None
    report = _read_json(out_path)
    if not report.get("ok"):
        raise BenchError(f"{label} ({tag}) failed: {report.get('error')}")
    return report


# ------------------------------------------------------------------------- load cache, time to first image


def _uses_load_cache(system: str) -> bool:
    """The latentrt paths on ONNX Runtime's CPU provider: their loads read (and the first one writes) the load cache."""
    from latentrt.bench.systems.latentrt_worker import PATHS

    return system in PATHS and PATHS[system][0] == "cpu"


def _read_through(folders: Sequence[Path]) -> None:
    """Read every file of the model folders once, so that the cold-cache loads do not wait for the disk."""
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                with open(path, "rb") as fh:
                    while fh.read(16 << 20):
                        pass


def _merge_cache(cold: Path, warm: Path) -> int:
    """Move the entries a cold load wrote into the shared warm cache (those it lacks); returns the bytes written."""
    from latentrt.runtime.cache import cache_entries, folder_size

    written = folder_size(cold) if cold.is_dir() else 0
    for backend, entry, _ in cache_entries(cold) if cold.is_dir() else []:
        target = warm / backend / entry.name
        if not target.exists() and not entry.name.endswith(".tmp"):
            target.parent.mkdir(parents=True, exist_ok=True)
            entry.rename(target)
    shutil.rmtree(cold, ignore_errors=True)
    return written


def _latentrt_command() -> list[str]:
    """How a user starts latentrt: the console script beside this interpreter (else the CLI module by -c)."""
    script = Path(sys.executable).with_name("latentrt")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'latentrt'; from latentrt.cli import app; app()"]


def _ttfi_command(system: str, mode: str, settings: dict, worker_cfg: dict, cfg_path: Path, png: Path,
                  cache_dir: Path | None) -> tuple[list[str], list[str]]:
    """(the command, the same with placeholders for the report) that makes the row's first image into `png`."""
    if system in LATENTRT_PATHS:
        from latentrt.bench.systems.latentrt_worker import PATHS

        provider, precision, folder_key = PATHS[system]
        folder = worker_cfg["folders"][folder_key]
        tail = ["--negative", settings["negative"], "--provider", provider, "--precision", precision or "auto",
                "--threads", settings["threads"], "--seed", settings["seed"], "--steps", settings["steps"],
                "--height", settings["height"], "--width", settings["width"], "--guidance", settings["guidance"],
                "--scheduler", settings["scheduler"], *(["--low-memory"] if mode == "low_memory" else []),
                *(["--cache-interval", cache_interval(mode)] if cache_interval(mode) > 1 else [])]
        cache = ["--cache-dir", cache_dir] if cache_dir is not None else []
        cmd = [*_latentrt_command(), "generate", settings["prompt"], "-m", folder, "-o", png, *tail, *cache]
        shown = ["latentrt", "generate", settings["prompt"], "-m", f"<{folder_key} folder>", "-o", "<out>.png", *tail,
                 *(["--cache-dir", "<load cache, filled>"] if cache else [])]
        return [str(c) for c in cmd], [str(c) for c in shown]
    python, _ = _interpreter(system)
    cmd = [python, WORKERS[system], "--first-image", cfg_path, png]
    shown = ["python", f"latentrt/bench/systems/{WORKERS[system].name}", "--first-image", f"<{system} config>.json",
             "<out>.png"]
    return [str(c) for c in cmd], shown


def run_ttfi(cmd: Sequence[str], env: dict[str, str], png: Path, log: Path, timeout: float = WORKER_TIMEOUT_S) -> dict[str, float]:
    """Time to first image: wall-clock from starting the process to its exit, the PNG checked; and its peak RSS."""
    png.unlink(missing_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n$ {shlex.join(map(str, cmd))}\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=fh, stderr=subprocess.STDOUT, env=env)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS
        finally:
            killer.cancel()
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(map(str, cmd[:3]))}... failed (exit {proc.returncode}); its output:\n{_tail(log)}")
    if not png.is_file() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise BenchError(f"{shlex.join(map(str, cmd[:3]))}... exited without writing the PNG {png}; its output:\n{_tail(log)}")
    return {"ttfi": seconds, "ttfi_peak_rss_mb": usage.ru_maxrss / 1024.0}


def run_roof(model: Path, threads: int, workdir: Path, tag: str) -> dict:
    out = workdir / f"roof-{tag}.json"
    _run_logged([sys.executable, ROOF, "measure", model, "--threads", threads, "--out", out], workdir / "roof.log",
                env=_thread_env(threads))
    return _read_json(out)


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    import numpy as np

    from latentrt.export.validate import IMAGE_MIN_PSNR_DB, image_psnr
    from latentrt.bench.roof import build_gemm_model

    started = time.time()
    settings = resolve_settings(cfg)
    rows = bench_rows(cfg.systems, cfg.modes)
    src = Path(cfg.src).resolve()
    key_dir = cache_root(cfg.cache) / source_key(src)
    folders = ensure_exports(cfg, key_dir)
    workdir = key_dir / "runs" / time.strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    latents = rng.standard_normal(settings["latent_shape"], dtype=np.float32)
    np.save(workdir / "latents.npy", latents)
    np.save(workdir / "ttfi-latents.npy", latents[:1])  # time to first image: one image, the seed's first latents
    roof_model = build_gemm_model(workdir / "gemm.onnx")
    flops = unet_flops(settings, src, folders.get("latentrt"), workdir / "flops.log")

    worker_cfg = {
        **{k: settings[k] for k in ("prompt", "negative", "steps", "guidance", "scheduler", "threads", "height", "width",
                                    "task", "strength", "seed", "family")},
        **task_inputs(settings, workdir),
        "source": str(src),
        "folders": {k: str(v) for k, v in folders.items()},
        "latents": str(workdir / "latents.npy"),
        "batch": settings["batch"],
        "warmup": 1,
        "optimum_intel_model_cache": cfg.optimum_intel_model_cache,
    }
    load_before = os.getloadavg()
    first_loads: dict[str, float] = {}
    cold: dict[str, dict[str, Any]] = {}  # latentrt row -> its cold-cache load
    reports: dict[str, list[dict]] = {row: [] for row, _, _ in rows}
    # time to first image: text to image only (the image tasks' rows have none)
    ttfis: dict[str, list[dict]] = {row: [] for row, system, _ in rows
                                    if system in TTFI_SYSTEMS and cfg.task == "txt2img" and cfg.ttfi}
    ttfi_shown: dict[str, str] = {}
    roofs: list[dict] = []
    # The load cache of this run: a temporary folder, removed at the end whatever happens (GBs for SD 1.5)
    load_cache = Path(tempfile.mkdtemp(prefix="latentrt-bench-load-cache-"))
    warm = load_cache / "warm"
    try:
        if cfg.warmup_round:
            for row, system, _ in rows:
                if system in LATENTRT_PATHS:
                    continue  # their first process is the cold-cache load below
                cfg.progress(f"warm-up round: {system} (load only)")
                first_loads[row] = run_worker(system, {**worker_cfg, "load_only": True}, workdir, "warmup")["load"]
                cfg.progress(f"warm-up round: {system:<17} load {first_loads[row]:.2f} s (first process, discarded)")
        latentrt_rows = [(row, system, mode) for row, system, mode in rows if system in LATENTRT_PATHS]
        if latentrt_rows:
            from latentrt.bench.systems.latentrt_worker import PATHS

            _read_through(sorted({folders[PATHS[system][2]] for _, system, _ in latentrt_rows}))
        for row, system, mode in latentrt_rows:
            uses_cache = _uses_load_cache(system)
            empty = load_cache / f"cold-{_slug(system, mode)}"
            report = run_worker(system, {**worker_cfg, "load_only": True, "mode": mode, "fill_cache": uses_cache,
                                         "cache_dir": str(empty) if uses_cache else None}, workdir, "cold")
            written = _merge_cache(empty, warm) if uses_cache else 0
            if uses_cache and not written:
                raise BenchError(f"{row}: its cold load wrote no load cache into {empty} (see {workdir / _slug(system, mode)}.log)")
            cold[row] = {"load_cold": report["load"], "load_cache_written_mb": written / 2**20 if uses_cache else None,
                         "cache_fill_after_load_s": report.get("fill_cache_s") if mode != "default" else None}
            cfg.progress(f"cold load cache: {row:<38} load {report['load']:.2f} s"
                         + (f" ({written / 2**20:,.0f} MB of cache written)" if uses_cache else " (no load cache)"))

        participants: list[tuple[str, str, str] | None] = [*rows, None]  # None: the GEMM roof
        for r in range(cfg.runs):
            order = participants[r % len(participants):] + participants[: r % len(participants)]  # rotate A/B order
            for entry in order:
                if entry is None:
                    roofs.append(run_roof(roof_model, settings["threads"], workdir, f"run{r}"))
                    cfg.progress(f"run {r + 1}/{cfg.runs}: GEMM roof {roofs[-1]['gflops']:.0f} GFLOP/s")
                    continue
                row, system, mode = entry
                stem = _slug(system, mode)
                cache_dir = warm if _uses_load_cache(system) else None
                row_cfg = {**worker_cfg, "mode": mode, "cache_dir": str(cache_dir) if cache_dir else None} if system in LATENTRT_PATHS else worker_cfg
                image = workdir / f"{stem}-run{r}.npy"
                report = run_worker(system, {**row_cfg, "image_out": str(image), "run": r}, workdir, f"run{r}")
                report["image"] = str(image)
                reports[row].append(report)
                cfg.progress(
                    f"run {r + 1}/{cfg.runs}: {row:<17} load {report['load']:.2f} s, UNet {report['unet_step']:.3f} s, "
                    f"end to end {report['end_to_end']:.2f} s, peak RSS {report['peak_rss_mb']:.0f} MB"
                )
                if row not in ttfis:
                    continue
                ttfi_cfg = workdir / f"{stem}-ttfi.config.json"  # diffusers' script reads it; latentrt's CLI takes options
                ttfi_cfg.write_text(json.dumps({**row_cfg, "system": system, "latents": str(workdir / "ttfi-latents.npy")},
                                               indent=1, default=str))
                png = workdir / f"{stem}-ttfi-run{r}.png"
                cmd, shown = _ttfi_command(system, mode, settings, worker_cfg, ttfi_cfg, png, cache_dir)
                ttfi_shown[row] = shlex.join(shown)
                env = _worker_env(system, settings["threads"], _interpreter(system)[1])
                measured = run_ttfi(cmd, env, png, workdir / f"{stem}-ttfi.log")
                measured["png"] = str(png)
                ttfis[row].append(measured)
                cfg.progress(f"run {r + 1}/{cfg.runs}: {row:<17} time to first image {measured['ttfi']:.2f} s, "
                             f"peak RSS {measured['ttfi_peak_rss_mb']:.0f} MB")
    finally:
        shutil.rmtree(load_cache, ignore_errors=True)
    load_after = os.getloadavg()

    systems: dict[str, dict[str, Any]] = {}
    metrics = task_metrics(cfg.task)
    for row, system, mode in rows:
        runs = reports[row]
        stats = {m: _summary([run[m] for run in runs]) for m in metrics}
        rss = _summary([run["peak_rss_mb"] for run in runs])
        systems[row] = {
            "system": system,
            "mode": mode,
            **{m: stats[m]["median"] for m in metrics},
            "peak_rss_mb": rss["max"],
            "min": {**{m: stats[m]["min"] for m in metrics}, "peak_rss_mb": rss["min"]},
            "max": {**{m: stats[m]["max"] for m in metrics}, "peak_rss_mb": rss["max"]},
            "runs": {**{m: stats[m]["runs"] for m in metrics}, "peak_rss_mb": rss["runs"]},
            "import_s": statistics.median(run["import_s"] for run in runs),
            # the discarded warm-up round's load: a fresh process, the OS file cache cold (latentrt rows: load_cold)
            "first_load": first_loads.get(row),
            # latentrt rows: the load with an empty load cache (the row's first process) and with the filled one
            # (= load, the timed runs'); None for the systems without a load cache
            "load_cold": cold.get(row, {}).get("load_cold"),
            "load_warm": stats["load"]["median"] if row in cold else None,
            "load_cache_written_mb": cold.get(row, {}).get("load_cache_written_mb"),
            "cache_fill_after_load_s": cold.get(row, {}).get("cache_fill_after_load_s"),
            "ttfi": None,
            "ttfi_peak_rss_mb": None,
            "unet_calls_per_image": len(runs[-1]["stage_calls"]["unet_step"]),  # full UNet calls
            # DeepCache rows: the calls that ran only the shallow UNet on the cached feature
            "shallow_unet_calls_per_image": (runs[-1]["info"].get("unet_calls") or {}).get("shallow", 0),
            "vae_encode_calls_per_image": len(runs[-1]["stage_calls"].get("vae_encode", [])),
            "modules_imported": runs[-1]["modules"],
            "info": runs[-1]["info"],
        }
        if ttfis.get(row):
            t = _summary([x["ttfi"] for x in ttfis[row]])
            t_rss = _summary([x["ttfi_peak_rss_mb"] for x in ttfis[row]])
            systems[row].update(ttfi=t["median"], ttfi_peak_rss_mb=t_rss["max"])
            for key, value in (("min", (t["min"], t_rss["min"])), ("max", (t["max"], t_rss["max"])), ("runs", (t["runs"], t_rss["runs"]))):
                systems[row][key].update(ttfi=value[0], ttfi_peak_rss_mb=value[1])
        if flops.get("unet"):
            systems[row]["unet_gflops"] = flops["unet"] / stats["unet_step"]["median"] / 1e9
        if flops.get("vae_decoder"):
            systems[row]["vae_decode_gflops"] = flops["vae_decoder"] / stats["vae_decode"]["median"] / 1e9

    # image agreement against the reference (the last run's images; each system is deterministic)
    agreement: dict[str, dict[str, float]] = {}
    images = {row: np.load(reports[row][-1]["image"]) for row, _, _ in rows}
    for row, _, _ in rows:
        runs_equal = all(np.array_equal(np.load(run["image"]), images[row]) for run in reports[row])
        systems[row]["deterministic_across_runs"] = bool(runs_equal)
        if REFERENCE in images and row != REFERENCE:
            ref = images[REFERENCE]
            psnr = image_psnr(images[row], ref)
            agreement[row] = {
                "psnr_db": min(psnr, PSNR_CAP_DB),  # identical images: inf, written as the cap
                "max_abs_diff": int(np.abs(images[row].astype(np.int16) - ref.astype(np.int16)).max()),
                "image_min_psnr_db": IMAGE_MIN_PSNR_DB,
            }
        if ttfis.get(row):  # the first image is the timed run's first image (same settings and latents)
            from PIL import Image

            firsts = [np.asarray(Image.open(x["png"]).convert("RGB")) for x in ttfis[row]]
            systems[row]["ttfi_psnr_vs_run_db"] = min(min(image_psnr(f, images[row][0]), PSNR_CAP_DB) for f in firsts)
    for row, image in images.items():
        _save_png(image[0], workdir / f"{_slug(systems[row]['system'], systems[row]['mode'])}.png")

    gemm = _summary([r["gflops"] for r in roofs])
    roof = {
        "gemm": {"m": roofs[0]["m"], "k": roofs[0]["k"], "n": roofs[0]["n"], "threads": settings["threads"],
                 "gflops": gemm["median"], "gflops_min": gemm["min"], "gflops_max": gemm["max"],
                 "gflops_best_call": max(r["gflops_best"] for r in roofs), "runs": gemm["runs"]},
        "unet_flops_per_call": flops.get("unet"),
        "vae_decoder_flops_per_call": flops.get("vae_decoder"),
        "flops_source": flops.get("source"),
    }
    if "latentrt" in systems and flops.get("unet"):
        roof["latentrt_unet_gflops"] = systems["latentrt"]["unet_gflops"]
        roof["fraction_of_roof"] = systems["latentrt"]["unet_gflops"] / gemm["median"]
    for row in systems:
        if flops.get("unet"):
            systems[row]["fraction_of_roof"] = systems[row]["unet_gflops"] / gemm["median"]

    # every latentrt row (path and mode) against every other row; `fast_path` among the default-mode paths
    ratios_by_path = {row: _ratios(systems, row) for row, system, _ in rows if system in LATENTRT_PATHS}
    ratios = ratios_by_path.get("latentrt", {})
    report = {
        "schema": "latentrt-bench/1",
        "systems": systems,
        "psnr_vs_reference_db": agreement.get("latentrt", {}).get("psnr_db"),
        "max_abs_diff": agreement.get("latentrt", {}).get("max_abs_diff"),
        "agreement_vs_reference": agreement,
        "reference": REFERENCE,
        "ratios": ratios,  # against `latentrt` (ONNX Runtime fp32)
        "ratios_by_latentrt_path": ratios_by_path,
        "fast_path": _fast_path(systems, ratios_by_path, cfg.fast_path),
        "embedding": _embedding(systems, ttfi_shown),
        "roof": roof,
        "targets": _targets(ratios, roof),
        "settings": settings,
        "source": str(src),
        "folders": {k: str(v) for k, v in folders.items()},
        "machine": {**machine_info(), "threads": settings["threads"], "load_average_before": load_before,
                    "load_average_after": load_after},
        "versions": {"harness": harness_versions(), **{s: v["info"].get("versions") for s, v in systems.items()}},
        "command": cfg.command,
        "note": cfg.note,
        "workdir": str(workdir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": time.time() - started,
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
    return json.loads(json.dumps(report, default=_json_default))  # plain JSON types only


def _embedding(systems: dict[str, dict], ttfi_commands: dict[str, str]) -> dict[str, Any]:
    """Issue 10's figures per row: load with a cold and a warm cache, time to first image, peak RSS; and the
    ratios of TTFI and peak RSS to the reference's (row / diffusers: < 1 is faster, or less memory)."""
    ref = systems.get(REFERENCE)
    vs: dict[str, dict[str, float | None]] = {}
    if ref is not None:
        for row, system in systems.items():
            if row == REFERENCE:
                continue
            vs[row] = {
                "ttfi": system["ttfi"] / ref["ttfi"] if system.get("ttfi") and ref.get("ttfi") else None,
                "peak_rss": system["peak_rss_mb"] / ref["peak_rss_mb"],
                "ttfi_peak_rss": (system["ttfi_peak_rss_mb"] / ref["ttfi_peak_rss_mb"]
                                  if system.get("ttfi_peak_rss_mb") and ref.get("ttfi_peak_rss_mb") else None),
            }
    return {
        "rows": {row: {k: system.get(k) for k in EMBEDDING_FIELDS} for row, system in systems.items()},
        "vs_reference": vs,
        "ttfi_commands": ttfi_commands,
        "load_cache": ("a temporary folder made for the run and removed after it; each latentrt row's first process "
                       "(load_cold) loads with an empty one of its own, the timed runs (load = load_warm) and the "
                       "TTFI processes with the entries those loads wrote; OpenVINO rows use none (compiled-model "
                       "cache opt-in, off)"),
        "load_includes": "Pipeline.from_folder + pipe.compile(height, width, batch, guidance)",
        "ttfi": ("wall-clock from starting a fresh process to its exit, the PNG written and checked: one image at "
                 "the bench's size, steps, guidance, scheduler and seed, with the warm load cache"),
    }


EMBEDDING_FIELDS = ("system", "mode", "load_cold", "load_warm", "ttfi", "peak_rss_mb", "ttfi_peak_rss_mb",
                    "load_cache_written_mb", "cache_fill_after_load_s", "ttfi_psnr_vs_run_db")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _save_png(image, path: Path) -> None:
    try:
        from PIL import Image

        Image.fromarray(image).save(path)
    except Exception:  # the PNG is a convenience for a human looking at the workdir
        pass


def _ratios(systems: dict[str, dict], ours_name: str = "latentrt") -> dict[str, Any]:
    """Against every other system: `speedup`, its median time / ours (> 1: ours is faster); `rss`: ours / its."""
    if ours_name not in systems:
        return {}
    ours = systems[ours_name]
    out = {}
    for other, theirs in systems.items():
        if other == ours_name:
            continue
        out[other] = {
            "speedup": {m: theirs[m] / ours[m] for m in IMAGE_METRICS if m in ours and m in theirs and ours[m] > 0},
            "peak_rss_ratio": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
        }
    return out


def _fast_path(systems: dict[str, dict], ratios_by_path: dict[str, dict], chosen: str | None) -> dict[str, Any] | None:
    """Issue 9's figures for latentrt's fastest path in this run: against PyTorch fp32, PyTorch bf16, optimum-intel.

    The path is `chosen` (BenchConfig.fast_path), else the latentrt path with the lowest end-to-end median.
    "Selectable" (issue 9: within its quality gate) is the caller's call: leave a path that misses its gate out
    of --systems, or name the path with fast_path.
    """
    paths = [p for p in LATENTRT_PATHS if p in systems]
    if chosen is not None and chosen not in paths:
        raise BenchError(f"fast path {chosen!r} is not among the latentrt paths run ({', '.join(paths) or 'none'})")
    if not paths:
        return None
    path = chosen or min(paths, key=lambda p: systems[p]["end_to_end"])
    figures = []
    for metric, other, goal in FAST_PATH_TARGETS:
        value = ratios_by_path[path].get(other, {}).get("speedup", {}).get(metric)
        figures.append({"metric": metric, "vs": other, "speedup": value, "goal": goal,
                        "met": None if goal is None or value is None else value >= goal})
    return {"system": path, "precision": systems[path]["info"].get("precision"),
            "chosen_by": "named" if chosen else "lowest end-to-end median of the latentrt paths run",
            "figures": figures}


def _targets(ratios: dict, roof: dict) -> dict[str, Any]:
    ref = ratios.get(REFERENCE)
    out: dict[str, Any] = {}
    if ref:
        pairs = (
            ("unet_speedup_vs_diffusers", ref["speedup"].get("unet_step"), True),
            ("end_to_end_speedup_vs_diffusers", ref["speedup"].get("end_to_end"), True),
            ("peak_rss_ratio_vs_diffusers", ref["peak_rss_ratio"], False),
        )
        for name, value, at_least in pairs:
            goal = TARGETS[name]
            out[name] = {"goal": goal, "measured": value, "met": value is not None and (value >= goal if at_least else value <= goal)}
    if roof.get("fraction_of_roof") is not None:
        value = roof["fraction_of_roof"]
        out["fraction_of_gemm_roof"] = {"goal": TARGETS["fraction_of_gemm_roof"], "measured": value,
                                        "met": value >= TARGETS["fraction_of_gemm_roof"]}
    if "optimum" in ratios:
        slower = [m for m, v in ratios["optimum"]["speedup"].items() if v < 1.0]
        out["faster_than_optimum_on_every_component"] = {"met": not slower, "slower_on": slower}
    return out


# ------------------------------------------------------------------------------------------ output

FAST_PATH_COLUMNS = (("diffusers", "PyTorch fp32"), ("diffusers-bf16", "PyTorch bf16 autocast"), ("optimum-intel", "optimum-intel"))


def _fast_path_lines(fast: dict | None) -> list[str]:
    """The issue-9 table: the fastest latentrt path's speed-ups, with each goal met or missed."""
    if not fast:
        return []
    cells = {(f["metric"], f["vs"]): f for f in fast["figures"]}
    lines = [
        f"**Fastest latentrt path: `{fast['system']}`** ({fast['precision'] or 'fp32'}; {fast['chosen_by']}) against what a "
        "user would pick instead: the other system's time / latentrt's (> 1: latentrt faster). Issue 9's figures "
        "(for W3), reported, not asserted.",
        "",
        "| | " + " | ".join(f"vs {label}" for _, label in FAST_PATH_COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in FAST_PATH_COLUMNS) + " |",
    ]
    for metric in ("unet_step", "end_to_end", "load"):
        row = []
        for other, _ in FAST_PATH_COLUMNS:
            f = cells.get((metric, other))
            if f is None or f["speedup"] is None:
                row.append("–" if f is None or f["goal"] is None else f"not run (goal ≥ {f['goal']:g}x)")
                continue
            text = f"{f['speedup']:.2f}x"
            if f["goal"] is not None:
                text += f" (goal ≥ {f['goal']:g}x: {'met' if f['met'] else 'missed'})"
            row.append(text)
        lines.append(f"| {METRIC_LABELS[metric]} | " + " | ".join(row) + " |")
    lines += ["", "Load ≥ 1x against optimum-intel means latentrt loads in at most optimum-intel's time.", ""]
    return lines



def _seconds(value: float) -> str:
    return f"{_fmt_s(value)}{'' if _fmt_s(value).endswith('ms') else ' s'}"


def _embedding_lines(report: dict) -> list[str]:
    """Issue 10's table: load with a cold and a warm cache, time to first image and peak RSS per row and mode."""
    emb, systems = report.get("embedding"), report["systems"]
    if not emb:
        return []
    vs = emb.get("vs_reference", {})
    ref = report.get("reference", REFERENCE)
    have_ref = ref in systems
    head = ["system (mode)", "load, cold cache", "load, warm cache", "time to first image", "peak RSS",
            "peak RSS, TTFI process"] + ([f"TTFI / {ref}", f"peak RSS / {ref}"] if have_ref else [])
    lines = [
        "**Load, time to first image (TTFI), peak RSS** per row and mode (issue 10; modes: "
        + ", ".join(report["settings"].get("modes", ["default"])) + ").",
        "",
        "| " + " | ".join(head) + " |",
        "| --- | " + " | ".join("---:" for _ in head[1:]) + " |",
    ]
    for name, system in systems.items():
        latentrt_row = system.get("system", name) in LATENTRT_PATHS
        cold = _seconds(system["load_cold"]) if system.get("load_cold") is not None else "–"
        written = system.get("load_cache_written_mb")
        if latentrt_row and written and system.get("cache_fill_after_load_s") is not None:  # low_memory: nothing opened
            cold += (f" (opens no network; opening the three after it, cold cache: {_seconds(system['cache_fill_after_load_s'])}, "
                     f"{written:,.0f} MB written)")
        elif latentrt_row and written:
            cold += f" ({written:,.0f} MB written)"
        elif latentrt_row:
            cold += " (no load cache)"
        warm = _cell(system, "load") + ("" if latentrt_row else " (no load cache)")
        ttfi = _cell(system, "ttfi") if system.get("ttfi") is not None else "not measured"
        ttfi_rss = f"{system['ttfi_peak_rss_mb']:,.0f} MB" if system.get("ttfi_peak_rss_mb") is not None else "–"
        cells = [name, cold, warm, ttfi, _cell(system, "peak_rss_mb"), ttfi_rss]
        if have_ref:
            ratio = vs.get(name, {})
            cells += ["1" if name == ref else (f"{ratio['ttfi']:.2f}x" if ratio.get("ttfi") else "–"),
                      "1" if name == ref else (f"{ratio['peak_rss']:.2f}" if ratio.get("peak_rss") else "–")]
        lines.append("| " + " | ".join(cells) + " |")
    modes = report["settings"].get("modes", ["default"])
    lines += [
        "",
        "Load = `Pipeline.from_folder` + `pipe.compile(height, width, batch, guidance)` at the bench's size, in a new "
        "process. **Cold cache**: the row's first process, with an empty load-cache folder made for it (ONNX Runtime "
        "optimizes each network and writes its optimized copy with prepacked weights: the MB written), one sample, "
        "after the model's files were read into the OS file cache. **Warm cache**: the main table's `load`, the timed "
        "runs' (each a new process on the cache the cold load filled). The cache folders are temporary, removed after "
        "the run. OpenVINO rows use no load cache (their compiled-model cache is opt-in and off, as by default): "
        "both their loads compile the networks.",
    ]
    if "low_memory" in modes:
        lines += [
            "",
            "`low_memory` (Pipeline(low_memory=True): one network resident at a time) opens no network at load, and "
            "`pipe.compile` has nothing to compile: its load is the folder and the tokenizer; each network is opened "
            "when a stage needs it and released after (from the load cache on ONNX Runtime; compiled again on "
            "OpenVINO), in end to end and TTFI. Its cold row opened each network once after the timed load, untimed, "
            "to fill the cache.",
        ]
    lines += [""] if not any(system.get("ttfi") for system in systems.values()) else [
        "",
        "**Time to first image**: wall-clock from starting a fresh process to its exit with the PNG written (checked), "
        "one image at the bench's size, steps, guidance, scheduler and seed (the same latents), measured in every run "
        "after the row's timed run, the load cache warm: `latentrt generate` for latentrt rows (the commands are in "
        "the JSON, `embedding.ttfi_commands`), a script doing the folder's pipeline class' `from_pretrained` "
        f"({_diffusers_pipeline(report)}) + one "
        "pipeline call + the PNG for diffusers; not measured for the peers. Peak RSS, TTFI process: that process's "
        f"ru_maxrss. Ratios: the row's figure / the reference's ({ref}; < 1: faster, or less memory).",
        "",
    ]
    return lines


def _fmt_s(value: float) -> str:
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value >= 0.01:
        return f"{value:.3f}"
    return f"{value * 1000:.2f} ms"


def _cell(system: dict, metric: str) -> str:
    med, lo, hi = system[metric], system["min"][metric], system["max"][metric]
    if metric.endswith("_mb"):  # peak RSS, GPU memory
        return f"{med:,.0f} MB ({lo:,.0f}–{hi:,.0f})"
    unit = "" if _fmt_s(med).endswith("ms") else " s"
    return f"{_fmt_s(med)}{unit} ({_fmt_s(lo)}–{_fmt_s(hi)})"


def _diffusers_pipeline(report: dict) -> str:
    """The diffusers class the reference loaded (StableDiffusionPipeline for older reports)."""
    for system in report["systems"].values():
        if system.get("system") in ("diffusers", "diffusers-bf16") and system["info"].get("pipeline"):
            return system["info"]["pipeline"]
    return "StableDiffusionXLPipeline" if report["settings"].get("family") == "sdxl" else "StableDiffusionPipeline"


def _task_line(s: dict, systems: dict[str, dict]) -> str:
    """The image tasks' inputs and what differs from text to image; empty for txt2img."""
    task = s.get("task", "txt2img")
    if task == "txt2img":
        return ""
    xl = "XL" if s.get("family") == "sdxl" else ""
    what = (f"image to image (StableDiffusion{xl}Img2ImgPipeline for diffusers)" if task == "img2img" else
            f"inpainting with the plain 4-channel UNet (StableDiffusion{xl}InpaintPipeline for diffusers; the unmasked region "
            "replaced by the image's latents noised to the next timestep after every step)")
    return (f"**Task: {task}**, {what}, strength {s['strength']:g}: int({s['steps']} x {s['strength']:g}) = "
            f"{int(s['steps'] * s['strength'])} of the {s['steps']} steps run. Init image: a synthetic picture rendered "
            f"by the harness at {s['width']}x{s['height']} ({INIT_IMAGE} in the run folder)"
            + (f", mask: a centred rectangle of half the width and height, white = repaint ({MASK_IMAGE})" if task == "inpaint" else "")
            + ". Every system draws the VAE posterior sample and the noise from NumPy with the seed, in latentrt's order "
            "(diffusers' randn_tensor replaced), so the images are comparable. `VAE encode` = median of the VAE "
            "encoder calls (per image: "
            + ", ".join(f"{name} {system.get('vae_encode_calls_per_image', '?')}" for name, system in systems.items())
            + "). latentrt's load opens no VAE encoder (neither Pipeline() nor compile() does): its first call, in the "
            "untimed warm-up, opens it (OpenVINO: compiles it; `info.vae_encoder_first_call_s` in the JSON). Time to "
            "first image is measured for txt2img only.")


def render_markdown(report: dict[str, Any], title: str | None = None) -> str:
    s, systems = report["settings"], report["systems"]
    m = report["machine"]
    metrics = tuple(s.get("metrics", METRICS))
    lines = []
    if title:
        lines += [f"# {title}", ""]
    task_line = _task_line(s, systems)
    lines += [
        f"{s['height']}x{s['width']}, batch {s['batch']}, {s['steps']} steps of {s['scheduler']}, guidance {s['guidance']:g}"
        f"{' (CFG: UNet batch ' + str(s['unet_batch']) + ')' if s['cfg'] else ''}, fp32 weights on CPU (compute precision "
        f"per system below), {s['threads']} threads; "
        f"{s['runs']} runs, median (min–max).",
        "",
        *([task_line, ""] if task_line else []),
        "| system | " + " | ".join(METRIC_LABELS[k] for k in (*metrics, "peak_rss_mb")) + " |",
        "| --- | " + " | ".join("---:" for _ in (*metrics, "peak_rss_mb")) + " |",
    ]
    for name, system in systems.items():
        lines.append(f"| {name} | " + " | ".join(_cell(system, k) for k in (*metrics, "peak_rss_mb")) + " |")
    for path, ratios in report.get("ratios_by_latentrt_path", {"latentrt": report["ratios"]}).items():
        for other, ratio in ratios.items():
            if systems.get(other, {}).get("system", other) in LATENTRT_PATHS:  # paths and modes against each other: in the JSON
                continue
            cells = [f"{ratio['speedup'][k]:.2f}x" for k in metrics] + [f"{ratio['peak_rss_ratio']:.2f}"]
            lines.append(f"| {other} / {path} (time), {path} / {other} (RSS) | " + " | ".join(cells) + " |")
    lines.append("")
    precisions = {name: system["info"].get("precision") for name, system in systems.items()}
    if any(precisions.values()):
        lines += ["**Precision** (what each system computes in; every one loads fp32 weights): " + "; ".join(
            f"{name}: {value or 'fp32'}" for name, value in precisions.items()) + ".", ""]
    first = {name: system.get("first_load") for name, system in systems.items() if system.get("first_load")}
    if first:
        lines += ["**First load** (the discarded warm-up round: a fresh process, the OS file cache cold for the model's "
                  "files; latentrt's OpenVINO paths and optimum-intel compile in every load, neither using a compiled-model "
                  "cache on CPU by default): " + "; ".join(
                      f"{name} {_fmt_s(value)}{'' if _fmt_s(value).endswith('ms') else ' s'}" for name, value in first.items()) + ".", ""]
    lines += _embedding_lines(report)
    lines += _fast_path_lines(report.get("fast_path"))
    roof = report["roof"]
    if roof.get("unet_flops_per_call"):
        g = roof["gemm"]
        lines += [
            f"**Roof.** ONNX Runtime fp32 GEMM ({g['m']}x{g['k']} @ {g['k']}x{g['n']}, {g['threads']} threads, measured in "
            f"every run): {g['gflops']:.0f} GFLOP/s ({g['gflops_min']:.0f}–{g['gflops_max']:.0f}). One UNet call = "
            f"{roof['unet_flops_per_call'] / 1e9:.1f} GFLOP ({roof['flops_source']}).",
            "",
            "| system | UNet GFLOP/s | fraction of the GEMM roof | VAE decode GFLOP/s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, system in systems.items():
            vae = f"{system['vae_decode_gflops']:.0f}" if system.get("vae_decode_gflops") else "–"
            lines.append(f"| {name} | {system['unet_gflops']:.0f} | {system['fraction_of_roof']:.0%} | {vae} |")
        lines.append("")
    if report["agreement_vs_reference"]:
        inputs = "same latents" if s.get("task", "txt2img") == "txt2img" else "same image, mask, strength and NumPy noise"
        lines.append(f"**Image agreement** with diffusers (uint8, {inputs}): " + "; ".join(
            f"{name}: PSNR {a['psnr_db']:.1f} dB, max abs diff {a['max_abs_diff']}"
            for name, a in report["agreement_vs_reference"].items()
        ) + f" (parity threshold {next(iter(report['agreement_vs_reference'].values()))['image_min_psnr_db']:g} dB).")
        lines.append("")
    if report["targets"]:
        lines.append("**Issue 5 figures** (reported, not asserted):")
        lines.append("")
        for name, t in report["targets"].items():
            if "goal" in t:
                comparison = "≤" if name.startswith("peak_rss") else "≥"
                value = f"{t['measured']:.0%}" if name == "fraction_of_gemm_roof" else f"{t['measured']:.2f}"
                goal = f"{t['goal']:.0%}" if name == "fraction_of_gemm_roof" else f"{t['goal']:g}"
                lines.append(f"- {name.replace('_', ' ')}: {value} (goal {comparison} {goal}) — {'met' if t['met'] else 'missed'}")
            else:
                lines.append(f"- faster than optimum on every component: {'yes' if t['met'] else 'no, slower on ' + ', '.join(t['slower_on'])}")
        lines.append("")
    cached = {row: r for row, r in report["systems"].items() if r.get("shallow_unet_calls_per_image")}
    if cached:
        lines += ["**DeepCache rows** (`--cache-interval`): the UNet calls each generation ran, full + shallow (the "
                  "shallow UNet on the cached feature); `UNet call` above is the full call's median. "
                  + "; ".join(f"{row}: {r['unet_calls_per_image']} + {r['shallow_unet_calls_per_image']}"
                              for row, r in cached.items())
                  + "; every uncached row: " + ", ".join(sorted({str(r["unet_calls_per_image"]) for row, r in report["systems"].items()
                                                                  if row not in cached})) + " full.", ""]
    lines += [
        f"**Machine.** {m['cpu_model']}, {m['logical_cores']} logical cores"
        + (f" ({m['physical_cores']} physical)" if m.get("physical_cores") else "")
        + f", {m['memory_gb']} GB; {m['platform']}. Load average before/after: "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_before'])} / {', '.join(f'{x:.1f}' for x in m['load_average_after'])}.",
        "",
        "**Versions.** " + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in (vers or {}).items() if v) for name, vers in report["versions"].items()
        ),
        "",
        f"**Command.** `{report['command']}`",
        "",
    ]
    if report.get("note"):
        lines += [f"**Conditions.** {report['note']}", ""]
    lines += [
        "Each system runs in a fresh process per run (load timed in a new process, warm OS file cache), one "
        "untimed warm-up call of each component, then one timed generation whose stages are timed inside it; "
        "systems interleaved, order rotated each run. `text encoder` = tokenize + encode prompt and negative "
        "prompt; `UNet call` = median of the loop's UNet calls (CFG batch); peak RSS = ru_maxrss of the "
        f"system's process. Prompt: \"{s['prompt']}\", negative: "
        f"\"{s['negative']}\", seed {s['seed']} ("
        + ("initial latents shared as .npy" if s.get("task", "txt2img") == "txt2img" else "every system's NumPy noise") + ").",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m latentrt.bench.harness", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--systems", default="latentrt,diffusers")
    p.add_argument("--modes", default="default", help=f"comma-separated, from: {', '.join(MODES)}")
    p.add_argument("--task", default="txt2img", choices=TASKS)
    p.add_argument("--strength", type=float, default=None, help=f"image tasks only (default {DEFAULT_STRENGTH:g})")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--title", default=None)
    p.add_argument("--note", default=None)
    p.add_argument("--optimum-intel-model-cache", action="store_true",
                   help="give optimum-intel an OpenVINO CACHE_DIR (its CPU default is none: every load compiles)")
    p.add_argument("--fast-path", default=None, choices=LATENTRT_PATHS,
                   help="the latentrt path for the issue-9 table (default: the lowest end to end)")
    args = p.parse_args(argv)
    cfg = BenchConfig(
        src=args.src, steps=args.steps, height=args.height, width=args.width, runs=args.runs, guidance=args.guidance,
        scheduler=args.scheduler, threads=args.threads, systems=tuple(s.strip() for s in args.systems.split(",") if s.strip()),
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        cache=args.cache, note=args.note, optimum_intel_model_cache=args.optimum_intel_model_cache,
        task=args.task, strength=args.strength,
        fast_path=args.fast_path, command="python -m latentrt.bench.harness " + shlex.join(sys.argv[1:] if argv is None else argv),
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    report = run_bench(cfg)
    write_outputs(report, args.json, args.markdown, args.plot, args.title)
    print(render_markdown(report, args.title))


def write_outputs(report: dict, json_path: Path | None, markdown_path: Path | None, plot_path: Path | None,
                  title: str | None = None) -> None:
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1) + "\n")
    if plot_path:
        from latentrt.bench.plot import plot

        plot(report, Path(plot_path), title)
    if markdown_path:
        text = render_markdown(report, title)
        if plot_path:
            rel = os.path.relpath(Path(plot_path).resolve(), Path(markdown_path).resolve().parent)
            text += f"\n![time per component and peak memory]({rel})\n"
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_path).write_text(text)


if __name__ == "__main__":
    main()
