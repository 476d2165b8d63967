"""Build the few-step workload's folders: SD-Turbo and SDXL-Turbo architectures with random weights, and a random
TAESD / TAESDXL (diffusers' AutoencoderTiny).

- sd-turbo: stabilityai/sd-turbo is SD 2.1-base (512x512): SD 2.1's UNet, text encoder and VAE (built by
  benchmarks/full_size_random.py) with the base model's 64x64 latents, epsilon prediction and sd-turbo's
  scheduler, EulerDiscreteScheduler with trailing spacing (latentrt.export.tiny's TURBO_SCHEDULER).
- sdxl-turbo: stabilityai/sdxl-turbo is SDXL base's architecture at 512x512 (64x64 latents) with
  EulerAncestralDiscreteScheduler, trailing spacing.
- taesd / taesdxl: ``AutoencoderTiny()``'s default config (TAESD's: 4 latent channels, scaling factor 1.0;
  TAESDXL has the same graph, its weights differ), random weights: the speed is the graph's.

Random weights draw noise, but the graphs, shapes and FLOPs are the published models'. Each folder is built
beside its destination and renamed into place when complete.

    python -m benchmarks.turbo_random build sd-turbo <bench-cache>/sd-turbo-random
    python -m benchmarks.turbo_random build sdxl-turbo <bench-cache>/sdxl-turbo-random --dtype float16
    python -m benchmarks.turbo_random build taesd <bench-cache>/taesd-random
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.full_size_random import build as build_full_size
from benchmarks.sd15_random import partial_folder

MODELS = ("sd-turbo", "sdxl-turbo", "taesd", "taesdxl")
# sd-turbo and sdxl-turbo: what full_size_random builds them from, their latents' side and scheduler class
TURBO = {"sd-turbo": ("sd21", 64, "EulerDiscreteScheduler"), "sdxl-turbo": ("sdxl", 64, "EulerAncestralDiscreteScheduler")}


def _patch_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=2) + "\n")


def build_turbo(model: str, out: Path, seed: int = 0, dtype: str = "float32") -> Path:
    """The SD 2.1 / SDXL random folder, with the turbo model's sample size and scheduler."""
    from latentrt.export.tiny import TURBO_SCHEDULER

    base, sample_size, scheduler = TURBO[model]
    tmp = partial_folder(Path(out))
    build_full_size(base, tmp, seed, dtype)
    _patch_json(tmp / "unet" / "config.json", sample_size=sample_size)
    _patch_json(tmp / "vae" / "config.json", sample_size=sample_size * 8)
    config = {"_class_name": scheduler, "_diffusers_version": "0.42.1", **TURBO_SCHEDULER, "prediction_type": "epsilon"}
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")
    _patch_json(tmp / "model_index.json", scheduler=["diffusers", scheduler])
    tmp.rename(out)
    return Path(out)


def build_tiny_vae(out: Path, seed: int = 0) -> Path:
    """AutoencoderTiny() with random weights (TAESD's and TAESDXL's config)."""
    import torch
    from diffusers import AutoencoderTiny

    tmp = partial_folder(Path(out))
    torch.manual_seed(seed)
    AutoencoderTiny().save_pretrained(tmp)
    tmp.rename(out)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.turbo_random", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write a random-weight folder with the published architecture")
    b.add_argument("model", choices=MODELS)
    b.add_argument("out", type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="how the turbo weights are stored")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.model in TURBO:
        out = build_turbo(args.model, args.out, args.seed, args.dtype)
    else:
        out = build_tiny_vae(args.out, args.seed)
    print(out, f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
