"""Quality of every fast path on the shipped shapes model: judged adherence and PSNR against fp32.

    python -m training.shapes.precision [--int8 FOLDER] [--out training/shapes/results/precision]

Each path (backend x precision, and an int8 folder from `latentrt quantize` if given) draws the same 537
images as the committed adherence measurement (`ship.measure`: 341 in-distribution prompts, 49 held-out
combinations x 4; same seeds, so the same initial latents) at the model's defaults. The judge scores each
image; each image is also compared with ONNX Runtime fp32's (the parity path) by PSNR on uint8. The gate of
issue 9: a path a user can select is within 1 point of fp32 on "all four right".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .evaluate import generate_onnx, prompt_splits
from .judge import ATTRIBUTES, score
from .ship import HELD_OUT_SEEDS, RESULTS, SEEDS, SHIPPED

GATE_POINTS = 1.0  # percentage points of "all four right" below fp32


def draw(pipe, splits: dict, **settings) -> dict[str, tuple[np.ndarray, list]]:
    """The 537 images (`settings`: the call's keywords; default: the model's defaults)."""
    held = [a for _ in range(HELD_OUT_SEEDS) for a in splits["held"]]
    return {
        "in_distribution": (generate_onnx(pipe, splits["measure"], SEEDS["measure"], **settings), splits["measure"]),
        "held_out": (generate_onnx(pipe, held, SEEDS["held"], **settings), held),
    }


def psnr_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-300)))


def measure_path(label: str, pipe, splits: dict, reference: dict | None) -> tuple[dict, dict]:
    drawn = draw(pipe, splits)  # speed is the benchmarks' job (benchmarks/results), not this file's
    row: dict = {"path": label, "backend": pipe.provider, "precision": pipe.precision}
    everything = []
    for split, (images, attrs) in drawn.items():
        row[split] = {"images": len(images), **{k: round(v, 4) for k, v in score(list(images), attrs).items()}}
        everything.append((images, attrs))
    images = np.concatenate([i for i, _ in everything])
    attrs = [a for _, group in everything for a in group]
    row["all_images"] = {"images": len(images), **{k: round(v, 4) for k, v in score(list(images), attrs).items()}}
    if reference is not None:
        ref = np.concatenate([reference[s][0] for s in drawn])
        psnr = psnr_per_image(images, ref)
        finite = psnr[np.isfinite(psnr)]
        row["psnr_vs_fp32_db"] = {
            "identical_images": int(np.isinf(psnr).sum()),
            "median": None if finite.size == 0 else round(float(np.median(finite)), 2),
            "min": None if finite.size == 0 else round(float(finite.min()), 2),
        }
    return row, drawn


def markdown(report: dict) -> str:
    cols = (*ATTRIBUTES, "all")
    fp32 = report["rows"][0]["all_images"]["all"]
    lines = [
        "# Fast paths on the shipped shapes model: quality against fp32",
        "",
        f"Written by `{report['command']}` on {report['machine']['cpu_model']} "
        f"({report['machine']['logical_cores']} cores; OpenVINO bf16 available: {report['bf16_here']}).",
        "",
        "Every path draws the same 537 images at the model's defaults (341 in-distribution prompts, the 49 held-out "
        "combinations x 4; the same seeds, so the same initial latents) and the judge scores them. PSNR: each image "
        "against ONNX Runtime fp32's (uint8; identical images counted apart). Gate: within "
        f"{GATE_POINTS:g} point of fp32 on `all` (all four attributes right).",
        "",
        "| path | backend | precision | images | " + " | ".join(cols) + " | Δ all vs fp32 (points) | gate | "
        "identical to fp32 | PSNR median / min (dB) |",
        "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: | --- | ---: | ---: |",
    ]
    for row in report["rows"]:
        r = row["all_images"]
        delta = (r["all"] - fp32) * 100
        p = row.get("psnr_vs_fp32_db")
        psnr = "–" if p is None else (f"{p['median']} / {p['min']}" if p["median"] is not None else "all identical")
        same = "–" if p is None else f"{p['identical_images']}/{r['images']}"
        gate = "met" if delta >= -GATE_POINTS - 1e-9 else "MISSED"
        lines.append(f"| {row['path']} | {row['backend']} | {row['precision']} | {r['images']} | "
                     + " | ".join(f"{100 * r[c]:.1f}%" for c in cols)
                     + f" | {delta:+.1f} | {gate} | {same} | {psnr} |")
    lines += ["", "Per split (in-distribution / held-out, `all`): " + "; ".join(
        f"{row['path']} {100 * row['in_distribution']['all']:.1f}% / {100 * row['held_out']['all']:.1f}%" for row in report["rows"]
    ) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    import shlex
    import sys

    from latentrt.bench.harness import machine_info
    from latentrt import Pipeline
    from latentrt.runtime.backends.openvino import supports_bf16

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--int8", type=Path, default=None, help="the shapes folder quantized by `latentrt quantize`")
    p.add_argument("--out", type=Path, default=RESULTS / "precision", help="writes OUT.md and OUT.json")
    args = p.parse_args()
    bf16 = supports_bf16()
    paths = [("ONNX Runtime fp32 (reference)", SHIPPED, "cpu", "fp32"), ("OpenVINO fp32", SHIPPED, "openvino", "fp32")]
    if bf16:
        paths.append(("OpenVINO bf16", SHIPPED, "openvino", "bf16"))
    if args.int8:
        paths.append(("ONNX Runtime int8", args.int8, "cpu", "fp32"))
        paths.append(("OpenVINO int8", args.int8, "openvino", "bf16" if bf16 else "fp32"))
    splits = prompt_splits()
    rows, reference = [], None
    for label, folder, provider, precision in paths:
        pipe = Pipeline.from_folder(folder, provider=provider, precision=precision, use_cache=False)
        row, drawn = measure_path(label, pipe, splits, reference)
        reference = reference or drawn
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "command": "python -m training.shapes.precision " + shlex.join(sys.argv[1:]),
        "machine": machine_info(),
        "bf16_here": bf16,
        "gate_points": GATE_POINTS,
        "rows": rows,
    }
    write_report(args.out, report, markdown(report))


def write_report(out: Path, report: dict, text: str) -> None:
    """OUT.json (the report) and OUT.md (its table), and the table on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
