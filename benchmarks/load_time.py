"""Ready-to-generate time per CPU path, cold and warm, and a fresh `latentrt generate` against a warm image.

    python -m benchmarks.load_time --fp32 <sd15-onnx> --int8 <sd15-int8> --work <scratch> [--repeats 3]
                                   [--out benchmarks/results/load_time]

"Ready" is `Pipeline.from_folder(...)` plus `pipe.compile(512, 512, guidance_scale=0)` (OpenVINO compiles each
network for the call's shapes; ONNX Runtime needs nothing, its load is all), timed in a fresh process from before
`import latentrt` to the return; `ready_first_call` adds the first 512x512 call (1 step, no CFG) minus a second
one (what the first call still costs beyond a warm image); OpenVINO's `lazy_ready` skips `compile` (the first
call compiles each network when it reaches it, one after the other, as `latentrt generate` does) and counts the
load plus the first call's extra time, against the eager `compile` of the three networks in parallel. Each path runs cold once (an empty cache folder: ONNX
Runtime writes its optimized copy, OpenVINO its IR and compiled models), then warm `--repeats` times (median), and
OpenVINO also with `use_cache=False` (compiling from model.onnx, latentrt's behaviour before its load cache).
Last, the default path (`provider=auto`) end to end: `latentrt generate` at 512x512, 1 step, guidance 0, as a
fresh process with a warm cache (median of `--repeats`), against the median warm in-process image. The whole
run holds /tmp/latentrt-measure.lock (one measurement at a time on the machine).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCK = "/tmp/latentrt-measure.lock"
SIZE = 512
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

# One process: import, load, compile; optionally the first and a second call. Prints JSON on its last line.
WORKER = r"""
import json, sys, time
start = time.perf_counter()
from latentrt import Pipeline
folder, provider, precision, cache, calls, when = sys.argv[1:7]
options = {"use_cache": False} if cache == "off" else {"cache_dir": cache}
pipe = Pipeline.from_folder(folder, provider=provider, precision=precision, **options)
loaded = time.perf_counter()
if when == "eager":  # else the first call compiles each network as it reaches it
    pipe.compile(512, 512, guidance_scale=0.0)
out = {"load": loaded - start, "ready": time.perf_counter() - start, "provider": pipe.provider, "precision": pipe.precision}
for i in range(int(calls)):
    t = time.perf_counter()
    pipe("a lighthouse", height=512, width=512, steps=1, guidance_scale=0.0, seed=i)
    out[f"call{i + 1}"] = time.perf_counter() - t
