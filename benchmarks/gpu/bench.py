"""The GPU benchmark (issue 16): latentrt's fp16 export on ONNX Runtime's CUDA provider (plain, with IO binding, with
a CUDA graph) against diffusers fp16 (SDPA) on the same GPU; SD 1.5's architecture, 512x512, 50 steps, CFG 7.5.

    benchmarks/gpu/run.sh [--dry-run] [OUT_DIR] [bench options]     installs what a fresh GPU machine lacks, then:
    python -m benchmarks.gpu.bench [OUT_DIR] [--dry-run] [--src DIFFUSERS_FOLDER] [--work DIR] [--steps N] [--runs R]

1. The model: SRC, else SD 1.5's architecture with random weights (benchmarks/sd15_random.py: the published configs,
   no network), built once into WORK. `--dry-run`: the tiny SD 1 pipeline of the tests (latentrt.export.tiny).
2. `latentrt export SRC WORK/... --precision fp16`, once (reused while its manifest says fp16).
3. Each row in a process of its own, one after the other (the harness's workers, latentrt/bench/systems/): load
   (timed), one call of each component, one whole generation untimed (cuDNN's algorithm search, the CUDA graph's
   capture), then R timed generations with the stages timed inside them. torch is timed between
   torch.cuda.synchronize() calls; ONNX Runtime's run returns when its outputs are on the host.
4. GPU memory: nvidia-smi's memory.used sampled while the row's process runs, its peak minus the level before the
   process started (its CUDA context and ORT's arena / torch's caching allocator; not measured without nvidia-smi).
5. OUT_DIR/NAME.json, NAME.md (with the issue's figures met or missed) and NAME.png.

Why not rows of `latentrt bench`: its method (a fresh process per run and row, cold and warm load caches, time to
first image, the CPU GEMM roof) is the CPU's and would spend the GPU machine's minutes on loads; this script keeps
one process per row and reuses the harness's workers, settings, summaries, table cells and plot.

`--dry-run` runs the same code on the CPU with the current environment (CI: tests/test_gpu_bench.py): the tiny model,
ONNX Runtime's CPU provider on the fp16 folder (plain and with IO binding; no CUDA graph row: the CPU provider has no
CUDA graphs) against diffusers fp32 on the CPU, few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentrt.bench.exports import cache_root
from latentrt.bench.machine import machine_info
from latentrt.bench.processes import latentrt_command, run_logged, run_worker
from latentrt.bench.report import METRIC_LABELS, PSNR_CAP_DB, cell, summary
from latentrt.bench.settings import METRICS, BenchConfig, BenchError, resolve_settings

ROOT = Path(__file__).resolve().parents[2]
# The figures for SD 1.5 at 512x512, 50 steps, CFG, on an H200 (reported, not asserted)
GOALS = {"end_to_end_s": 0.6, "end_to_end_speedup": 1.5, "psnr_db": 30.0}
MEMORY = "gpu_memory_mb"
NO_CUDA_GRAPH = "CUDA graphs need the cuda provider (ONNX Runtime's CPU provider has none): no such row in a dry run"


@dataclass(frozen=True)
class Row:
    name: str
    system: str  # the harness's worker system: "latentrt" or "diffusers"
    config: dict = field(default_factory=dict)  # added to the worker's config


@dataclass(frozen=True)
class Plan:
    """What a run measures: the full GPU benchmark, or its dry run on the CPU."""

    dry_run: bool
    provider: str
    reference: str
    steps: int
    size: int | None  # None: the model's native size
    runs: int
    name: str

    def rows(self) -> list[Row]:
        options = {"": {}, "-iobinding": {"io_binding": True}, "-cudagraph": {"cuda_graph": True}}
        rows = [Row(f"latentrt-{self.provider}-fp16{suffix}", "latentrt",
                    {"provider": self.provider, "pipeline_options": opts})
                for suffix, opts in options.items() if not (self.dry_run and "cuda_graph" in opts)]
        return [*rows, Row(self.reference, "diffusers", {} if self.dry_run else {"device": "cuda", "dtype": "float16"})]

    def skipped(self) -> dict[str, str]:
        return {f"latentrt-{self.provider}-fp16-cudagraph": NO_CUDA_GRAPH} if self.dry_run else {}


def plan(dry_run: bool, steps: int | None, runs: int | None, name: str | None) -> Plan:
    if dry_run:
        return Plan(True, "cpu", "diffusers", steps or 3, None, runs or 2, name or "gpu-dry-run")
    return Plan(False, "cuda", "diffusers-fp16", steps or 50, 512, runs or 3, name or "gpu-h200")


# ----------------------------------------------------------------------------------------------- the model


def _phase(message: str) -> None:
    print(f"[gpu-bench] {message}", file=sys.stderr, flush=True)


def build_model(work: Path, dry_run: bool) -> Path:
    """The diffusers folder: SD 1.5's architecture with random weights (4.3 GB), or the tiny SD 1 pipeline; built once."""
    out = work / ("tiny-sd1-diffusers" if dry_run else "sd15-random-diffusers")
    if (out / "model_index.json").is_file():
        return out
    work.mkdir(parents=True, exist_ok=True)
    _phase(f"building {out}")
    code = ("import sys; from latentrt.export.tiny import build_tiny_pipeline; build_tiny_pipeline(sys.argv[1], 'sd1')"
            if dry_run else "import sys; from benchmarks.sd15_random import main; main(sys.argv[1:])")
    shutil.rmtree(out, ignore_errors=True)
    run_logged([sys.executable, "-c", code, out], work / "build.log", env=_env())
    return out


