"""What the ControlNet residual inputs cost a UNet call made without a ControlNet.

A folder exported with `--controlnet` holds the UNet twice over one weights file: unet/model.onnx (plain) and
unet/model_controlnet.onnx (the same graph with the residual inputs and their Adds). The runtime opens the residual
graph only and feeds it zeros on calls without control; this measures that against the plain graph, one batch-2
(classifier-free guidance) UNet call at the given size, per backend (ONNX Runtime CPU fp32, OpenVINO fp32):

    flock /tmp/latentrt-measure.lock python -m benchmarks.controlnet_residual_cost <sd15-controlnet-onnx> \
        [--size 512] [--calls 5] [--backends ort,openvino] [--sequential --rounds 2]
        [--out benchmarks/results/controlnet_residual_cost]

By default both graphs are loaded at once (two SD 1.5 UNets: about 7 GB of weights plus one call's activations) and
called alternately, plain then residual, --calls times each after one warm-up call each, so that a change in the
machine's load falls on both alike. --sequential loads one graph at a time instead (half the memory), in rounds
A B then B A. The figure per backend is the median of each graph's timed calls, and their ratio. Writes <out>.md
and <out>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.load_time import cpu_flags, cpu_name


def feeds_for(folder: Path, size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The plain UNet's inputs (batch 2, 77 tokens) and the residual graph's zeros, shaped from the folder's UNet."""
    from latentrt.export.specs import residual_channels, residual_downsamples
    from latentrt.runtime.folder import ModelFolder

    model = ModelFolder.open(folder)
    config = model.components["unet"].config
    side = size // model.vae.scale_factor
    rng = np.random.default_rng(0)
    plain = {
        "sample": rng.standard_normal((2, model.unet.in_channels, side, side), dtype=np.float32),
        "timestep": np.array([500.0, 500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, model.unet.cross_attention_dim), dtype=np.float32),
    }
    channels, mid = residual_channels(config)
    halvings = residual_downsamples(config) + [len(config["block_out_channels"]) - 1]
    zeros = {}
    for i, (c, times) in enumerate(zip(channels + [mid], halvings)):
        s = side
        for _ in range(times):
            s = (s + 1) // 2
        name = f"down_block_additional_residual_{i}" if i < len(channels) else "mid_block_additional_residual"
        zeros[name] = np.zeros((2, c, s, s), dtype=np.float32)
    return plain, zeros


def load(backend: str, name: str, path: Path):
    if backend == "ort":
        from latentrt.runtime.session import OnnxModel

        return OnnxModel(name, path, ["CPUExecutionProvider"])
    from latentrt.runtime.backends.openvino import OpenVinoModel

    return OpenVinoModel(name, path, "fp32")  # no cache: the graph as exported


def measure(backend: str, path: Path, feeds: dict, calls: int) -> dict:
    t0 = time.perf_counter()
    model = load(backend, path.stem, path)
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    model(**feeds)  # warm-up (OpenVINO compiles for these shapes here)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model(**feeds)
        times.append(time.perf_counter() - t0)
    del model
    gc.collect()
    return {"load_s": loaded, "warmup_s": warmup, "calls_s": times}