print(json.dumps(out))
"""


def run_worker(folder: Path, provider: str, precision: str, cache: str, calls: int = 0, when: str = "eager") -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, str(folder), provider, precision, cache, str(calls), when],
                          check=False, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{provider} {precision} {folder}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def measure_path(name: str, folder: Path, provider: str, precision: str, work: Path, repeats: int,
                 ready_only: bool = False) -> dict:
    cache = work / f"cache-{name.replace(' ', '-')}"
    shutil.rmtree(cache, ignore_errors=True)
    cold = run_worker(folder, provider, precision, str(cache))
    warm = [run_worker(folder, provider, precision, str(cache)) for _ in range(repeats)]
    row = {"path": name, "folder": folder.name, "provider": provider, "precision": cold["precision"],
           "cold_ready": round(cold["ready"], 2), "warm_ready": round(median(warm, "ready"), 2),
           "warm_load": round(median(warm, "load"), 2), "warm_runs": [round(r["ready"], 2) for r in warm],
           "cache_bytes": sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())}
    if not ready_only:
        first = run_worker(folder, provider, precision, str(cache), calls=2)
        row.update(first_call_extra=round(first["call1"] - first["call2"], 2), warm_call=round(first["call2"], 2))
    if provider == "openvino" and not ready_only:
        lazy = run_worker(folder, provider, precision, str(cache), calls=2, when="lazy")
        row["lazy_ready"] = round(lazy["load"] + lazy["call1"] - lazy["call2"], 2)
        uncached = [run_worker(folder, provider, precision, "off") for _ in range(repeats)]
        row["uncached_ready"] = round(median(uncached, "ready"), 2)
        row["uncached_runs"] = [round(r["ready"], 2) for r in uncached]
    shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(row), flush=True)
    return row


def fresh_png(folder: Path, work: Path, repeats: int) -> dict:
    """`latentrt generate` on the default path with a warm cache, against a warm in-process image."""
    cache = work / "cache-default"
    shutil.rmtree(cache, ignore_errors=True)
    warm = run_worker(folder, "auto", "auto", str(cache), calls=repeats + 1)  # also fills the cache
    images = [warm[f"call{i + 2}"] for i in range(repeats)]
    env = {**os.environ, "LATENTRT_CACHE": str(cache)}
    walls = []
    for i in range(repeats):
        out = work / f"fresh-{i}.png"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from latentrt.cli import app; app()", "generate", "a lighthouse", "-m", str(folder), "--height",
                        str(SIZE), "--width", str(SIZE), "--steps", "1", "--guidance", "0", "--seed", str(i), "-o",
                        str(out), "--force"], check=True, capture_output=True, env=env, timeout=1800)
        walls.append(time.perf_counter() - start)
    shutil.rmtree(cache, ignore_errors=True)
    row = {"path": f"default ({warm['provider']} {warm['precision']})", "fresh_png": round(statistics.median(walls), 2),
           "fresh_runs": [round(w, 2) for w in walls], "warm_image": round(statistics.median(images), 2)}
    row["over_warm_image"] = round(row["fresh_png"] - row["warm_image"], 2)
    print(json.dumps(row), flush=True)
    return row


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    return " ".join(flag for flag in CPU_FLAGS if flag in flags) or "none of " + ", ".join(CPU_FLAGS)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _plain(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(rows: list[dict], png: dict | None, args: argparse.Namespace, load: str, load_after: str) -> str:
    lines = [
        "# Ready to generate: load time per CPU path (SD 1.5 architecture, 512x512)",
        "",
        (f"CPU: {cpu_name()}, {os.cpu_count()} threads; flags: {cpu_flags()}. Load average (1, 5, 15 min) "
        f"at the start: {load}; at the end: {load_after}."),
        "",
        "```",
        ("python -m benchmarks.load_time --fp32 <sd15-onnx> --int8 <sd15-int8> --work <scratch> "
        f"--repeats {args.repeats}" + (" --ready-only" if args.ready_only else "")),
        "```",
        "",
        ("Seconds, each a fresh process. ready = `Pipeline.from_folder` + `compile(512, 512, guidance_scale=0)`; "
        f"warm: the cache filled by an earlier process (median of {args.repeats}); cold: an empty cache folder (one "
        "run); uncached: OpenVINO with `use_cache=False` (compiled from model.onnx, the behaviour before the load "
        "cache; median); lazy: no `compile`, load + the first call's extra time (networks compiled one by one as "
        "the call reaches them). First call extra: the first 512x512 call (1 step, no CFG) minus the second, in a "
        "warm process."),
        "",
        "| path | warm ready | (runs) | cold ready | uncached ready | lazy ready | first call extra | warm call | cache on disk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['path']} ({r['precision']}) | {r['warm_ready']:.2f} | {', '.join(f'{x:.1f}' for x in r['warm_runs'])} | "
                     f"{r['cold_ready']:.2f} | {r.get('uncached_ready', '-')} | {r.get('lazy_ready', '-')} | "
                     f"{_signed(r.get('first_call_extra'))} | {_plain(r.get('warm_call'))} | {r['cache_bytes'] / 1e9:.2f} GB |")
    if png is None:
        return "\n".join([*lines, "", ("`--ready-only`: cold and warm ready only (no calls, no uncached or lazy loads, no "
                                        "`latentrt generate`)."), ""])
    lines += [
        "",
        (f"Default path end to end: `latentrt generate` 512x512, 1 step, guidance 0, warm cache: {png['path']}: fresh "
        f"process to PNG {png['fresh_png']:.2f} s (runs {', '.join(f'{x:.1f}' for x in png['fresh_runs'])}), warm "
        f"in-process image {png['warm_image']:.2f} s: {png['over_warm_image']:+.2f} s over the warm image (goal: at "
        "most +5 s)."),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", type=Path, required=True, help="an SD 1.5-architecture fp32 folder")
    parser.add_argument("--int8", type=Path, help="the same folder after `latentrt quantize`")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for the caches (emptied after)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated path names to run (default: all)")
    parser.add_argument("--ready-only", action="store_true",
                        help="only the cold and warm ready times (no calls, no uncached or lazy loads, no generate)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/load_time"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="latentrt-load-"))
    work.mkdir(parents=True, exist_ok=True)
    from latentrt.runtime.backends.openvino import supports_bf16

    paths = [("onnxruntime fp32", args.fp32, "cpu", "fp32"), ("onnxruntime int8", args.int8, "cpu", "fp32"),
             ("openvino fp32", args.fp32, "openvino", "fp32"),
             ("openvino bf16", args.fp32, "openvino", "bf16") if supports_bf16() else None,
             ("openvino int8", args.int8, "openvino", "auto")]
    only = set(filter(None, args.only.split(",")))
    paths = [p for p in paths if p and p[1] is not None and (not only or p[0] in only)]
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        rows = [measure_path(name, folder, provider, precision, work, args.repeats, args.ready_only)
                for name, folder, provider, precision in paths]
        png = None if args.ready_only else fresh_png(args.fp32, work, args.repeats)
        load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"cpu": cpu_name(), "flags": cpu_flags(), "load_average": load,
                                                         "load_average_after": load_after, "paths": rows, "default_png": png}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(rows, png, args, load, load_after))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