def export_fp16(src: Path, work: Path) -> Path:
    """`latentrt export SRC OUT --precision fp16` (a user's command), made once."""
    out = work / f"{src.name}-onnx-fp16"
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("precision") == "fp16":
        return out
    _phase(f"exporting {src} in fp16 into {out}")
    run_logged([*latentrt_command(), "export", src, out, "--precision", "fp16", "--force"], work / "export.log",
                env=_env())
    return out


def _env() -> dict[str, str]:
    """Child processes import benchmarks.* from the checkout, whatever the working directory."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# -------------------------------------------------------------------------------------------------- checks


# Each a `python -c` script that fails where its library cannot reach the GPU (argv[1]: a small ONNX model)
GPU_PROBES = {
    "torch": "import torch; assert torch.cuda.is_available(), 'torch.cuda.is_available() is False'",
    "onnxruntime-gpu": (
        "import sys, onnxruntime as ort\n"
        "from latentrt.bench.systems.latentrt_worker import preload_cuda_libraries; preload_cuda_libraries()\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CUDAExecutionProvider', 'CPUExecutionProvider'])\n"
        "assert s.get_providers()[0] == 'CUDAExecutionProvider', f'ONNX Runtime fell back to {s.get_providers()}'\n"
    ),
}


def check_gpu(work: Path) -> dict[str, Any]:
    """Fail in seconds, before the export's minutes, where torch or ONNX Runtime cannot reach the GPU; the GPU's name."""
    for library in GPU_PROBES:
        probe_gpu(library, work)
    return nvidia_smi_gpu()


def probe_gpu(library: str, work: Path) -> None:
    """GPU_PROBES[library] in a process of its own; ONNX Runtime's opens the harness's GEMM roof model on CUDA."""
    from latentrt.bench.roof import build_gemm_model

    model = build_gemm_model(work / "probe-gemm.onnx", 64, 64, 64)
    proc = subprocess.run([sys.executable, "-c", GPU_PROBES[library], model], capture_output=True, text=True,
                          env=_env(), check=False)
    if proc.returncode != 0:
        raise BenchError(f"{library} cannot use the GPU here: {proc.stderr.strip()[-2000:]}")


def nvidia_smi(query: str) -> list[str] | None:
    """nvidia-smi's answer to --query-gpu=QUERY for GPU 0, split; None without nvidia-smi (a dry run on a CPU)."""
    if shutil.which("nvidia-smi") is None:
        return None
    proc = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
                          capture_output=True, text=True, check=False)
    return [part.strip() for part in proc.stdout.split(",")] if proc.returncode == 0 else None


def nvidia_smi_gpu() -> dict[str, Any]:
    answer = nvidia_smi("name,driver_version,memory.total")
    return dict(zip(("name", "driver", "memory_total_mb"), answer)) if answer else {}


