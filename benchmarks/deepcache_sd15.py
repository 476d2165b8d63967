"""DeepCache on the SD 1.5 architecture (random weights): image PSNR of cached runs against the uncached run.

    python -m benchmarks.deepcache_sd15 <folder> [--size 256] [--provider openvino] \
        --json benchmarks/results/deepcache_sd15.json --markdown benchmarks/results/deepcache_sd15.md

<folder> is an SD 1.5 export with the shallow UNet: `latentrt export <bench-cache>/sd15-random-diffusers <folder>
--deepcache` (or the bench cache's, which `latentrt bench --cache-interval` writes). Grid: steps (20, 50) x sampler
(dpm++2m, ddim) x interval (2, 3, 5 uniform; 3, 5 non-uniform), CFG 7.5, the same initial latents for every
setting of a prompt. With random weights there is no adherence to judge: PSNR against uncached is what
caching costs in pixels on this architecture's feature dynamics, reported, not a quality figure (the shapes model's
table is: training/shapes/results/deepcache.md). No timings here: speed is `latentrt bench --cache-interval`'s.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

PROMPTS = ("a photograph of an astronaut riding a horse on the moon, detailed, sharp focus",
           "a watercolor painting of a lighthouse on a cliff at sunset")
STEPS = (20, 50)
SAMPLERS = ("dpm++2m", "ddim")
RUNS = [(2, "uniform"), (3, "uniform"), (5, "uniform"), (3, "nonuniform"), (5, "nonuniform")]


def main() -> None:
    from latentrt import Pipeline
    from latentrt.bench.machine import machine_info
    from latentrt.export.validate import image_psnr

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--provider", default="openvino")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--markdown", type=Path, required=True)
    args = p.parse_args()
    pipe = Pipeline.from_folder(args.folder, provider=args.provider, precision=args.precision, threads=args.threads)
    if pipe.folder.deepcache is None:
        raise SystemExit(f"{args.folder} has no shallow UNet: export it with `latentrt export --deepcache`")
    rows = []
    for steps in STEPS:
        for sampler in SAMPLERS:
            settings = dict(height=args.size, width=args.size, steps=steps, scheduler=sampler, guidance_scale=7.5)
            uncached = [pipe(prompt, seed=i, **settings).arrays for i, prompt in enumerate(PROMPTS)]
            for interval, schedule in RUNS:
                psnr, calls = [], None
                for i, prompt in enumerate(PROMPTS):
                    result = pipe(prompt, seed=i, cache_interval=interval, cache_schedule=schedule, **settings)
                    psnr.append(round(image_psnr(result.arrays, uncached[i]), 2))
                    calls = result.unet_calls
                row = {"steps": steps, "scheduler": sampler, "cache_interval": interval, "cache_schedule": schedule,
                       **calls, "psnr_db": psnr}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "command": "python -m benchmarks.deepcache_sd15 " + shlex.join(
            ["<folder>" if a == str(args.folder) else a for a in sys.argv[1:]]),
        "machine": machine_info(),
        "provider": pipe.provider,
        "precision": pipe.precision,
        "branch": pipe.folder.deepcache["branch"],
        "size": args.size,
        "prompts": list(PROMPTS),
        "rows": rows,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    args.markdown.write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "# DeepCache on the SD 1.5 architecture (random weights): PSNR against uncached",
        "",
        f"Written by `{report['command']}` on {report['machine']['cpu_model']}; {report['provider']} "
        f"{report['precision']}, split at branch {report['branch']}, {report['size']}x{report['size']}, CFG 7.5, two "
        "prompts (seeds 0 and 1), each image against the uncached image of the same prompt, steps and sampler.",
        "",
        "| steps | sampler | interval | schedule | full / shallow UNet calls | PSNR vs uncached (dB), per prompt |",
        "| ---: | --- | ---: | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['steps']} | {r['scheduler']} | {r['cache_interval']} | {r['cache_schedule']} | "
                     f"{r['full']} / {r['shallow']} | {' / '.join(f'{x:.1f}' for x in r['psnr_db'])} |")
    lines += ["", "With random weights there is no adherence to judge: PSNR against uncached is what caching costs in "
              "pixels on this architecture, reported, not a quality figure (the shapes model's table is: "
              "training/shapes/results/deepcache.md). No timings here: speed is `latentrt bench --cache-interval`'s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
