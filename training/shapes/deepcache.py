"""DeepCache on the shipped shapes model: judged adherence and PSNR against the uncached run.

    python -m training.shapes.deepcache [--out training/shapes/results/deepcache]

Every setting draws the same 537 images as the committed adherence measurement (`ship.measure`: 341
in-distribution prompts, 49 held-out combinations x 4; same seeds, so the same initial latents), with ONNX
Runtime fp32 (the parity path) at the model's guidance (1). Grid: steps (20, 50) x sampler (dpm++2m, ddim) x
cache interval (1 = uncached, 2, 3, 5; uniform, and the non-uniform schedule at 3 and 5). PSNR: each image
against the uncached image of the same steps and sampler (uint8). Then the split point: the shapes UNet
exported at every branch it has (`latentrt export --deepcache --cache-branch B`), at 20 steps of dpm++2m,
interval 3, with the time of one shallow UNet call against one full call (batch 16, 2 threads, the two
alternated 20 times, medians): what a shallow call saves at that split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from .evaluate import prompt_splits
from .judge import ATTRIBUTES, score
from .precision import draw, psnr_per_image, write_report
from .ship import REFERENCE, RESULTS, SHIPPED

STEPS = (20, 50)
SAMPLERS = ("dpm++2m", "ddim")
INTERVALS = (1, 2, 3, 5)
NONUNIFORM = (3, 5)
BRANCH_SETTING = {"steps": 20, "scheduler": "dpm++2m", "cache_interval": 3}
RECOMMEND_POINTS = 2.0  # an interval may be recommended only within this many points of uncached (issue 15)


def measure(pipe, splits: dict, settings: dict, reference: dict | None) -> tuple[dict, dict]:
    drawn = draw(pipe, splits, **settings)
    images = np.concatenate([i for i, _ in drawn.values()])
    attrs = [a for _, group in drawn.values() for a in group]
    row = {**settings, "images": len(images), **{k: round(v, 4) for k, v in score(list(images), attrs).items()}}
    if reference is not None:
        psnr = psnr_per_image(images, np.concatenate([i for i, _ in reference.values()]))
        finite = psnr[np.isfinite(psnr)]
        row["identical"] = int(np.isinf(psnr).sum())
        row["psnr_median"] = None if finite.size == 0 else round(float(np.median(finite)), 2)
        row["psnr_min"] = None if finite.size == 0 else round(float(finite.min()), 2)
    print(json.dumps(row), flush=True)
    return row, drawn


def markdown(report: dict) -> str:
    cols = (*ATTRIBUTES, "all")
    head = ("| steps | sampler | interval | schedule | full / shallow UNet calls | " + " | ".join(cols)
            + " | Δ all (points) | PSNR vs uncached median / min (dB) |")
    rule = "| ---: | --- | ---: | --- | --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: |"

    def line(row: dict, base: dict) -> str:
        psnr = "–" if "psnr_median" not in row else (
            "all identical" if row["psnr_median"] is None else f"{row['psnr_median']} / {row['psnr_min']}")
        return (f"| {row['steps']} | {row['scheduler']} | {row['cache_interval']} | {row['cache_schedule']} | "
                f"{row['full_calls']} / {row['shallow_calls']} | " + " | ".join(f"{100 * row[c]:.1f}%" for c in cols)
                + f" | {100 * (row['all'] - base['all']):+.1f} | {psnr} |")

    lines = [
        "# DeepCache on the shipped shapes model: adherence and PSNR against uncached",
        "",
        f"Written by `{report['command']}` on {report['machine']['cpu_model']} ({report['machine']['logical_cores']} "
        "cores). " + __doc__.split("\n\n", 2)[2].replace("\n", " ").strip()
        + (f" {report['resumed_rows']} grid rows were measured by an earlier, interrupted run of the same command "
           "(`--resume`) and reused." if report.get("resumed_rows") else ""),
        "",
        head,
        rule,
    ]
    for row in report["grid"]:
        lines.append(line(row, report["uncached"][f"{row['steps']}/{row['scheduler']}"]))
    lines += ["", f"## The split point (branch), {BRANCH_SETTING['steps']} steps of {BRANCH_SETTING['scheduler']}, "
              f"interval {BRANCH_SETTING['cache_interval']}", "",
              "| branch | shallow graph MB | shallow call / full call (ms) | " + " | ".join(cols)
              + " | Δ all (points) | PSNR vs uncached median / min (dB) |",
              "| ---: | ---: | ---: | " + " | ".join("---:" for _ in cols) + " | ---: | ---: |"]
    base = report["uncached"][f"{BRANCH_SETTING['steps']}/{BRANCH_SETTING['scheduler']}"]
    for row in report["branches"]:
        calls = row["call_ms"]
        lines.append(f"| {row['branch']} | {row['shallow_mb']:.2f} | {calls['shallow'] / calls['full']:.2f} "
                     f"({calls['shallow']:.1f} / {calls['full']:.1f}) | " + " | ".join(f"{100 * row[c]:.1f}%" for c in cols)
                     + f" | {100 * (row['all'] - base['all']):+.1f} | {row['psnr_median']} / {row['psnr_min']} |")
    within = ", ".join(str(n) for n in report["within_points"]) or "none"
    lines += ["", f"**Within {RECOMMEND_POINTS:g} points** of uncached on `all` at every steps x sampler of the grid "
              f"(uniform; what a recommended interval must be): intervals {within}.", ""]
    return "\n".join(lines)


def main() -> None:
    import shlex
    import sys

    from latentrt import Pipeline
    from latentrt.bench.harness import machine_info
    from latentrt.export.exporter import export_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS / "deepcache", help="writes OUT.md and OUT.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", type=Path, help="the printed rows (JSON lines) of an interrupted run of this script: "
                   "its grid rows are reused, not drawn again")
    args = p.parse_args()
    splits = prompt_splits()
    options = dict(provider="cpu", precision="fp32", threads=args.threads, use_cache=False)

    defaults = json.loads((SHIPPED / "manifest.json").read_text())["defaults"]
    done = _resumed(args.resume)
    branch_key = f"{BRANCH_SETTING['steps']}/{BRANCH_SETTING['scheduler']}"
    pipe = Pipeline.from_folder(SHIPPED, **options)
    grid, uncached, references = [], {}, {}
    for steps in STEPS:
        for sampler in SAMPLERS:
            key = f"{steps}/{sampler}"
            runs = [{"steps": steps, "scheduler": sampler, "cache_interval": n, "cache_schedule": schedule}
                    for n, schedule in [(n, "uniform") for n in INTERVALS] + [(n, "nonuniform") for n in NONUNIFORM]]
            # the uncached images: drawn unless every row of this steps x sampler is resumed (the branch table's
            # reference is always drawn)
            draw_reference = key == branch_key or any(tuple(r.values()) not in done for r in runs)
            for settings in runs:
                row = done.get(tuple(settings.values()))
                if row is None or (settings["cache_interval"] == 1 and draw_reference):
                    measured, drawn = measure(pipe, splits, settings, references.get(key))
                    row = row or measured
                    if settings["cache_interval"] == 1:
                        references[key] = drawn
                row = {**row, **_calls(pipe, settings)}
                grid.append(row)
                if settings["cache_interval"] == 1:
                    uncached[key] = row
    pipe.close()

    branches = []
    with tempfile.TemporaryDirectory() as tmp:
        for branch in range(_branch_count(SHIPPED)):
            folder = Path(tmp) / f"branch{branch}"
            export_pipeline(REFERENCE, folder, compact_weights=True, cache_branch=branch, report=lambda _: None,
                            defaults=defaults)  # the shipped model's (guidance 1): the same images at interval 1
            pipe = Pipeline.from_folder(folder, **options)
            settings = {**BRANCH_SETTING, "cache_schedule": "uniform"}
            row, _ = measure(pipe, splits, settings, references[branch_key])
            row["branch"] = branch
            row["shallow_mb"] = sum(f.stat().st_size for f in (folder / "unet_shallow").iterdir()) / 1e6
            row["call_ms"] = call_times(pipe)
            branches.append(row)
            pipe.close()

    recommended = [n for n in INTERVALS if n > 1 and all(
        r["all"] >= uncached[f"{r['steps']}/{r['scheduler']}"]["all"] - RECOMMEND_POINTS / 100
        for r in grid if r["cache_interval"] == n and r["cache_schedule"] == "uniform")]
    report = {
        "command": "python -m training.shapes.deepcache " + shlex.join(
            "<the log of the interrupted run>" if args.resume and a == str(args.resume) else a for a in sys.argv[1:]),
        "resumed_rows": sum(tuple(r[k] for k in ("steps", "scheduler", "cache_interval", "cache_schedule")) in done
                            for r in grid),
        "machine": machine_info(),
        "grid": grid,
        "uncached": uncached,
        "branches": branches,
        "within_points": recommended,
    }
    write_report(args.out, report, markdown(report))


def call_times(pipe, batch: int = 16, repeats: int = 20) -> dict[str, float]:
    """Median ms of one full and one shallow UNet call on the same inputs (batch 16), the two alternated."""
    from latentrt.bench.deepcache_calls import call_times as seconds

    times = seconds(pipe, ["a red circle at the top left on a white background"] * batch, 64, 64, False, repeats)
    return {kind: round(1000 * value, 2) for kind, value in times.items()}


def _calls(pipe, settings: dict) -> dict:
    """The full and shallow UNet calls one image of this setting runs (one generation of one prompt)."""
    result = pipe("a red circle at the top left on a white background", seed=0, **settings)
    return {"full_calls": result.unet_calls["full"], "shallow_calls": result.unet_calls["shallow"]}


def _resumed(log: Path | None) -> dict[tuple, dict]:
    """Grid rows an earlier run printed, by (steps, scheduler, cache_interval, cache_schedule)."""
    if log is None:
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    done: dict[tuple, dict] = {}
    for r in rows:  # the first of equal settings: the grid's (the branch table's rows, printed later, share one)
        done.setdefault((r["steps"], r["scheduler"], r["cache_interval"], r["cache_schedule"]), r)
    return done


def _branch_count(folder: Path) -> int:
    """The branches a shallow UNet can split at: the manifest's `branches` less the deepest (the mid block's)."""
    return json.loads((folder / "manifest.json").read_text())["deepcache"]["branches"] - 1


if __name__ == "__main__":
    main()