class GpuMemoryPeak:
    """The peak of the GPU's memory.used while a block runs, above its level before: sampled every 0.5 s (ONNX
    Runtime's arena and torch's caching allocator keep what they reserved: the peak stays until the process ends)."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._stop = threading.Event()

    def _used(self) -> float | None:
        answer = nvidia_smi("memory.used")
        return float(answer[0]) if answer else None

    def _sample(self, baseline: float) -> None:
        while not self._stop.wait(0.5):
            used = self._used()
            if used is not None:
                self.peak_mb = max(self.peak_mb or 0.0, used - baseline)

    def __enter__(self) -> "GpuMemoryPeak":
        baseline = self._used()
        self._thread = threading.Thread(target=self._sample, args=(baseline,), daemon=True) if baseline is not None else None
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


# ----------------------------------------------------------------------------------------------------- runs


def worker_config(settings: dict, src: Path, onnx: Path, workdir: Path, runs: int) -> dict[str, Any]:
    """What every row's worker gets (the harness's keys): the same prompt, latents, scheduler, steps and size."""
    import numpy as np

    latents = np.random.default_rng(settings["seed"]).standard_normal(settings["latent_shape"], dtype=np.float32)
    np.save(workdir / "latents.npy", latents)
    return {
        **{k: settings[k] for k in ("prompt", "negative", "steps", "guidance", "scheduler", "threads", "height", "width",
                                    "task", "strength", "seed", "family", "batch")},
        "source": str(src), "folders": {"latentrt": str(onnx)}, "latents": str(workdir / "latents.npy"),
        "cache_dir": str(workdir / "load-cache"),  # ONNX Runtime's CPU load cache (dry run), never the user's
        "warmup": 1, "warmup_generations": 1, "repeats": runs,
    }


def run_row(row: Row, base: dict, workdir: Path) -> dict[str, Any]:
    """One row's process; its report with the GPU memory it held. A latentrt row that ONNX Runtime ran on another
    provider than asked (onnxruntime-gpu without its CUDA libraries falls back to the CPU) is an error."""
    from latentrt.runtime.session import PROVIDERS

    image = workdir / f"{row.name}.npy"
    with GpuMemoryPeak() as memory:
        report = run_worker(row.system, {**base, **row.config, "image_out": str(image)}, workdir, row.name)
    report.update(image=str(image), gpu_memory_mb=memory.peak_mb)
    wanted = PROVIDERS.get(row.config.get("provider", ""), [None])[0]
    got = (report["info"].get("providers") or [None])[0]
    if wanted and got != wanted:
        raise BenchError(f"{row.name}: ONNX Runtime ran the UNet on {got}, not {wanted} (see {workdir}/latentrt.log): "
                         "is onnxruntime-gpu installed (and onnxruntime uninstalled), with its CUDA and cuDNN libraries?")
    return report


def run_rows(rows: list[Row], base: dict, workdir: Path, reference: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Every row's report, and the errors of the latentrt rows that failed: one failing option (a CUDA graph the
    provider refuses, say) leaves the other rows' figures to report. Without the reference nothing compares."""
    reports, failed = {}, {}
    for row in rows:
        _phase(f"running {row.name}")
        try:
            reports[row.name] = run_row(row, base, workdir)
        except BenchError as exc:
            if row.name == reference:
                raise
            failed[row.name] = str(exc)
            _phase(f"{row.name} FAILED: {exc}")
            continue
        _phase(f"{row.name}: end to end {reports[row.name]['end_to_end']:.3f} s, "
               f"UNet call {reports[row.name]['unet_step'] * 1000:.1f} ms")
    if len(reports) < 2:
        raise BenchError("every latentrt row failed: " + "; ".join(f"{name}: {why}" for name, why in failed.items()))
    return reports, failed


def summarize(row: Row, report: dict) -> dict[str, Any]:
    """The harness's row format: medians, min, max and every run per metric (load and memory: one sample)."""
    repeats = report.get("repeats") or [report]
    stats = {m: summary([r[m] for r in repeats]) for m in METRICS if m != "load"}
    stats["load"] = summary([report["load"]])
    stats["peak_rss_mb"] = summary([report["peak_rss_mb"]])
    if report["gpu_memory_mb"] is not None:
        stats[MEMORY] = summary([report["gpu_memory_mb"]])
    return {
        "system": row.system,
        "provider": row.config.get("provider") or report["info"].get("device"),
        "pipeline_options": row.config.get("pipeline_options", {}),
        **{m: s["median"] for m, s in stats.items()},
        **{key: {m: s[key] for m, s in stats.items()} for key in ("min", "max", "runs")},
        "unet_calls_per_image": len(report["stage_calls"]["unet_step"]),
        "info": report["info"],
    }


