"""What a benchmark runs: the systems, modes, tasks and metrics it knows, its configuration (BenchConfig), and the
settings resolved from a configuration and the model folder, checked before anything runs (resolve_settings).
Also the inputs every system shares: the image tasks' init image and mask, and the UNet's FLOPs at the bench's size.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from latentrt.bench.peers import PEERS, no_peers_message, peers_available
from latentrt.runtime.defaults import DEFAULT_STRENGTH

SYSTEMS = ("latentrt", "latentrt-openvino", "latentrt-int8", "latentrt-openvino-int8", "diffusers", "diffusers-bf16",
           "optimum", "optimum-intel")
LATENTRT_PATHS = ("latentrt", "latentrt-openvino", "latentrt-int8", "latentrt-openvino-int8")
# latentrt's modes (--modes): each latentrt path runs once per mode, as a row of its own; and once per DeepCache
# interval N (--cache-interval, an int end to end): the default mode with one full UNet call in N (the export then
# includes the shallow UNet), its row's mode labelled "cacheN" in the report
MODES = ("default", "low_memory")
# --vae: each system runs once per VAE, as a row of its own: "full" (the model's AutoencoderKL) and "tiny" (a tiny
# autoencoder, diffusers' AutoencoderTiny: TAESD / TAESDXL; latentrt's vae_decoder_tiny/, diffusers' pipe.vae
# replaced, optimum-intel's vae_decoder replaced by its OpenVINO IR as FastSD CPU does)
VAES = ("full", "tiny")
TINY_VAE_SYSTEMS = (*LATENTRT_PATHS, "diffusers", "diffusers-bf16", "optimum-intel")
# systems whose time to first image is measured (latentrt's CLI; diffusers' worker with --first-image)
TTFI_SYSTEMS = (*LATENTRT_PATHS, "diffusers", "diffusers-bf16", "optimum-intel")
REFERENCE = "diffusers"
METRICS = ("load", "text_encoder", "unet_step", "vae_decode", "end_to_end")
# --task: text to image (METRICS), or the image tasks, which also time the VAE encoder (IMAGE_METRICS), or text to
# image with one ControlNet (--controlnet DIR), which also times the ControlNet's calls (CONTROLNET_METRICS)
TASKS = ("txt2img", "img2img", "inpaint", "controlnet")
IMAGE_METRICS = ("load", "text_encoder", "vae_encode", "unet_step", "vae_decode", "end_to_end")
CONTROLNET_METRICS = ("load", "text_encoder", "controlnet_step", "unet_step", "vae_decode", "end_to_end")
ALL_METRICS = ("load", "text_encoder", "vae_encode", "controlnet_step", "unet_step", "vae_decode", "end_to_end")
# the systems whose workers run a ControlNet (diffusers: StableDiffusionControlNetPipeline; latentrt's int8 folders
# are quantized without ControlNets)
CONTROLNET_SYSTEMS = ("latentrt", "latentrt-openvino", "diffusers", "diffusers-bf16")
CONTROL_IMAGE = "control.png"  # --task controlnet: the control map every system gets, beside latents.npy
# the systems whose workers run the image tasks (the peers' workers do text to image only)
IMAGE_TASK_SYSTEMS = (*LATENTRT_PATHS, "diffusers", "diffusers-bf16")
# the systems whose workers run an SDXL folder (optimum's worker loads SD 1.x/2.x pipeline classes only)
SDXL_SYSTEMS = (*LATENTRT_PATHS, "diffusers", "diffusers-bf16", "optimum-intel")
INIT_IMAGE, MASK_IMAGE = "init.png", "mask.png"  # the image tasks' inputs, beside latents.npy in the run folder
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, sharp focus"
DEFAULT_NEGATIVE = "blurry, low quality"
# What a system's worker imports beyond latentrt's own dependencies
SYSTEM_MODULES = {"diffusers": ("torch", "diffusers", "transformers"), "diffusers-bf16": ("torch", "diffusers", "transformers")}


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
    cache_intervals: tuple[int, ...] = ()  # DeepCache: each latentrt path also runs once per interval N >= 2
    vaes: tuple[str, ...] = ("full",)  # VAES: every row runs once per VAE ("tiny": the tiny autoencoder)
    tiny_vae: Path | None = None  # the AutoencoderTiny folder of the "tiny" rows (a latentrt SRC holds its own)
    prompt: str = DEFAULT_PROMPT
    negative: str = DEFAULT_NEGATIVE
    seed: int = 0
    batch: int = 1
    task: str = "txt2img"  # TASKS; img2img and inpaint start from the harness's init image (and mask)
    strength: float | None = None  # the image tasks' strength, default the task's (runtime/defaults.py); txt2img takes none
    controlnet: Path | str | None = None  # --task controlnet: a diffusers ControlNetModel folder (a latentrt SRC: a name)
    cache: Path | None = None  # default: $LATENTRT_CACHE/bench or ~/.cache/latentrt/bench
    warmup_round: bool = True
    optimum_folder: str = "own"  # "own": optimum's export; "latentrt": latentrt's folder
    optimum_intel_model_cache: bool = False  # True: OpenVINO CACHE_DIR for optimum-intel (off by its default on CPU)
    fast_path: str | None = None  # the latentrt path the issue-9 figures are for; default: lowest end to end
    ttfi: bool = True  # time to first image in every run (False: not measured, for long settings)
    command: str | None = None  # the exact command line, recorded in the report
    note: str | None = None  # conditions worth recording (machine load, ...)
    progress: Callable[[str], None] = field(default=lambda message: None, repr=False)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def is_model_folder(src: Path) -> bool:
    """A latentrt model folder (ONNX graphs, what `latentrt export` writes), not a diffusers folder."""
    return (Path(src) / "unet" / "model.onnx").is_file()


def cache_mode(cache_interval: int) -> str:
    """The report's mode label of a DeepCache row (written, never parsed back: the interval travels as an int)."""
    return f"cache{cache_interval}"


