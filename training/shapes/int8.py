"""int8 (ONNX Runtime static QDQ) against fp32 on the shipped shapes model: the adherence protocol of ship.py.

    python -m training.shapes.int8 [--variants default,all,...] [--json results/int8.json --markdown results/int8.md]

For each variant of `latentrt quantize` (which nodes stay in float, which ops are quantized, calibration
settings), the shipped folder is quantized into a temporary folder, and both folders generate the 537
images of ship.py's measurement at the model's defaults with the same seeds (so the same initial latents):
the "measure" split (341 prompts, seed 2) and the held-out combinations (49 x 4, seed 3). Reported: the
judge's adherence for each, the PSNR of every int8 image against its fp32 twin, and the time per image.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .evaluate import generate_onnx, prompt_splits
from .judge import ATTRIBUTES, score
from .ship import GRID_PROMPTS, HELD_OUT_SEEDS, RESULTS, SEEDS, SHIPPED

log = logging.getLogger("int8")

# name -> keyword arguments of latentrt.export.quantize.quantize_folder
VARIANTS: dict[str, dict] = {
    "default": {},  # conv_in, conv_out and the time embedding in float; Conv + MatMul + Gemm quantized
    "all": {"float_parts": ()},
    "edges-float": {"float_parts": ("conv_in", "conv_out")},  # the time embedding quantized
    "time-float": {"float_parts": ("time_embedding",)},  # conv_in and conv_out quantized
    "default+text": {"float_parts": ("conv_in", "conv_out", "time_embedding", "text_projections")},
    "conv-only": {"op_types": ("Conv",)},
    "matmul-float-out": {"extra_options": {"OpTypesToExcludeOutputQuantization": ["MatMul"]}},
    "samples-8": {"samples": 8},
    "samples-128": {"samples": 128, "steps": 20},
    "shapes-prompts": {"prompts": "tune"},
    "guidance-2": {"guidance_scale": 2.0},
}


def images(pipe, splits) -> dict[str, np.ndarray]:
    held = [a for _ in range(HELD_OUT_SEEDS) for a in splits["held"]]
    return {
        "in_distribution": generate_onnx(pipe, splits["measure"], SEEDS["measure"]),
        "held_out": generate_onnx(pipe, held, SEEDS["held"]),
    }


def adherence(imgs: dict[str, np.ndarray], splits) -> dict:
    held = [a for _ in range(HELD_OUT_SEEDS) for a in splits["held"]]
    attrs = {"in_distribution": splits["measure"], "held_out": held}
    out = {k: {"prompts": len(attrs[k]), **score(list(v), attrs[k])} for k, v in imgs.items()}
    right = sum(out[k]["all"] * out[k]["prompts"] for k in out)
    out["all_537"] = right / sum(out[k]["prompts"] for k in attrs)
    return out


def psnr_each(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)))


def speed(pipes: dict, runs: int = 20, batch: int = 16) -> dict:
    """Per pipeline, interleaved (so that a busy machine slows them alike): the median seconds of one image at
    the defaults (a single prompt), and of one UNet call at the model's size, batch ``batch``."""
    first = next(iter(pipes.values()))
    rng = np.random.default_rng(0)
    side = first.folder.unet.sample_size
    feeds = {
        "sample": rng.standard_normal((batch, first.folder.unet.in_channels, side, side), dtype=np.float32),
        "timestep": np.full((batch,), 500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal(
            (batch, first.tokenizer.max_length, first.folder.unet.cross_attention_dim), dtype=np.float32),
    }
    for pipe in pipes.values():  # warm-up
        for seed in range(3):
            pipe(GRID_PROMPTS[0], seed=seed)
            pipe.unet(**feeds)
    image = {name: [] for name in pipes}
    unet = {name: [] for name in pipes}
    for seed in range(runs):
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            pipe(GRID_PROMPTS[seed % len(GRID_PROMPTS)], seed=seed)
            image[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pipe.unet(**feeds)
            unet[name].append(time.perf_counter() - t0)
    return {name: {"seconds_per_image": statistics.median(image[name]),
                   f"unet_call_batch{batch}_s": statistics.median(unet[name])} for name in pipes}


def main() -> None:
    from latentrt.export.quantize import quantize_folder
    from latentrt.runtime.pipeline import Pipeline

    p = argparse.ArgumentParser(description="int8 vs fp32 adherence on the shipped shapes model")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=RESULTS / "int8.json")
    p.add_argument("--markdown", type=Path, default=RESULTS / "int8.md")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("latentrt").setLevel(logging.WARNING)
    splits = prompt_splits()
    fp32 = Pipeline.from_folder(SHIPPED, provider="cpu", threads=args.threads)
    reference = images(fp32, splits)
    report = {
        "command": "python -m training.shapes.int8 --variants " + args.variants,
        "fp32": {"adherence": adherence(reference, splits)},
        "variants": {},
    }
    log.info("fp32: %s", json.dumps(report["fp32"]))
    for name in args.variants.split(","):
        options = dict(VARIANTS[name])
        if options.get("prompts") == "tune":
            options["prompts"] = [a.caption for a in splits["tune"]]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "shapes-int8"
            t0 = time.perf_counter()
            done = quantize_folder(SHIPPED, out, report=lambda m: None, **options)
            seconds = time.perf_counter() - t0
            pipe = Pipeline.from_folder(out, provider="cpu", threads=args.threads)
            imgs = images(pipe, splits)
            psnr = np.concatenate([psnr_each(imgs[k], reference[k]) for k in imgs])
            manifest = json.loads((out / "manifest.json").read_text())
            row = {
                "options": {k: (v if k != "prompts" else f"{len(v)} prompts of the tune split") for k, v in options.items()},
                "quantize_seconds": round(seconds, 1),
                "adherence": adherence(imgs, splits),
                "psnr_db": {"median": float(np.median(psnr)), "min": float(psnr.min()),
                            "p05": float(np.percentile(psnr, 5)), "identical": int(np.isinf(psnr).sum())},
                "one_call_check": done.check,
                "float_nodes": {k: len(v) for k, v in done.float_nodes.items()},
                "quantized_nodes": done.quantized_nodes,
                "unet_megabytes": round(done.sizes["int8"] / 1e6, 2),
                "speed": speed({"fp32": fp32, "int8": pipe}),
                "calibration": manifest["quantization"]["calibration"],
            }
            del pipe
        report["variants"][name] = row
        log.info("%s: %s", name, json.dumps({k: row[k] for k in ("adherence", "psnr_db", "speed")}))
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    args.markdown.write_text(markdown(report))


def markdown(report: dict) -> str:
    cols = (*ATTRIBUTES, "all")
    f = report["fp32"]
    lines = [
        "# int8 (ONNX Runtime static QDQ) on the shipped shapes model",
        "",
        f"Written by `{report['command']}`. The 537 images of the adherence measurement "
        "([adherence.md](adherence.md): 341 in-distribution prompts, 49 held-out combinations x 4) at the model's "
        "defaults, fp32 and int8 from the same seeds (the same initial latents); PSNR of each int8 image against its "
        "fp32 twin (uint8). Times: fp32 and int8 interleaved in the same run (median of 20), 2 threads.",
        "",
        "| folder | all four right (537) | in-distribution all | held-out all | PSNR median | PSNR min | "
        "s / image, fp32 -> int8 | UNet call (batch 16), fp32 -> int8 | UNet MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| fp32 | {100 * f['adherence']['all_537']:.1f}% | {100 * f['adherence']['in_distribution']['all']:.1f}% | "
        f"{100 * f['adherence']['held_out']['all']:.1f}% | – | – | – | – | 11.5 |",
    ]
    for name, r in report["variants"].items():
        a, sp = r["adherence"], r["speed"]
        lines.append(
            f"| int8 `{name}` | {100 * a['all_537']:.1f}% | {100 * a['in_distribution']['all']:.1f}% | "
            f"{100 * a['held_out']['all']:.1f}% | {r['psnr_db']['median']:.1f} dB | {r['psnr_db']['min']:.1f} dB | "
            f"{sp['fp32']['seconds_per_image']:.3f} -> {sp['int8']['seconds_per_image']:.3f} | "
            f"{1000 * sp['fp32']['unet_call_batch16_s']:.1f} -> {1000 * sp['int8']['unet_call_batch16_s']:.1f} ms | "
            f"{r['unet_megabytes']:.1f} |"
        )
    lines += ["", "Variants (keyword arguments of `latentrt.export.quantize.quantize_folder`):", ""]
    for name, r in report["variants"].items():
        lines.append(f"- `{name}`: {r['options'] or 'the defaults'}; float nodes {r['float_nodes']}, "
                     f"quantized {r['quantized_nodes']}; one-call check {r['one_call_check']}")
    lines += ["", "Per attribute:", "", "| folder | split | " + " | ".join(cols) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in cols) + " |"]
    for name, a in [("fp32", f["adherence"])] + [(n, r["adherence"]) for n, r in report["variants"].items()]:
        for split in ("in_distribution", "held_out"):
            lines.append(f"| {name} | {split} | " + " | ".join(f"{a[split][c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