def agreement(images: dict[str, Any], reference: str) -> dict[str, dict[str, float]]:
    """PSNR (capped) and max abs difference of each row's uint8 image against the reference's."""
    import numpy as np

    from latentrt.export.validate import image_psnr

    ref = images[reference]
    return {name: {"psnr_db": min(image_psnr(image, ref), PSNR_CAP_DB),
                   "max_abs_diff": int(np.abs(image.astype(np.int16) - ref.astype(np.int16)).max())}
            for name, image in images.items() if name != reference}


def speedups(systems: dict[str, dict], reference: str) -> dict[str, dict[str, float]]:
    """The reference's time / each latentrt row's, per metric (> 1: latentrt faster)."""
    ref = systems[reference]
    return {name: {m: ref[m] / row[m] for m in METRICS if row[m] > 0}
            for name, row in systems.items() if name != reference}


def goals(systems: dict, ratios: dict, agree: dict, reference: str) -> dict[str, Any]:
    """The issue's figures for the fastest latentrt row (end to end), and the lowest PSNR of the latentrt rows."""
    fastest = min(ratios, key=lambda name: systems[name]["end_to_end"])
    measured = {"end_to_end_s": systems[fastest]["end_to_end"], "end_to_end_speedup": ratios[fastest]["end_to_end"],
                "psnr_db": min(a["psnr_db"] for a in agree.values())}
    met = {"end_to_end_s": measured["end_to_end_s"] <= GOALS["end_to_end_s"],
           "end_to_end_speedup": measured["end_to_end_speedup"] >= GOALS["end_to_end_speedup"],
           "psnr_db": measured["psnr_db"] >= GOALS["psnr_db"]}
    return {"fastest": fastest, "vs": reference,
            **{k: {"goal": GOALS[k], "measured": measured[k], "met": met[k]} for k in GOALS}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    p = plan(args.dry_run, args.steps, args.runs, args.name)
    work = Path(args.work or cache_root(None).parent / "gpu-bench").expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    gpu = {} if p.dry_run else check_gpu(work)
    t0 = time.time()
    src = Path(args.src).resolve() if args.src else build_model(work, p.dry_run)
    t1 = time.time()
    onnx = export_fp16(src, work)
    t2 = time.time()
    settings = resolve_settings(BenchConfig(src=src, steps=p.steps, height=p.size, width=p.size, runs=p.runs,
                                            threads=args.threads, systems=("latentrt", "diffusers")))
    rows = p.rows()
    settings.update(systems=[r.system for r in rows], rows=[r.name for r in rows], device=p.provider,
                    dry_run=p.dry_run, warmup="one call of each component, then one whole generation, untimed")
    workdir = work / "runs" / time.strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True)
    base = worker_config(settings, src, onnx, workdir, p.runs)
    reports, failed = run_rows(rows, base, workdir, p.reference)
    systems = {row.name: summarize(row, reports[row.name]) for row in rows if row.name in reports}
    import numpy as np

    agree = agreement({name: np.load(r["image"]) for name, r in reports.items()}, p.reference)
    ratios = speedups(systems, p.reference)
    return {
        "schema": "latentrt-gpu-bench/1",
        "systems": systems,
        "reference": p.reference,
        "agreement_vs_reference": agree,
        "speedup_vs_reference": ratios,
        "goals": goals(systems, ratios, agree, p.reference),
        "skipped": p.skipped(),
        "failed": failed,
        "settings": {**settings, "runs": p.runs},
        "source": str(src),
        "folders": {"diffusers": str(src), "latentrt-fp16": str(onnx)},
        "machine": {**machine_info(), "gpu": gpu},
        "versions": {name: r["info"].get("versions") for name, r in reports.items()},
        "phases_s": {"install": args.install_seconds, "model": t1 - t0, "export": t2 - t1, "rows": time.time() - t2},
        "command": args.command or "python -m benchmarks.gpu.bench " + shlex.join(sys.argv[1:]),
        "workdir": str(workdir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": time.time() - started,
    }


# -------------------------------------------------------------------------------------------------- output


def panels(report: dict) -> tuple[tuple[str, str], ...]:
    memory = (MEMORY, "GPU memory (MB)") if all(MEMORY in s for s in report["systems"].values()) else ("peak_rss_mb", "peak RSS (MB)")
    return (*((m, f"{METRIC_LABELS[m]} (s)") for m in METRICS), memory)


def _settings_line(report: dict) -> str:
    s, gpu = report["settings"], report["machine"]["gpu"]
    where = gpu.get("name", "GPU") if not s["dry_run"] else f"CPU ({report['machine']['cpu_model']})"
    return (f"{s['height']}x{s['width']}, batch {s['batch']}, {s['steps']} steps of {s['scheduler']}, guidance "
            f"{s['guidance']:g} (CFG: UNet batch {s['unet_batch']}), {where}")


def render_markdown(report: dict, title: str) -> str:
    s, systems, ref = report["settings"], report["systems"], report["reference"]
    cols = [m for m, _ in panels(report)]
    lines = [f"# {title}", ""]
    if s["dry_run"]:
        lines += ["**Dry run** (`benchmarks/gpu/run.sh --dry-run`): the tiny test model on the CPU, ONNX Runtime's CPU "
                  "provider on the fp16 folder against diffusers fp32; it checks the code path, its figures say nothing "
                  "about a GPU.", ""]
    lines += [
        f"{_settings_line(report)}; one process per row: load, one untimed generation, then {s['runs']} timed "
        "generations, median (min–max).",
        "",
        "| row | " + " | ".join(METRIC_LABELS.get(c, "GPU memory") for c in cols) + " |",
        "| --- | " + " | ".join("---:" for _ in cols) + " |",
        *(f"| {name} | " + " | ".join(cell(row, c) for c in cols) + " |" for name, row in systems.items()),
        *(f"| {ref} / {name} (time) | " + " | ".join(f"{r[c]:.2f}x" if c in r else "–" for c in cols) + " |"
          for name, r in report["speedup_vs_reference"].items()),
        "",
        "**Rows.** " + "; ".join(_row_text(name, row) for name, row in systems.items()) + ".",
        "",
    ]
    for name, why in report["skipped"].items():
        lines += [f"**Not run: {name}.** {why}.", ""]
    for name, why in report["failed"].items():
        lines += [f"**Failed: {name}.** {_first_lines(why)}", ""]
    lines += ["**Image agreement** with " + ref + " (uint8, same latents): " + "; ".join(
        f"{name}: PSNR {a['psnr_db']:.1f} dB, max abs diff {a['max_abs_diff']}"
        for name, a in report["agreement_vs_reference"].items()) + ".", ""]
    g = report["goals"]
    lines += ["**Issue 16 figures** (SD 1.5 architecture, 512x512, 50 steps, CFG, on an H200; reported, not asserted"
              + ("; a dry run cannot meet them" if s["dry_run"] else "") + f"), fastest latentrt row `{g['fastest']}`:", "",
              _goal_line("end to end", g["end_to_end_s"], "≤", "{:.3f} s"),
              _goal_line(f"end to end speed-up vs {ref}", g["end_to_end_speedup"], "≥", "{:.2f}x"),
              _goal_line(f"image PSNR vs {ref} (lowest latentrt row)", g["psnr_db"], "≥", "{:.1f} dB"), ""]
    lines += _closing_lines(report)
    return "\n".join(lines)


def _first_lines(text: str, count: int = 3) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines()[:count]) + " (the JSON has the whole error.)"


