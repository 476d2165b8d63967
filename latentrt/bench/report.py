"""A benchmark's report: the per-row summaries and ratios computed from the runs (the issue-9 fast path, the
issue-5 targets, the issue-10 embedding figures), its markdown tables, and the JSON, markdown and plot files."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from latentrt.bench.settings import (ALL_METRICS, CONTROL_IMAGE, INIT_IMAGE, LATENTRT_PATHS, MASK_IMAGE, METRICS,
                                     REFERENCE, BenchError)

METRIC_LABELS = {
    "load": "load",
    "text_encoder": "text encoder",
    "vae_encode": "VAE encode",
    "controlnet_step": "ControlNet call",
    "unet_step": "UNet call",
    "vae_decode": "VAE decode",
    "end_to_end": "end to end",
    "peak_rss_mb": "peak RSS",
}
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
# The few-step models' figures for latentrt's fastest path with the tiny VAE (reported, never asserted):
# (the other row, its suffix-free label, goal or None); the first compares the path's own full-VAE row
TINY_VAE_TARGETS = (
    ("full", "the same path with the full VAE", 0.4),  # tiny / full: at most
    ("diffusers + tiny VAE", "PyTorch fp32 + AutoencoderTiny", 2.0),
    ("optimum-intel", "optimum-intel, full VAE", 1.5),
    ("optimum-intel + tiny VAE", "optimum-intel + tiny VAE decoder (FastSD CPU's wiring)", None),
    ("diffusers", "PyTorch fp32, full VAE", None),
)
TINY_SUFFIX = " + tiny VAE"


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def embedding_figures(systems: dict[str, dict], ttfi_commands: dict[str, str]) -> dict[str, Any]:
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


def json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def save_png(image, path: Path) -> None:
    try:
        from PIL import Image

        Image.fromarray(image).save(path)
    except Exception:  # the PNG is a convenience for a human looking at the workdir
        pass


def speedup_ratios(systems: dict[str, dict], ours_name: str = "latentrt") -> dict[str, Any]:
    """Against every other system: `speedup`, its median time / ours (> 1: ours is faster); `rss`: ours / its."""
    if ours_name not in systems:
        return {}
    ours = systems[ours_name]
    out = {}
    for other, theirs in systems.items():
        if other == ours_name:
            continue
        out[other] = {
            "speedup": {m: theirs[m] / ours[m] for m in ALL_METRICS if m in ours and m in theirs and ours[m] > 0},
            "peak_rss_ratio": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
        }
    return out


def fast_path_figures(systems: dict[str, dict], ratios_by_path: dict[str, dict], chosen: str | None) -> dict[str, Any] | None:
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


def tiny_vae_figures(systems: dict[str, dict], chosen: str | None = None) -> dict[str, Any] | None:
    """The few-step figures for latentrt's fastest path with the tiny VAE (`chosen`, else the latentrt path whose
    tiny-VAE row has the lowest end-to-end median), warm (end to end per image) and cold (time to first image):
    its own tiny / full ratio (goal: at most 0.4), then the other rows' time / its tiny row's (goals: at least)."""
    paths = [p for p in LATENTRT_PATHS if p in systems and p + TINY_SUFFIX in systems]
    if chosen is not None and chosen in paths:
        paths = [chosen]
    if not paths:
        return None
    path = min(paths, key=lambda p: systems[p + TINY_SUFFIX]["end_to_end"])
    ours = systems[path + TINY_SUFFIX]

    def ratio(a: dict | None, b: dict | None, metric: str) -> float | None:
        return a[metric] / b[metric] if a and b and a.get(metric) and b.get(metric) else None

    figures = []
    for other, label, goal in TINY_VAE_TARGETS:
        if other == "full":  # ours / the full row: lower is better
            warm, cold = ratio(ours, systems[path], "end_to_end"), ratio(ours, systems[path], "ttfi")
            met = None if goal is None or warm is None else warm <= goal
            figures.append({"vs": path, "label": label, "kind": "tiny / full", "end_to_end": warm, "ttfi": cold,
                            "goal": goal, "at_most": True, "met": met})
            continue
        theirs = systems.get(other)
        warm, cold = ratio(theirs, ours, "end_to_end"), ratio(theirs, ours, "ttfi")
        figures.append({"vs": other, "label": label, "kind": "speedup", "end_to_end": warm, "ttfi": cold, "goal": goal,
                        "at_most": False, "met": None if goal is None or warm is None else warm >= goal})
    return {"system": path, "row": path + TINY_SUFFIX, "precision": ours["info"].get("precision"),
            "chosen_by": "named" if chosen in paths else "lowest end-to-end median of the latentrt paths' tiny-VAE rows",
            "end_to_end": ours["end_to_end"], "ttfi": ours.get("ttfi"), "figures": figures}


def tiny_vae_lines(tiny: dict | None) -> list[str]:
    """The few-step table: the fastest path with the tiny VAE against its full VAE and what a user picks instead."""
    if not tiny:
        return []

    def x(value: float | None) -> str:
        return "not run" if value is None else f"{value:.2f}x"

    lines = [
        f"**Tiny VAE, fastest latentrt path: `{tiny['row']}`** ({tiny['precision'] or 'fp32'}; {tiny['chosen_by']}): "
        f"end to end {_seconds(tiny['end_to_end'])}"
        + (f", time to first image {_seconds(tiny['ttfi'])}" if tiny.get("ttfi") else "") + ". First row: its time / "
        "the same path's with the full VAE (< 1: the tiny VAE saves); the others: their time / its (> 1: latentrt "
        "faster). Warm = end to end per image in a loaded process; cold = time to first image (a fresh process to "
        "the PNG). The goals (reported, not asserted) are on the warm figure.",
        "",
        "| against | warm (end to end) | cold start (time to first image) | goal |",
        "| --- | ---: | ---: | --- |",
    ]
    for f in tiny["figures"]:
        goal = "–" if f["goal"] is None else (f"{'≤' if f['at_most'] else '≥'} {f['goal']:g}x: "
                                              + ("not run" if f["met"] is None else "met" if f["met"] else "missed"))
        lines.append(f"| {f['label']} (`{f['vs']}`) | {x(f['end_to_end'])} | {x(f['ttfi'])} | {goal} |")
    return [*lines, ""]


def target_figures(ratios: dict, roof: dict) -> dict[str, Any]:
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


FAST_PATH_COLUMNS = (("diffusers", "PyTorch fp32"), ("diffusers-bf16", "PyTorch bf16 autocast"), ("optimum-intel", "optimum-intel"))


def fast_path_lines(fast: dict | None) -> list[str]:
    """The issue-9 table: the fastest latentrt path's speed-ups, with each goal met or missed."""
    if not fast:
        return []
    cells = {(f["metric"], f["vs"]): f for f in fast["figures"]}
    lines = [
        f"**Fastest latentrt path: `{fast['system']}`** ({fast['precision'] or 'fp32'}; {fast['chosen_by']}) against what a "
        "user would pick instead: the other system's time / latentrt's (> 1: latentrt faster). The CPU speed "
        "targets (set for the SD 1.5 architecture at 512x512), reported, not asserted.",
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
        "**Load, time to first image (TTFI), peak RSS** per row and mode (modes: "
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
        warm = cell(system, "load") + ("" if latentrt_row else " (no load cache)")
        ttfi = cell(system, "ttfi") if system.get("ttfi") is not None else "not measured"
        ttfi_rss = f"{system['ttfi_peak_rss_mb']:,.0f} MB" if system.get("ttfi_peak_rss_mb") is not None else "–"
        cells = [name, cold, warm, ttfi, cell(system, "peak_rss_mb"), ttfi_rss]
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
        "pipeline call + the PNG for diffusers (and optimum-intel: its pipeline class, reshaped and compiled as in its "
        "timed runs); not measured for optimum. Peak RSS, TTFI process: that process's "
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


def cell(system: dict, metric: str) -> str:
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
    if task == "controlnet":
        def seconds(value: float) -> str:
            text = _fmt_s(value)
            return text if text.endswith("ms") else f"{text} s"

        steps = "; ".join(f"{name} {seconds(system['controlnet_step'] + system['unet_step'])}"
                          for name, system in systems.items() if "controlnet_step" in system)
        return (f"**Task: controlnet**, text to image with one ControlNet ({s.get('controlnet')}) at scale 1 over every "
                "step, on both CFG halves (StableDiffusionControlNetPipeline for diffusers). Control map: the canny edges "
                f"(100/200) of a synthetic picture rendered by the harness at {s['width']}x{s['height']} ({CONTROL_IMAGE} "
                "in the run folder), the same for every system. `ControlNet call` = median of the ControlNet's calls, "
                "`UNet call` = median of the UNet's calls (taking the residuals). A ControlNet step (their sum): "
                f"{steps}. Time to first image is measured for txt2img only.")
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
        lines.append(f"| {name} | " + " | ".join(cell(system, k) for k in (*metrics, "peak_rss_mb")) + " |")
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
    lines += fast_path_lines(report.get("fast_path"))
    lines += tiny_vae_lines(report.get("tiny_vae"))
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
        inputs = {"txt2img": "same latents", "controlnet": "same latents and control map"}.get(
            s.get("task", "txt2img"), "same image, mask, strength and NumPy noise")
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
