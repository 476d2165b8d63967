"""DeepCache on int8 folders: the shallow UNet quantized against left fp32, side by side in one run.

    python -m benchmarks.deepcache_int8 <int8-folder> <int8-folder-with-fp32-shallow> [--size 256] \
        [--providers cpu,openvino] --json benchmarks/results/deepcache_int8.json \
        --markdown benchmarks/results/deepcache_int8.md

Both folders come from `latentrt quantize` on the same `--deepcache` export: the first as it writes them now
(UNet and shallow UNet int8), the second with the export's fp32 `unet_shallow/` (and its manifest entry) put
back, as int8 folders were before. Per provider, the two folders' pipelines are loaded side by side and
alternated: one end-to-end generation each at the DeepCache settings of the SD 1.5 architecture benchmarks at 256x256 and 512x512 (20 PNDM steps = 21 UNet
calls, CFG 7.5, cache interval 3: 7 full and 14 shallow calls) and the int8 folder uncached, `--runs` times
after a warm-up, medians; then one full and one shallow UNet call of each (batch 2, the CFG batch), alternated
10 times, medians; and each image's PSNR against the uncached one (same seed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, sharp focus"
SETTINGS = {"steps": 20, "scheduler": "pndm", "guidance_scale": 7.5, "cache_interval": 3, "seed": 0}
LABELS = ("int8 shallow", "fp32 shallow")


def main() -> None:
    from latentrt import Pipeline
    from latentrt.bench.deepcache_calls import call_times
    from latentrt.bench.machine import machine_info
    from latentrt.export.validate import image_psnr

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("int8", type=Path, help="the int8 folder with its shallow UNet quantized")
    p.add_argument("fp32_shallow", type=Path, help="the same folder with the fp32 shallow UNet")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--providers", default="cpu,openvino")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--markdown", type=Path, required=True)
    args = p.parse_args()
    rows = []
    for provider in args.providers.split(","):
        pipes = {label: Pipeline.from_folder(folder, provider=provider, threads=args.threads)
                 for label, folder in zip(LABELS, (args.int8, args.fp32_shallow))}
        kwargs = {**SETTINGS, "height": args.size, "width": args.size}
        # (row, pipeline, cache interval): the int8 folder uncached, then each folder at the interval
        runs = [("uncached", pipes[LABELS[0]], 1)] + [(label, pipe, SETTINGS["cache_interval"]) for label, pipe in pipes.items()]
        images = {label: pipe(PROMPT, **{**kwargs, "cache_interval": n}) for label, pipe, n in runs}  # warm-up, images
        seconds: dict[str, list[float]] = {label: [] for label, _, _ in runs}
        for _ in range(args.runs):
            for label, pipe, n in runs:
                t0 = time.perf_counter()
                pipe(PROMPT, **{**kwargs, "cache_interval": n})
                seconds[label].append(time.perf_counter() - t0)
        for label, pipe, n in runs:
            psnr = image_psnr(images[label].arrays[0], images["uncached"].arrays[0])
            rows.append({
                "provider": provider, "precision": pipe.precision, "folder": label, "cache_interval": n,
                "size": args.size, "seconds": round(statistics.median(seconds[label]), 2),
                "runs": [round(s, 2) for s in seconds[label]], "unet_calls": images[label].unet_calls,
                "call_seconds": {k: round(v, 4) for k, v in call_times(pipe, [PROMPT], args.size, args.size, True, 10).items()},
                "psnr_vs_uncached": None if not np.isfinite(psnr) else round(float(psnr), 1),
            })
            print(json.dumps(rows[-1]), flush=True)
        for pipe in pipes.values():
            pipe.close()
    report = {"command": "python -m benchmarks.deepcache_int8 " + shlex.join(sys.argv[1:]), "machine": machine_info(),
              "settings": {**SETTINGS, "size": args.size, "prompt": PROMPT}, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    args.markdown.write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# DeepCache on int8 folders, {s['size']}x{s['size']}: shallow UNet int8 against fp32", "",
             f"Written by `{report['command']}` on {report['machine']['cpu_model']} "
             f"({report['machine']['logical_cores']} cores). " + __doc__.split("\n\n", 2)[2].replace("\n", " ").strip(),
             "", "| provider | precision | shallow UNet | cache interval | end to end (s) | vs uncached | full call (ms) "
             "| shallow call (ms) | shallow / full | PSNR vs uncached (dB) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by = {(r["provider"], r["folder"]): r for r in report["rows"]}
    for r in report["rows"]:
        base, c = by[(r["provider"], "uncached")], r["call_seconds"]
        lines.append(f"| {r['provider']} | {r['precision']} | {r['folder']} | {r['cache_interval']} | {r['seconds']:.2f} | "
                     f"{base['seconds'] / r['seconds']:.2f}x | {1000 * c['full']:.0f} | {1000 * c['shallow']:.0f} | "
                     f"{c['shallow'] / c['full']:.2f} | {r['psnr_vs_uncached'] or 'identical'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