def vae_mode(mode: str, vae: str = "full") -> str:
    """The mode label of a row with the tiny VAE: "tiny" for the default mode, else "mode+tiny" (written, never parsed)."""
    if vae == "full":
        return mode
    return vae if mode == "default" else f"{mode}+{vae}"


def row_name(system: str, mode: str = "default", cache_interval: int = 1, vae: str = "full") -> str:
    """A row's name in the report and the tables: the path for the default mode, else "path (mode)"; " + tiny VAE"
    for the tiny VAE's rows."""
    suffix = "" if vae == "full" else f" + {vae} VAE"
    if cache_interval > 1:
        return f"{system} (cache interval {cache_interval}){suffix}"
    return (system if mode == "default" else f"{system} ({mode})") + suffix


def slug(system: str, mode: str = "default", cache_interval: int = 1, vae: str = "full") -> str:
    """A row's file-name stem in the workdir: the system, with `.mode` for the other modes (`.cacheN` for DeepCache),
    `.tiny` for the tiny VAE."""
    mode = vae_mode(cache_mode(cache_interval) if cache_interval > 1 else mode, vae)
    return system if mode == "default" else f"{system}.{mode}"


def bench_rows(systems: Sequence[str], modes: Sequence[str], cache_intervals: Sequence[int] = (),
               vaes: Sequence[str] = ("full",)) -> list[tuple[str, str, str]]:
    """(row, system, mode label) in --systems order, then --vae order: each latentrt path once per mode and once per
    DeepCache interval (mode cache_mode(N)), every other system once; each of those once per VAE (vae_mode)."""
    rows = []
    for system in systems:
        for vae in vaes:
            if system not in LATENTRT_PATHS:
                rows.append((row_name(system, vae=vae), system, vae_mode("default", vae)))
                continue
            rows += [(row_name(system, mode, vae=vae), system, vae_mode(mode, vae)) for mode in modes]
            rows += [(row_name(system, "default", n, vae), system, vae_mode(cache_mode(n), vae)) for n in cache_intervals]
    return rows


