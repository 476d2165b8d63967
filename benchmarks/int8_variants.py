"""Which UNet nodes to keep in float, on a big model: one calibration, several choices, one-call error vs fp32.

    python -m benchmarks.int8_variants <bench-cache>/sd15-onnx <out>/variants [--samples 32] \
        [--variants default,all,matmul-float-out,default+text,conv-only]

The calibration inputs are gathered once (`latentrt quantize`'s defaults: built-in prompts, 10 steps, guidance 7.5,
256x256 at most) and saved in WORK; the activation ranges are computed once and reused through ORT's calibration
cache (Conv-only calibrates its own). Each variant's UNet is compared with the fp32 UNet on three inputs that are
not calibration samples: Gaussian latents with t = 999, 500, 50 (at t = 999 scaled by 14.6, larger than any input
the UNet gets from a scheduler: a stress input, kept as it was measured).
Results accumulate in WORK/results.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "default": {},
    "all": {"float_parts": ()},
    "edges-float": {"float_parts": ("conv_in", "conv_out")},
    "time-float": {"float_parts": ("time_embedding",)},
    "default+text": {"float_parts": ("conv_in", "conv_out", "time_embedding", "text_projections")},
    "conv-only": {"op_types": ("Conv",)},
    "matmul-float-out": {"extra_options": {"OpTypesToExcludeOutputQuantization": ["MatMul"]}},
}


def main() -> None:
    from latentrt.export.quantize import (
        DEFAULT_GUIDANCE, DEFAULT_PROMPTS, DEFAULT_SEED, DEFAULT_STEPS, CalibrationSettings, calibration_size,
        gather_samples, quantize_unet,
    )
    from latentrt.runtime.folder import ModelFolder
    from latentrt.runtime.schedulers import create_scheduler
    from latentrt.runtime.session import OnnxModel

    p = argparse.ArgumentParser(description="float-node choices of the int8 UNet: one-call error vs fp32")
    p.add_argument("model", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = ModelFolder.open(args.model)
    unet = args.model / "unet" / "model.onnx"
    side = calibration_size(folder)
    settings = CalibrationSettings(
        prompts=DEFAULT_PROMPTS, prompts_source="built-in", samples=args.samples, height=side, width=side,
        steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE,
        scheduler=create_scheduler(folder.defaults.scheduler, folder.scheduler_config).name, seed=DEFAULT_SEED,
    )
    feeds_path = args.work / f"feeds{args.samples}.npz"
    if feeds_path.exists():
        z = np.load(feeds_path)
        feeds = [{k: z[f"{k}{i}"] for k in ("sample", "timestep", "encoder_hidden_states")} for i in range(args.samples)]
    else:
        feeds = gather_samples(folder, settings, print)
        np.savez(feeds_path, **{f"{k}{i}": v for i, f in enumerate(feeds) for k, v in f.items()})

    f = folder.vae.scale_factor
    latent = np.random.default_rng(123).standard_normal((1, folder.unet.in_channels, side // f, side // f), dtype=np.float32)
    tests = [{"sample": np.concatenate([latent, latent]) * np.float32(14.6 if t == 999 else 1.0),
              "timestep": np.full((2,), t, np.float32),
              "encoder_hidden_states": feeds[0]["encoder_hidden_states"]} for t in (999.0, 500.0, 50.0)]
    fp32 = OnnxModel("unet", unet, ["CPUExecutionProvider"], 2)
    references = [next(iter(fp32(**f).values())).astype(np.float64) for f in tests]
    del fp32

    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.variants.split(","):
        options = VARIANTS[name]
        out = args.work / name
        shutil.rmtree(out, ignore_errors=True)
        cache = args.work / f"ranges{args.samples}.json" if "op_types" not in options else None
        t0 = time.perf_counter()
        done = quantize_unet(unet, out, feeds, scratch=args.work / "scratch", calibration_cache=cache, **options)
        seconds = time.perf_counter() - t0
        int8 = OnnxModel("unet", out / "model.onnx", ["CPUExecutionProvider"], 2)
        errors = {}
        for f, a in zip(tests, references):
            b = next(iter(int8(**f).values())).astype(np.float64)
            errors[f"t={f['timestep'][0]:g}"] = {
                "max_rel_error": float(np.abs(b - a).max() / np.abs(a).max()),
                "rms_rel_error": float(np.sqrt(np.mean((b - a) ** 2)) / np.sqrt(np.mean(a**2))),
            }
        del int8
        results[f"{name}/{args.samples}"] = {
            "seconds": round(seconds, 1), "errors": errors, "quantized_nodes": done["quantized_nodes"],
            "float_nodes": {k: len(v) for k, v in done["float_nodes"].items()},
            "peak_rss_mb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        print(name, json.dumps(results[f"{name}/{args.samples}"]), flush=True)
        results_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
