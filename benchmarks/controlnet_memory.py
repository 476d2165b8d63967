"""The memory guard's ControlNet terms against measured peak RSS: one generation per fresh process, with and without
a ControlNet, on a folder exported with `--controlnet` (SD 1.5's architecture: random weights serve, memory does not
depend on them).

    flock /tmp/latentrt-measure.lock python -m benchmarks.controlnet_memory <sd15-controlnet-onnx> --sizes 256,512 \
        --out benchmarks/results/controlnet_memory.md

Each case: `Pipeline.from_folder(folder, provider, threads=2, use_cache=False)`, one generation (1 step, guidance 7.5,
one image) without control or with the folder's first ControlNet, and its peak RSS (ru_maxrss) beside the
estimate (the resident weights plus `latentrt.runtime.memory.estimate(...).peak`). The row that matters is the
difference: what a ControlNet adds, measured and estimated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def estimated_mb(folder, provider: str, size: int, control: bool) -> float:
    """The resident weights plus the memory guard's peak for this call, as the current code estimates it."""
    from latentrt.runtime.memory import component_bytes, estimate

    names = [next(iter(folder.controlnets))] if control else []
    guess = estimate(folder, size, size, texts=2, images=1, compiles=provider == "openvino", controlnets=names)
    weights = sum(component_bytes(folder, n) for n in ("text_encoder", "unet", "vae_decoder"))  # UNet data once
    return (weights + guess.peak) / 1e6


def worker(folder: str, provider: str, size: int, control: bool) -> dict:
    import numpy as np

    from latentrt.runtime.pipeline import Pipeline

    pipe = Pipeline.from_folder(folder, provider=provider, threads=2, use_cache=False)
    name = next(iter(pipe.folder.controlnets))
    options = {}
    if control:
        edges = np.zeros((size, size, 3), np.uint8)
        edges[size // 4: size // 4 + 2, :] = 255
        options = {"control_image": edges, "controlnet": name}
    pipe("a red circle", steps=1, height=size, width=size, guidance_scale=7.5, seed=0, **options)
    return {"provider": provider, "size": size, "control": control, "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measured", type=Path, help="re-render from the JSON rows of an earlier run (estimates recomputed)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        folder, provider, size, control = args.worker
        print(json.dumps(worker(folder, provider, int(size), control == "1")))
        return
    from latentrt.runtime.folder import ModelFolder

    folder = ModelFolder.open(args.folder)
    rows = json.loads(args.measured.read_text()) if args.measured else []
    for provider in [] if args.measured else args.providers.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for control in ("0", "1"):
                out = subprocess.run([sys.executable, "-m", "benchmarks.controlnet_memory", args.folder, "--worker",
                                      args.folder, provider, str(size), control], capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    for row in rows:
        row["estimate_MB"] = estimated_mb(folder, row["provider"], row["size"], row["control"])
    lines = ["# What a ControlNet adds to a generation's memory: measured and estimated", "",
             "SD 1.5's architecture with one ControlNet (random weights), one generation of 1 step, guidance 7.5 (UNet and",
             "ControlNet batch 2), peak RSS of a fresh process; the estimate is the resident weights plus the memory",
             "guard's `estimate(...).peak` (latentrt/runtime/memory.py) as this commit's code computes it (`--measured",
             "<out>.json` re-renders a run's measured rows with the current estimate; CONTROLNET_LOAD_FACTOR was",
             "calibrated on this run). ONNX Runtime CPU, 2 threads, use_cache=False, AMD EPYC (Zen 4).", "",
             "```", (f"python -m benchmarks.controlnet_memory <sd15-controlnet-onnx> --sizes {args.sizes} "
                     f"--providers {args.providers}"), "```", "",
             "| provider | size | ControlNet | peak RSS (MB) | estimate (MB) |", "| --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['provider']} | {r['size']} | {'yes' if r['control'] else 'no'} | {r['peak_rss_MB']:.0f} | "
                     f"{r['estimate_MB']:.0f} |")
    lines += ["", "| provider | size | added by the ControlNet, measured (MB) | estimated (MB) |", "| --- | ---: | ---: | ---: |"]
    for plain, control in zip(rows[::2], rows[1::2]):
        lines.append(f"| {plain['provider']} | {plain['size']} | {control['peak_rss_MB'] - plain['peak_rss_MB']:.0f} | "
                     f"{control['estimate_MB'] - plain['estimate_MB']:.0f} |")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps([{k: v for k, v in r.items() if k != "estimate_MB"} for r in rows]))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