def row_modes(cfg: BenchConfig) -> dict[str, dict[str, Any]]:
    """A row's mode label -> what its worker runs: the Pipeline mode, the DeepCache interval (an int) and the VAE
    ("full" or "tiny"); the systems other than latentrt's read the VAE only."""
    labels = {**{mode: {"mode": mode, "cache_interval": 1} for mode in cfg.modes},
              **{cache_mode(n): {"mode": "default", "cache_interval": n} for n in cfg.cache_intervals}}
    labels.setdefault("default", {"mode": "default", "cache_interval": 1})  # the other systems' rows
    return {vae_mode(label, vae): {**what, "vae": vae} for label, what in labels.items() for vae in cfg.vaes}


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
        raise BenchError(no_peers_message(peers))
    for system in cfg.systems:
        missing = missing_modules(SYSTEM_MODULES.get(system, ()))
        if missing:
            raise BenchError(f"{system} needs {', '.join(missing)}, not installed here: pip install 'latentrt[export]', "
                             "or leave it out of --systems")
    bad_modes = [m for m in cfg.modes if m not in MODES]
    if bad_modes or not cfg.modes:
        raise BenchError(f"unknown modes {bad_modes or '(none)'}: --modes takes a comma-separated list of {', '.join(MODES)}")
    bad_intervals = [n for n in cfg.cache_intervals if isinstance(n, bool) or not isinstance(n, int) or n < 2]
    if bad_intervals:
        raise BenchError(f"--cache-interval takes whole numbers >= 2 (1 is the uncached row, --modes default), got {bad_intervals[0]!r}")
    if len(set(cfg.cache_intervals)) != len(cfg.cache_intervals):
        raise BenchError(f"--cache-interval names an interval twice: {', '.join(map(str, cfg.cache_intervals))}")
    if model_folder and cfg.cache_intervals and not ((src / "manifest.json").is_file() and "deepcache" in read_json(src / "manifest.json")):
        raise BenchError(f"{src} has no DeepCache shallow UNet, which --cache-interval needs: export it with "
                         "`latentrt export --deepcache`, or give the diffusers folder (the bench exports it so)")
    if len(set(cfg.modes)) != len(cfg.modes):
        raise BenchError(f"--modes names a mode twice: {', '.join(cfg.modes)}")
    if cfg.fast_path is not None and (cfg.fast_path not in LATENTRT_PATHS or cfg.fast_path not in cfg.systems):
        raise BenchError(f"fast path {cfg.fast_path!r} must be one of the latentrt paths in --systems")
    if cfg.fast_path is not None and "default" not in cfg.modes:
        raise BenchError("the fast path is a default-mode row: add default to --modes")
    if cfg.optimum_folder not in ("own", "latentrt"):
        raise BenchError(f"--optimum-folder takes own or latentrt, got {cfg.optimum_folder!r}")
    for name, value in (("steps", cfg.steps), ("runs", cfg.runs), ("batch", cfg.batch)):
        if value < 1:
            raise BenchError(f"--{name} must be at least 1, got {value}")
    strength = check_task(cfg, src, model_folder)
    family = check_family(cfg, src)
    check_controlnet(cfg, src, model_folder, family)
    check_vaes(cfg, src, model_folder)
    unet = read_json(src / "unet" / "config.json")
    vae = read_json(src / ("vae_decoder" if model_folder else "vae") / "config.json")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    native = int(unet["sample_size"]) * factor
    height, width = cfg.height or native, cfg.width or native
    for name, value in (("height", height), ("width", width)):
        if value % factor:
            raise BenchError(f"--{name} must be a multiple of {factor} for this model, got {value}")
    scheduler_config = read_json(src / "scheduler" / "scheduler_config.json")
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
        "controlnet": controlnet_name(cfg),
        "family": family,
        "metrics": list(task_metrics(cfg.task)),
        "warmup": "a discarded load-only round; in every run, one call of each component before timing",
        "systems": list(cfg.systems),
        "modes": [*cfg.modes, *map(cache_mode, cfg.cache_intervals)],
        "rows": [row for row, _, _ in bench_rows(cfg.systems, cfg.modes, cfg.cache_intervals, cfg.vaes)],
        "vaes": list(cfg.vaes),
        "dtype": "float32",
        "device": "cpu",
        "downsampling": 2 ** (len(unet["block_out_channels"]) - 1),
    }