def _row_text(name: str, row: dict) -> str:
    info = row["info"]
    if row["system"] == "latentrt":
        options = ", ".join(k for k, on in row["pipeline_options"].items() if on) or "no IO binding"
        return f"{name}: ONNX Runtime {(info.get('providers') or ['?'])[0]}, fp16 folder ({options})"
    return f"{name}: diffusers {info.get('precision')} on {info.get('device')}, {info.get('attention')}"


def _goal_line(label: str, goal: dict, comparison: str, fmt: str) -> str:
    return (f"- {label}: {fmt.format(goal['measured'])} (goal {comparison} {fmt.format(goal['goal'])}) — "
            f"{'met' if goal['met'] else 'missed'}")


def _closing_lines(report: dict) -> list[str]:
    m, gpu, phases = report["machine"], report["machine"]["gpu"], report["phases_s"]
    torch_memory = {name: row["info"]["torch_max_memory_allocated_mb"] for name, row in report["systems"].items()
                    if row["info"].get("torch_max_memory_allocated_mb") is not None}
    if panels(report)[-1][0] == MEMORY:
        memory = ("**GPU memory**: nvidia-smi's memory.used sampled every 0.5 s while the row's process ran, its peak "
                  "minus the level before it started (CUDA context, ONNX Runtime's arena, torch's caching allocator)"
                  + "".join(f"; {name}: torch.cuda.max_memory_allocated {mb:,.0f} MB" for name, mb in torch_memory.items()) + ".")
    else:
        memory = "**GPU memory**: not measured (no nvidia-smi); the table gives each row's peak RSS instead."
    return [
        memory, "",
        "**Method.** Each row runs in a process of its own (the harness's workers), one row after the other: load "
        "(`Pipeline.from_folder` + `compile`; diffusers' `from_pretrained(torch_dtype=...).to(device)`), one call of each "
        "component and one whole generation untimed, then the timed generations, the stages timed inside them "
        "(`UNet call` = median of the loop's calls, CFG batch). torch's times are taken between torch.cuda.synchronize() "
        "calls; ONNX Runtime's run returns with its outputs on the host. latentrt's fp16 folder keeps float32 inputs and "
        "outputs and the VAE decoder in fp32 (its config's force_upcast); "
        + ("diffusers runs fp32 in a dry run." if report["settings"]["dry_run"] else
           "diffusers fp16 runs every network in fp16 (StableDiffusionPipeline does not upcast the VAE)."),
        "",
        f"**Machine.** {gpu.get('name', 'no GPU')}" + (f" (driver {gpu['driver']}, {gpu['memory_total_mb']} MiB)" if gpu else "")
        + f"; {m['cpu_model']}, {m['logical_cores']} logical cores, {m['memory_gb']} GB; {m['platform']}.",
        "",
        "**Versions.** " + "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in (vers or {}).items() if v)
                                     for name, vers in report["versions"].items()),
        "",
        "**Phases.** " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items() if v is not None)
        + f"; benchmark script {report['wall_s']:.0f} s.",
        "",
        f"**Command.** `{report['command']}`",
        "",
    ]