def measure_interleaved(backend: str, graphs: dict, calls: int) -> dict:
    """Both graphs loaded, then called alternately: {graph: [run]} as `measure` gives them."""
    models, runs = {}, {}
    for name, (path, feeds) in graphs.items():
        t0 = time.perf_counter()
        models[name] = load(backend, path.stem, path)
        runs[name] = {"load_s": time.perf_counter() - t0, "calls_s": []}
    for name, (_, feeds) in graphs.items():
        t0 = time.perf_counter()
        models[name](**feeds)
        runs[name]["warmup_s"] = time.perf_counter() - t0
    for _ in range(calls):
        for name, (_, feeds) in graphs.items():
            t0 = time.perf_counter()
            models[name](**feeds)
            runs[name]["calls_s"].append(time.perf_counter() - t0)
    models.clear()
    gc.collect()
    return {name: [run] for name, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a model folder exported with --controlnet")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--sequential", action="store_true", help="one graph loaded at a time, in --rounds rounds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backends", default="ort,openvino")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/controlnet_residual_cost"))
    args = parser.parse_args()
    plain, zeros = feeds_for(args.folder, args.size)
    graphs = {"plain": (args.folder / "unet" / "model.onnx", plain),
              "residual (zeros)": (args.folder / "unet" / "model_controlnet.onnx", {**plain, **zeros})}
    load_before = os.getloadavg()
    results: dict = {}
    for backend in args.backends.split(","):
        runs: dict = {name: [] for name in graphs}
        if not args.sequential:
            runs = measure_interleaved(backend, graphs, args.calls)
            print(backend, json.dumps(runs), flush=True)
        for r in range(args.rounds if args.sequential else 0):
            order = list(graphs) if r % 2 == 0 else list(graphs)[::-1]
            for name in order:
                path, feeds = graphs[name]
                run = measure(backend, path, feeds, args.calls)
                runs[name].append(run)
                print(backend, name, json.dumps(run), flush=True)
        medians = {name: statistics.median(t for run in rs for t in run["calls_s"]) for name, rs in runs.items()}
        results[backend] = {"runs": runs, "median_s": medians,
                            "ratio": medians["residual (zeros)"] / medians["plain"]}
    data = {"folder": args.folder.name, "size": args.size, "batch": 2, "calls": args.calls,
            "rounds": args.rounds if args.sequential else None,
            "cpu": cpu_name(), "threads": os.cpu_count(), "cpu_flags": cpu_flags(),
            "load_average": {"before": load_before, "after": os.getloadavg()}, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(data))
    print(report(data))


def report(d: dict) -> str:
    names = {"ort": "ONNX Runtime CPU fp32", "openvino": "OpenVINO CPU fp32"}
    lines = [
        "# ControlNet residual inputs: the cost of a UNet call without a ControlNet",
        "",
        f"SD 1.5 architecture (random weights), {d['size']}x{d['size']}, one batch-{d['batch']} UNet call (classifier-free "
        "guidance). `plain`: unet/model.onnx; `residual (zeros)`: unet/model_controlnet.onnx fed zeros for its 13 "
        "residual inputs, as the runtime runs a folder with ControlNets on a call without control. Same weights file; "
        + (f"one graph loaded at a time, rounds plain/residual then residual/plain ({d['rounds']} rounds x {d['calls']} "
           "timed calls after one warm-up per load)" if d["rounds"] else
           f"both graphs loaded, called alternately ({d['calls']} timed calls each after one warm-up each)")
        + "; median of each graph's timed calls.",
        "",
        "| backend | plain (s) | residual, zeros (s) | residual / plain |",
        "| --- | ---: | ---: | ---: |",
    ]
    for backend, r in d["results"].items():
        m = r["median_s"]
        lines.append(f"| {names.get(backend, backend)} | {m['plain']:.2f} | {m['residual (zeros)']:.2f} | {r['ratio']:.3f} |")
    lines += ["", "Every timed call (s):", ""]
    for backend, r in d["results"].items():
        for name, runs in r["runs"].items():
            calls = ", ".join(f"{t:.2f}" for run in runs for t in run["calls_s"])
            loads = ", ".join(f"{run['load_s']:.1f}" for run in runs)
            lines.append(f"- {names.get(backend, backend)}, {name}: {calls} (loads {loads} s)")
    before = " ".join(f"{x:.2f}" for x in d["load_average"]["before"])
    after = " ".join(f"{x:.2f}" for x in d["load_average"]["after"])
    lines += [
        "",
        f"Machine: {d['cpu']}, {d['threads']} threads; CPU flags: {d['cpu_flags']}. Load average (1, 5, 15 min) before: "
        f"{before}; after: {after} (other jobs shared the machine; the lock kept other measurements out).",
        "",
        "Command:",
        "",
        "```bash",
        "latentrt export <sd15-diffusers> <sd15-controlnet-onnx> --controlnet canny=<sd15-controlnet>   # a random "
        "ControlNet made from the UNet: tests/controlnet_models.py random_controlnet",
        f"flock /tmp/latentrt-measure.lock python -m benchmarks.controlnet_residual_cost <sd15-controlnet-onnx> "
        f"--size {d['size']} --calls {d['calls']}" + (f" --sequential --rounds {d['rounds']}" if d["rounds"] else ""),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
