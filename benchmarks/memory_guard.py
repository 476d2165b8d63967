"""The memory guard's estimate against the measured peak RSS of whole generations, one process per case.

    python -m benchmarks.memory_guard MODEL_FOLDER --sizes 256,512,768 --providers cpu,openvino [--modes default,low_memory]

Each case runs `Pipeline.from_folder(...)` and one generation (1 step, guidance 7.5, one image) in a fresh
process and reports its peak RSS (ru_maxrss) next to the estimate: weights (component files; in low_memory the
largest phase's own) plus the estimated activations of the call (`latentrt.runtime.memory`).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys


def worker(folder: str, provider: str, mode: str, size: int) -> dict:
    from latentrt.runtime.memory import component_bytes, estimate
    from latentrt.runtime.pipeline import Pipeline

    low = mode == "low_memory"
    pipe = Pipeline.from_folder(folder, provider=provider, threads=2, low_memory=low)
    result = pipe("a red circle", steps=1, height=size, width=size, guidance_scale=7.5, seed=0)
    tiled = bool(pipe.vae_tiling)  # never automatic at these sizes on this machine
    guess = estimate(pipe.folder, size, size, texts=2, images=1, low_memory=low, vae_tile=pipe.vae_tile if tiled else None,
                     compiles=provider == "openvino")
    weights = 0 if low else sum(component_bytes(pipe.folder, n) for n in ("text_encoder", "unet", "vae_decoder"))
    return {
        "provider": provider, "mode": mode, "size": size, "precision": pipe.precision,
        "estimate_MB": (weights + guess.peak) / 1e6, "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--sizes", default="256,512,768")
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--modes", default="default,low_memory")
    parser.add_argument("--worker", nargs=3, metavar=("PROVIDER", "MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        provider, mode, size = args.worker
        print(json.dumps(worker(args.folder, provider, mode, int(size))))
        return
    rows = []
    for provider in args.providers.split(","):
        for mode in args.modes.split(","):
            for size in [int(s) for s in args.sizes.split(",")]:
                out = subprocess.run([sys.executable, "-m", "benchmarks.memory_guard", args.folder, "--worker", provider, mode, str(size)],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"CPU: {platform.processor() or platform.machine()}; command: python -m benchmarks.memory_guard <model> "
          f"--sizes {args.sizes} --providers {args.providers} --modes {args.modes}\n")
    print("| provider | mode | size | precision | estimate (MB) | measured peak RSS (MB) | estimate / measured |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['provider']} | {r['mode']} | {r['size']} | {r['precision']} | {r['estimate_MB']:,.0f} | "
              f"{r['peak_rss_MB']:,.0f} | {r['estimate_MB'] / r['peak_rss_MB']:.2f} |")


if __name__ == "__main__":
    main()
