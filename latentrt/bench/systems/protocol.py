"""The worker side of the benchmark harness: one system, one run, one process.

The harness (latentrt/bench/harness.py) starts a fresh process per system and per run, with a JSON
config file; the process imports its libraries, loads the pipeline (timed), warms up each
component once (one call each, untimed, same shapes), then times one whole generation to uint8
images. During that generation the system's own stage functions are wrapped with timers: its
text-encoding step (tokenize + encode prompt and negative prompt), every UNet call of the
denoising loop, its VAE decode and, for the image tasks (cfg["task"] img2img or inpaint: the harness's init
image, mask and strength), its VAE encode. `unet_step` is the median of the loop's UNet calls. The
process saves the image and writes a JSON report with its peak RSS (`ru_maxrss` of this process).
A fresh process per run gives a cold-process load time each run and a clean peak-RSS figure, and
keeps only one model in memory at a time on small machines.

The GPU benchmark (benchmarks/gpu/bench.py) asks one process for more: `warmup_generations` untimed whole
generations after the component warm-up, then `repeats` timed generations (`report["repeats"]`, one entry each;
the top-level figures are their medians). A system on an asynchronous device (torch on CUDA) synchronizes
(`System.synchronize`) around every timed stage call and generation, so that a time covers the work it launched.

Standard library + NumPy only: this module also runs inside optimum's own virtual environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

COMPONENT_METRICS = ("text_encoder", "unet_step", "vae_decode")
# the tasks a worker may be asked for (cfg["task"]); img2img and inpaint also time the VAE encoder, controlnet (text
# to image with one ControlNet, cfg["controlnet"]) the ControlNet's calls
TASKS = ("txt2img", "img2img", "inpaint", "controlnet")


def component_metrics(task: str = "txt2img") -> tuple[str, ...]:
    """The stages a generation of `task` is timed by: text encoder, (VAE encode,) (ControlNet calls,) UNet calls,
    VAE decode."""
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    if task == "controlnet":
        return ("text_encoder", "controlnet_step", "unet_step", "vae_decode")
    return COMPONENT_METRICS if task == "txt2img" else ("text_encoder", "vae_encode", "unet_step", "vae_decode")

# the model families the workers tell apart (read from the folder, as latentrt's runtime does: families.family_for)
FAMILIES = ("sd", "sdxl")


def model_family(folder) -> str:
    """"sdxl" when the folder is an SDXL one (its UNet takes text_embeds and time_ids: `addition_embed_type`
    "text_time", or a StableDiffusionXL* pipeline class in model_index.json), else "sd" (SD 1.x / 2.x)."""
    from latentrt.runtime.families import is_sdxl  # the runtime's rule; imported here, as peers' venvs import this module

    folder = Path(folder)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    index = folder / "model_index.json"
    return "sdxl" if is_sdxl(unet, json.loads(index.read_text()) if index.is_file() else {}) else "sd"


# latentrt's scheduler names -> (diffusers class, from_config overrides the name implies);
# the same table tests/test_schedulers.py checks latentrt's schedulers against.
DIFFUSERS_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def diffusers_scheduler(name: str, config):
    """The diffusers scheduler for a latentrt name, built from a pipeline's scheduler config."""
    import diffusers

    if name not in DIFFUSERS_SCHEDULERS:
        raise SystemExit(f"scheduler {name!r} has no diffusers counterpart here: use one of {', '.join(DIFFUSERS_SCHEDULERS)}")
    cls_name, overrides = DIFFUSERS_SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(config, **overrides)


def to_uint8(images_0_1) -> Any:
    """float (B, H, W, 3) in [0, 1] -> uint8, as diffusers' numpy_to_pil does."""
    import numpy as np

    return (np.asarray(images_0_1) * 255).round().astype(np.uint8)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def versions(*names: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class System:
    """What a worker implements: load (timed), warm-up calls (untimed), one generation (timed by stage)."""

    name = "?"

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg

    def load(self) -> None: ...

    def prepare(self) -> None:
        """Untimed set-up after load (scheduler, latents as the library wants them)."""

    def fill_cache(self) -> None:
        """Untimed, after a load-only run's load when the config asks for it (`fill_cache`): build whatever load
        cache the load itself did not (latentrt's low_memory mode opens no network at load)."""

    def text_encoder(self) -> None: ...

    def unet_step(self) -> None: ...

    def vae_decode(self) -> None: ...

    def vae_encode(self) -> None:
        """The image tasks' VAE encoder (one call on the init image); untimed warm-up like the others."""
        raise NotImplementedError(f"{self.name} has no VAE encode stage: it runs text to image only")

    def controlnet_step(self) -> None:
        """--task controlnet: one ControlNet call on the UNet's batch (untimed warm-up like the others)."""
        raise NotImplementedError(f"{self.name} has no ControlNet stage")

    def end_to_end(self):  # -> uint8 (B, H, W, 3)
        raise NotImplementedError

    def stages(self) -> list[tuple[Any, str, str]]:
        """(object, attribute, metric): the functions the generation calls for each stage, to be timed by wrapping
        them (the peers' libraries have no other seam)."""
        return []

    def stage_timing(self, record: Callable[[str, float], None]):
        """A context manager during which each stage call of a generation is reported as record(metric, seconds).
        By default the functions of `stages()` are wrapped; a system whose library reports its own calls (latentrt's
        pipeline observers) overrides this instead."""
        return _wrapped_stages(self, record)

    def info(self) -> dict[str, Any]:
        return {}

    def synchronize(self) -> None:
        """Wait for the work the system launched (torch on CUDA returns before its kernels finish); nothing on CPU."""


@contextlib.contextmanager
def _wrapped_stages(system: System, record: Callable[[str, float], None]):
    """Wraps each stage function of `system.stages()` (as an instance attribute) with a timer for the block; the
    system's `synchronize` runs before and after each call, so that the time is the call's own device work."""
    stages = system.stages()
    own = [(obj, attr, obj.__dict__.get(attr)) for obj, attr, _ in stages]
    for obj, attr, metric in stages:
        setattr(obj, attr, _timer(getattr(obj, attr), metric, record, system.synchronize))
    try:
        yield
    finally:
        for obj, attr, original in own:  # unwrapped again: the next generation wraps afresh
            if original is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, original)