def check_family(cfg: BenchConfig, src: Path) -> str:
    """The model's family ("sd" or "sdxl", protocol.model_family), checked against the systems and the task."""
    from latentrt.bench.systems.protocol import model_family

    family = model_family(src)
    if family != "sdxl":
        return family
    unable = [s for s in cfg.systems if s not in SDXL_SYSTEMS]
    if unable:
        one = len(unable) == 1
        raise BenchError(f"{', '.join(unable)} cannot run {src}, an SDXL model: {'its worker runs' if one else 'their workers run'} "
                         f"Stable Diffusion 1.x/2.x pipelines only (ORTStableDiffusionPipeline); "
                         f"leave {'it' if one else 'them'} out of --systems (SDXL runs {', '.join(SDXL_SYSTEMS)})")
    index = src / "model_index.json"
    if cfg.task == "txt2img" and index.is_file() and read_json(index).get("requires_aesthetics_score"):
        raise BenchError(f"{src} is an SDXL refiner (requires_aesthetics_score, no text-to-image pipeline): it runs "
                         "--task img2img or --task inpaint only")
    return family


def check_vaes(cfg: BenchConfig, src: Path, model_folder: bool) -> None:
    """--vae and --tiny-vae checked against the systems and the model: the tiny rows need an AutoencoderTiny folder
    of the UNet's latent channels (a latentrt SRC: its own vae_decoder_tiny/)."""
    bad = [v for v in cfg.vaes if v not in VAES]
    if bad or not cfg.vaes:
        raise BenchError(f"unknown VAE {bad[0] if bad else '(none)'!r}: --vae takes a comma-separated list of {', '.join(VAES)}")
    if len(set(cfg.vaes)) != len(cfg.vaes):
        raise BenchError(f"--vae names a VAE twice: {', '.join(cfg.vaes)}")
    if "tiny" not in cfg.vaes:
        if cfg.tiny_vae is not None:
            raise BenchError("--tiny-vae gives the tiny rows' AutoencoderTiny: add --vae full,tiny (or --vae tiny)")
        return
    unable = [s for s in cfg.systems if s not in TINY_VAE_SYSTEMS]
    if unable:
        raise BenchError(f"{', '.join(unable)} has no tiny VAE row: leave it out of --systems or --vae tiny out "
                         f"(the tiny VAE runs on {', '.join(TINY_VAE_SYSTEMS)})")
    if cfg.task != "txt2img":
        raise BenchError(f"--vae tiny times text to image only (the tiny VAE's decoder), not --task {cfg.task}")
    unet = read_json(src / "unet" / "config.json")
    if model_folder:
        if not (src / "vae_decoder_tiny" / "model.onnx").is_file():
            raise BenchError(f"{src} has no tiny VAE (vae_decoder_tiny/), which --vae tiny needs: add one with "
                             "`latentrt add-tiny-vae MODEL TINY_VAE`, or give the diffusers folder and --tiny-vae")
        return
    if cfg.tiny_vae is None:
        raise BenchError("--vae tiny needs --tiny-vae DIR: a local diffusers AutoencoderTiny folder (TAESD for SD 1.x/2.x, "
                         "TAESDXL for SDXL)")
    config_path = Path(cfg.tiny_vae) / "config.json"
    try:
        config = read_json(config_path)
    except (OSError, ValueError) as exc:
        raise BenchError(f"--tiny-vae {cfg.tiny_vae} is not a diffusers AutoencoderTiny folder: cannot read its "
                         f"config.json ({exc})") from None
    if config.get("_class_name") != "AutoencoderTiny":
        raise BenchError(f"--tiny-vae {cfg.tiny_vae} holds a {config.get('_class_name')!r}, not an AutoencoderTiny "
                         "(TAESD, TAESDXL)")
    if int(config.get("latent_channels", 4)) != int(unet["in_channels"]):
        raise BenchError(f"--tiny-vae {cfg.tiny_vae} has {config.get('latent_channels', 4)} latent channels, the UNet of "
                         f"{src} {unet['in_channels']}: give the tiny VAE made for this model family")


