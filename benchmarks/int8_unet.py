"""One UNet call, fp32 folder against its `latentrt quantize` folder: time and error, in one process.

    python -m benchmarks.int8_unet <bench-cache>/sd15-onnx <bench-cache>/sd15-int8 \
        [--sizes 256,512] [--threads 2] [--runs 3] [--profile] [--json benchmarks/results/int8-sd15.json]

Inputs: what the UNet sees in use, recorded from a generation of the fp32 folder's own pipeline at each size
(batch 2: a CFG pair; a prompt and seed that the calibration did not use; the folder's scheduler, 10 steps):
the first, middle and last calls. The error is reported for each (the int8 output's max abs difference relative
to the fp32 output's max abs, and the rms difference relative to its rms); the time on the middle one.
Per size: load seconds, median (min-max) of ``--runs`` calls, fp32 and int8 alternating. With ``--profile``,
ONNX Runtime's per-op-type time of one int8 call, which shows whether the integer kernels (QLinearConv,
QLinearMatMul, ...) actually run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def session(path: Path, threads: int, profile: bool = False):
    import onnxruntime as ort

    from latentrt.runtime.session import session_options

    options = session_options(threads)
    if profile:
        import tempfile

        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "int8_unet")
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - t0


PROMPT = "a lighthouse on a cliff above a stormy sea, oil painting"  # not in the calibration's list
SEED = 1234


def trajectory_inputs(folder: Path, side: int, threads: int) -> list[dict]:
    """The first, middle and last UNet inputs of a 10-step CFG generation with the fp32 pipeline."""
    from latentrt.runtime.pipeline import Pipeline

    pipe = Pipeline.from_folder(folder, provider="cpu", threads=threads)
    unet, calls = pipe.unet, []

    class Recorder:
        inputs, outputs = unet.inputs, unet.outputs

        def __call__(self, **feeds):
            calls.append({k: v.copy() for k, v in feeds.items()})
            return unet(**feeds)

    pipe.unet = Recorder()
    pipe(PROMPT, height=side, width=side, steps=10, guidance_scale=7.5, seed=SEED)
    return [calls[0], calls[len(calls) // 2], calls[-1]]


def op_profile(sess, feeds) -> dict[str, float]:
    sess.run(None, feeds)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event.get("dur", 0) / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser(description="one UNet call: fp32 vs int8 folder")
    p.add_argument("fp32", type=Path)
    p.add_argument("int8", type=Path)
    p.add_argument("--sizes", default="256")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from latentrt.bench.machine import machine_info

    inputs = {side: trajectory_inputs(args.fp32, side, args.threads) for side in (int(s) for s in args.sizes.split(","))}
    fp32, fp32_load = session(args.fp32 / "unet" / "model.onnx", args.threads)
    int8, int8_load = session(args.int8 / "unet" / "model.onnx", args.threads)
    report = {"machine": machine_info(), "threads": args.threads, "runs": args.runs, "prompt": PROMPT, "seed": SEED,
              "load_s": {"fp32": round(fp32_load, 2), "int8": round(int8_load, 2)}, "sizes": {}}
    for side, feeds_list in inputs.items():
        errors = {}
        for feeds in feeds_list:
            a = fp32.run(None, feeds)[0].astype(np.float64)
            b = int8.run(None, feeds)[0].astype(np.float64)
            errors[f"t={float(np.ravel(feeds['timestep'])[0]):g}"] = {
                "max_rel_error": float(np.abs(b - a).max() / np.abs(a).max()),
                "rms_rel_error": float(np.sqrt(np.mean((b - a) ** 2)) / np.sqrt(np.mean(a**2))),
                "finite": bool(np.isfinite(b).all()),
            }
        feeds = feeds_list[1]
        times = {"fp32": [], "int8": []}
        for _ in range(args.runs):
            for name, sess in (("fp32", fp32), ("int8", int8)):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times[name].append(time.perf_counter() - t0)
        row = {
            "errors": errors,
            "seconds": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in times.items()},
        }
        row["speedup"] = row["seconds"]["fp32"]["median"] / row["seconds"]["int8"]["median"]
        report["sizes"][str(side)] = row
        print(json.dumps({side: row}, indent=1), flush=True)
    if args.profile:
        feeds = next(iter(inputs.values()))[1]
        del int8
        prof, _ = session(args.int8 / "unet" / "model.onnx", args.threads, profile=True)
        report["int8_op_seconds"] = op_profile(prof, feeds)
        print(json.dumps(report["int8_op_seconds"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