def _timer(function: Callable, metric: str, record: Callable[[str, float], None], sync: Callable[[], None]) -> Callable:
    def timed(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = function(*args, **kwargs)
        sync()
        record(metric, time.perf_counter() - t0)
        return out

    return timed


def _timed(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - t0, result


def _timed_generation(system: System, metrics: tuple[str, ...]) -> tuple[dict[str, Any], Any]:
    """One whole generation, timed, its stage functions wrapped by timers: ({end_to_end, each stage's median,
    stage_calls}, the uint8 images)."""
    import statistics

    calls: dict[str, list[float]] = {m: [] for m in metrics}

    def record(metric: str, seconds: float) -> None:
        if metric in calls:
            calls[metric].append(seconds)

    figures: dict[str, Any] = {}
    with system.stage_timing(record):
        figures["end_to_end"], images = _timed(system.end_to_end, system.synchronize)
    for metric in metrics:
        if not calls[metric]:
            raise RuntimeError(f"{system.name}: the generation never called its {metric} stage")
        figures[metric] = statistics.median(calls[metric])
    figures["stage_calls"] = calls
    return figures, images


def run(make_system: Callable[[dict[str, Any]], System], argv: list[str] | None = None) -> None:
    """`worker.py CONFIG.json OUT.json`: one run of one system; OUT gets the report."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: worker.py CONFIG.json OUT.json")
    cfg = json.loads(Path(argv[0]).read_text())
    out_path = Path(argv[1])
    report: dict[str, Any] = {"ok": False, "pid": os.getpid()}
    try:
        t0 = time.perf_counter()
        system = make_system(cfg)  # imports the system's libraries
        report["import_s"] = time.perf_counter() - t0
        report["load"], _ = _timed(system.load, system.synchronize)
        report["rss_after_load_mb"] = _current_rss_mb()
        if cfg.get("fill_cache"):
            report["fill_cache_s"], _ = _timed(system.fill_cache)
        if not cfg.get("load_only"):
            metrics = component_metrics(cfg.get("task", "txt2img"))
            system.prepare()
            for _ in range(int(cfg.get("warmup", 1))):  # same shapes as the measured calls and the generation
                for metric in metrics:
                    getattr(system, metric)()
            for _ in range(int(cfg.get("warmup_generations", 0))):  # untimed (GPU: autotuning, CUDA graph capture)
                system.end_to_end()
            import statistics

            import numpy as np

            repeats = [_timed_generation(system, metrics) for _ in range(int(cfg.get("repeats", 1)))]
            for key in ("end_to_end", *metrics):
                report[key] = statistics.median(figures[key] for figures, _ in repeats)
            report["stage_calls"] = repeats[-1][0]["stage_calls"]
            if len(repeats) > 1:
                report["repeats"] = [{k: v for k, v in figures.items() if k != "stage_calls"} for figures, _ in repeats]
            images = np.asarray(repeats[-1][1])
            if images.dtype != np.uint8 or images.ndim != 4:
                raise RuntimeError(f"{system.name}: end_to_end must return uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
            if cfg.get("image_out"):
                np.save(cfg["image_out"], images)
            report["image_shape"] = list(images.shape)
        report["peak_rss_mb"] = peak_rss_mb()
        report["info"] = system.info()
        report["modules"] = sorted(m for m in ("torch", "diffusers", "transformers", "optimum") if m in sys.modules)
        report["ok"] = True
    except BaseException as exc:  # reported to the harness, which fails loudly with it
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
        out_path.write_text(json.dumps(report, indent=1))
        raise
    out_path.write_text(json.dumps(report, indent=1))


def _current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None