def task_metrics(task: str) -> tuple[str, ...]:
    """What a run of `task` times: METRICS, and the VAE encode for the image tasks, the ControlNet's calls for controlnet."""
    return {"txt2img": METRICS, "controlnet": CONTROLNET_METRICS}.get(task, IMAGE_METRICS)


def controlnet_name(cfg: BenchConfig) -> str | None:
    """The ControlNet's name in latentrt's folder: a latentrt SRC's own (--controlnet NAME), else the folder name of
    --controlnet DIR (as `latentrt export --controlnet DIR` names it), "control" when that is no valid name."""
    import re

    if cfg.controlnet is None:
        return None
    if is_model_folder(cfg.src):
        return str(cfg.controlnet)
    name = Path(os.path.abspath(cfg.controlnet)).name  # as given (a link keeps its own name)
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) else "control"


def check_controlnet(cfg: BenchConfig, src: Path, model_folder: bool, family: str) -> None:
    """--task controlnet and --controlnet checked against the systems and the model."""
    if cfg.task != "controlnet":
        if cfg.controlnet is not None:
            raise BenchError("--controlnet gives --task controlnet its ControlNet: add --task controlnet")
        return
    if cfg.controlnet is None:
        raise BenchError("--task controlnet needs --controlnet DIR: a local diffusers ControlNetModel folder made for "
                         "this model (a latentrt model folder as SRC: --controlnet NAME, one of its ControlNets)")
    if family == "sdxl":
        raise BenchError("--task controlnet runs SD 1.x/2.x models (diffusers' StableDiffusionControlNetPipeline); "
                         f"{src} is an SDXL model")
    if model_folder:
        names = sorted(p.name for p in (src / "controlnet").iterdir() if (p / "model.onnx").is_file()) if (src / "controlnet").is_dir() else []
        if str(cfg.controlnet) not in names:
            raise BenchError(f"--controlnet {cfg.controlnet}: {src} has no such ControlNet (it has: "
                             f"{', '.join(names) or 'none; export it with `latentrt export ... --controlnet DIR`'})")
        return
    try:
        config = read_json(Path(cfg.controlnet) / "config.json")
    except (OSError, ValueError) as exc:
        raise BenchError(f"--controlnet {cfg.controlnet} is not a diffusers ControlNetModel folder: cannot read its "
                         f"config.json ({exc})") from None
    if config.get("_class_name") != "ControlNetModel":
        raise BenchError(f"--controlnet {cfg.controlnet} holds a {config.get('_class_name')!r}, not a ControlNetModel")


def check_task(cfg: BenchConfig, src: Path, model_folder: bool) -> float | None:
    """--task and --strength checked against the systems and the model; the strength the image tasks run with."""
    if cfg.task not in TASKS:
        raise BenchError(f"unknown task {cfg.task!r}: --task takes one of {', '.join(TASKS)}")
    if cfg.task in ("txt2img", "controlnet"):
        if cfg.strength is not None:
            raise BenchError("--strength applies to the image tasks only: add --task img2img or --task inpaint")
        unable = [s for s in cfg.systems if s not in CONTROLNET_SYSTEMS] if cfg.task == "controlnet" else []
        if unable:
            raise BenchError(f"{', '.join(unable)} cannot run --task controlnet: leave {'it' if len(unable) == 1 else 'them'} "
                             f"out of --systems (--task controlnet runs {', '.join(CONTROLNET_SYSTEMS)})")
        return None
    unable = [s for s in cfg.systems if s not in IMAGE_TASK_SYSTEMS]
    if unable:
        raise BenchError(f"{', '.join(unable)} cannot run --task {cfg.task}: {'its worker does' if len(unable) == 1 else 'their workers do'} "
                         f"text to image only; leave {'it' if len(unable) == 1 else 'them'} out of --systems "
                         f"(--task {cfg.task} runs {', '.join(IMAGE_TASK_SYSTEMS)})")
    strength = DEFAULT_STRENGTH[cfg.task] if cfg.strength is None else cfg.strength  # the pipeline's defaults
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise BenchError(f"--strength must be a number in (0, 1] (the fraction of the steps that run on the image), got {strength!r}")
    if int(cfg.steps * strength) < 1:
        raise BenchError(f"--strength {strength:g} with --steps {cfg.steps} leaves no step to run (int(steps x strength) = 0): "
                         f"raise --strength to at least {1 / cfg.steps:.3g} or use more steps")
    unet = read_json(src / "unet" / "config.json")
    vae = read_json(src / ("vae_decoder" if model_folder else "vae") / "config.json")
    if int(unet["in_channels"]) != int(vae.get("latent_channels", 4)):
        raise BenchError(f"{src} has a {unet['in_channels']}-channel UNet: the bench's image tasks time the plain "
                         f"{vae.get('latent_channels', 4)}-channel UNet (inpainting by blending the known region)")
    if model_folder and not (src / "vae_encoder" / "model.onnx").is_file():
        raise BenchError(f"{src} has no vae_encoder/model.onnx, which --task {cfg.task} needs: export the model again "
                         "with `latentrt export` (it writes the VAE encoder)")
    return float(strength)