def write_outputs(report: dict, out_dir: Path, name: str, title: str) -> list[Path]:
    from latentrt.bench.plot import plot

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md", out_dir / f"{name}.png"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    plot(report, paths[2], title, panels(report), _settings_line(report))
    paths[1].write_text(render_markdown(report, title) + f"\n![time per component and memory]({paths[2].name})\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--dry-run", action="store_true", help="the tiny model on the CPU, the current environment")
    p.add_argument("--src", default=None, help="a diffusers folder (default: SD 1.5's architecture, random weights)")
    p.add_argument("--work", default=None, help="models, exports and runs (default: $LATENTRT_CACHE/gpu-bench)")
    p.add_argument("--steps", type=int, default=None, help="default 50 (dry run: 3)")
    p.add_argument("--runs", type=int, default=None, help="timed generations per row, default 3 (dry run: 2)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per row (default: every core)")
    p.add_argument("--name", default=None, help="the output files' stem (default gpu-h200; dry run: gpu-dry-run)")
    p.add_argument("--install-seconds", type=float, default=None, help="run.sh's install time, for the report")
    p.add_argument("--command", default=None, help="the command line to record (run.sh's)")
    args = p.parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        raise SystemExit(f"gpu bench: {exc}") from None
    name = plan(args.dry_run, args.steps, args.runs, args.name).name
    title = ("GPU benchmark dry run: tiny SD 1 on the CPU" if args.dry_run else
             f"GPU: SD 1.5 architecture (random weights), 512x512, {report['settings']['steps']} steps, fp16")
    for path in write_outputs(report, args.out_dir, name, title):
        print(path)


if __name__ == "__main__":
    main()
