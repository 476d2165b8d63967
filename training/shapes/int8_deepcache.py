"""DeepCache on the int8 shapes model: the shallow UNet quantized too, against the shallow UNet left fp32.

    python -m training.shapes.int8_deepcache [--out training/shapes/results/int8_deepcache]

The shipped model is quantized with `latentrt quantize`'s defaults (which quantize DeepCache's shallow UNet as
well); a second folder is that one with the fp32 shallow UNet put back (the int8 folders before the shallow
UNet was quantized). Both draw the 537 images of the committed adherence measurement (`ship.measure`, same
prompts and seeds) with ONNX Runtime at 20 steps of dpm++2m and ddim, cache interval 3 and 5; the rows say the
judged adherence (all four attributes right) against the fp32 folder uncached and the int8 folder uncached,
and each image's PSNR against the int8 folder's uncached image. Then one shallow UNet call of each folder
against one full int8 call (batch 16, the calls alternated 20 times, medians).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from .deepcache import call_times, measure
from .evaluate import prompt_splits
from .judge import ATTRIBUTES
from .precision import write_report
from .ship import RESULTS, SHIPPED

STEPS = 20
SAMPLERS = ("dpm++2m", "ddim")
INTERVALS = (3, 5)


def fp32_shallow_copy(int8: Path, out: Path) -> Path:
    """`int8` with the shipped model's fp32 shallow UNet in place of its quantized one."""
    shutil.copytree(int8, out)
    shutil.rmtree(out / "unet_shallow")
    shutil.copytree(SHIPPED / "unet_shallow", out / "unet_shallow")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["components"]["unet_shallow"] = json.loads((SHIPPED / "manifest.json").read_text())["components"]["unet_shallow"]
    manifest["quantization"]["components"] = ["unet"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def markdown(report: dict) -> str:
    cols = (*ATTRIBUTES, "all")
    lines = [
        "# DeepCache on the int8 shapes model: quantized shallow UNet against fp32 shallow UNet",
        "",
        f"Written by `{report['command']}` on {report['machine']['cpu_model']} ({report['machine']['logical_cores']} "
        "cores). " + __doc__.split("\n\n", 2)[2].replace("\n", " ").strip(),
        "",
        "| sampler | folder | interval | full / shallow UNet calls | " + " | ".join(cols)
        + " | Δ all vs fp32 uncached | Δ all vs int8 uncached | PSNR vs int8 uncached median / min (dB) |",
        "| --- | --- | ---: | --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        fp32, int8 = report["uncached"][row["scheduler"]]["fp32"], report["uncached"][row["scheduler"]]["int8"]
        psnr = f"{row['psnr_median']} / {row['psnr_min']}" if "psnr_median" in row else "–"
        lines.append(f"| {row['scheduler']} | {row['folder']} | {row['cache_interval']} | {row['full_calls']} / "
                     f"{row['shallow_calls']} | " + " | ".join(f"{100 * row[c]:.1f}%" for c in cols)
                     + f" | {100 * (row['all'] - fp32['all']):+.1f} | {100 * (row['all'] - int8['all']):+.1f} | {psnr} |")
    lines += ["", "One UNet call, batch 16 (ms, median of 20):", "",
              "| folder | full call | shallow call | shallow / full |", "| --- | ---: | ---: | ---: |"]
    for name, times in report["call_ms"].items():
        lines.append(f"| {name} | {times['full']:.1f} | {times['shallow']:.1f} | {times['shallow'] / times['full']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import shlex
    import sys

    from latentrt import Pipeline
    from latentrt.bench.harness import machine_info
    from latentrt.export.quantize import quantize_folder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS / "int8_deepcache", help="writes OUT.md and OUT.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    splits = prompt_splits()
    options = dict(provider="cpu", precision="fp32", threads=args.threads, use_cache=False)
    rows, uncached, call_ms = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "int8"
        quantize_folder(SHIPPED, int8, report=lambda _: None)
        folders = {"fp32": SHIPPED, "int8, int8 shallow": int8,
                   "int8, fp32 shallow": fp32_shallow_copy(int8, Path(tmp) / "int8-fp32-shallow")}
        pipes = {name: Pipeline.from_folder(folder, **options) for name, folder in folders.items()}
        for sampler in SAMPLERS:
            base = {"steps": STEPS, "scheduler": sampler}
            uncached[sampler] = {}
            for name in ("fp32", "int8"):
                row, drawn = measure(pipes["fp32" if name == "fp32" else "int8, int8 shallow"], splits,
                                     {**base, "cache_interval": 1}, None)
                uncached[sampler][name] = row
            reference = drawn  # the int8 folder's uncached images
            for interval in INTERVALS:
                settings = {**base, "cache_interval": interval}
                for name in ("int8, int8 shallow", "int8, fp32 shallow"):
                    row, _ = measure(pipes[name], splits, settings, reference)
                    result = pipes[name]("a red circle at the top left on a white background", seed=0, **settings)
                    rows.append({**row, "folder": name, "full_calls": result.unet_calls["full"],
                                 "shallow_calls": result.unet_calls["shallow"]})
        for name in ("int8, int8 shallow", "int8, fp32 shallow"):
            call_ms[name] = call_times(pipes[name])
        for pipe in pipes.values():
            pipe.close()
    report = {
        "command": "python -m training.shapes.int8_deepcache " + shlex.join(sys.argv[1:]),
        "machine": machine_info(),
        "uncached": uncached,
        "rows": rows,
        "call_ms": call_ms,
    }
    write_report(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