def task_inputs(settings: dict, workdir: Path) -> dict[str, str]:
    """The image tasks' init image (a rendered synthetic picture at the bench's size) and, for inpaint, the mask
    (white = repaint: a centred rectangle of half the height and width); for controlnet the control map (that
    picture's canny edges); made deterministically and saved in the run folder: the paths every worker reads. None
    for txt2img."""
    if settings["task"] == "txt2img":
        return {}
    from PIL import Image

    if settings["task"] == "controlnet":  # the picture's canny edges (cv2.Canny's defaults), as ControlNet examples make them
        from latentrt.runtime.control_preprocess import canny

        paths = {"control_image": str(workdir / CONTROL_IMAGE)}
        canny(Image.fromarray(task_picture(settings["height"], settings["width"]))).save(paths["control_image"])
        return paths
    paths = {"image": str(workdir / INIT_IMAGE)}
    Image.fromarray(task_picture(settings["height"], settings["width"])).save(paths["image"])
    if settings["task"] == "inpaint":
        import numpy as np

        h, w = settings["height"], settings["width"]
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: h - h // 4, w // 4: w - w // 4] = 255
        paths["mask"] = str(workdir / MASK_IMAGE)
        Image.fromarray(mask).save(paths["mask"])
    return paths


def task_picture(h: int, w: int):
    """The synthetic picture the image tasks start from (uint8 (h, w, 3)): gradient sky, ground, sun, a house,
    a little texture."""
    import numpy as np

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = y / max(h - 1, 1), x / max(w - 1, 1)
    image = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.8 - 0.5 * x * y], axis=-1)  # a sky-like gradient
    image[y > 0.7] = (0.35, 0.55, 0.25)  # ground
    sun = (x - 0.7) ** 2 + (y - 0.25) ** 2 < 0.12**2
    image[sun] = (0.95, 0.85, 0.3)
    house = (np.abs(x - 0.3) < 0.12) & (y > 0.5) & (y <= 0.75)
    image[house] = (0.7, 0.25, 0.2)
    image += 0.04 * (np.sin(40 * x) * np.cos(30 * y))[..., None]  # some texture for the VAE
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def unet_flops(settings: dict, src: Path, latentrt_folder: Path | None, log: Path) -> dict[str, Any]:
    """FLOPs of one UNet call and one VAE decode at the benchmark's shapes (manifest formula, else counted)."""
    from latentrt.export.flops import flops_at

    b, _, h, w = settings["latent_shape"]
    manifest = read_json(latentrt_folder / "manifest.json") if latentrt_folder and (latentrt_folder / "manifest.json").is_file() else {}
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
    counted = read_json(out)
    return {"unet": counted["unet"], "vae_decoder": counted["vae_decoder"], "source": "counted for this run: " + counted["method"]}


def missing_modules(modules: Sequence[str]) -> list[str]:
    """Those of `modules` this interpreter cannot import (looked up, not imported: torch stays out)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]
