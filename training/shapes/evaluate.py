"""Sample a shapes pipeline with diffusers and score it with the judge, per attribute.

    python -m training.shapes.evaluate <run-dir>/pipeline --steps 20 --guidance 4 \
        --out results.json --grid grid.png

In-distribution prompts are a fixed spread of the training combinations; held-out prompts are the
combinations never seen in training (``dataset.HELD_OUT``).
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

from . import dataset as D
from .judge import ATTRIBUTES, score


def eval_prompts(n: int | None) -> dict[str, list[D.Attributes]]:
    """Fixed prompt sets: ``n`` per split (all held-out ones and 64 in-distribution when None)."""
    ranked = sorted(D.TRAIN_COMBINATIONS, key=lambda a: hashlib.sha256(("eval" + a.caption).encode()).hexdigest())
    held = list(D.HELD_OUT_COMBINATIONS)
    n_in = 64 if n is None else n
    return {"in": ranked[:n_in], "held": held if n is None else held[:n]}


def prompt_splits() -> dict[str, list[D.Attributes]]:
    """Disjoint prompt sets for the shipped model: the regression test's, the defaults sweep's, the
    measurement's (every other training combination) and the held-out combinations."""
    ranked = sorted(D.TRAIN_COMBINATIONS, key=lambda a: hashlib.sha256(("split" + a.caption).encode()).hexdigest())
    return {"test": ranked[:32], "tune": ranked[32:96], "measure": ranked[96:], "held": list(D.HELD_OUT_COMBINATIONS)}


def generate_onnx(pipe, attrs: list[D.Attributes], seed: int, batch: int = 16, **settings) -> np.ndarray:
    """(N, 64, 64, 3) uint8 from a latentrt Pipeline (``settings``: steps, guidance_scale, scheduler)."""
    out = []
    for i in range(0, len(attrs), batch):
        chunk = [a.caption for a in attrs[i : i + batch]]
        result = pipe(chunk, seed=seed * 100_000 + i, **settings)
        out.extend(np.asarray(im) for im in result.images)
    return np.stack(out)


def generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 32) -> np.ndarray:
    """(N, 64, 64, 3) uint8 from a diffusers StableDiffusionPipeline, one seed per prompt index."""
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        gens = [torch.Generator().manual_seed(seed * 100_000 + i + j) for j in range(len(chunk))]
        with torch.no_grad():
            imgs = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                        output_type="np").images  # (B, H, W, 3) float in [0, 1]
        out.append(np.clip(np.rint(imgs * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def evaluate(pipe, n_prompts: int | None = 48, steps: int = 20, guidance: float = 4.0, seed: int = 0,
             return_images: bool = False) -> dict:
    pipe.set_progress_bar_config(disable=True)
    res: dict = {}
    for split, attrs in eval_prompts(n_prompts).items():
        imgs = generate(pipe, [a.caption for a in attrs], steps, guidance, seed)
        res[split] = score(list(imgs), attrs)
        if return_images:
            res[f"{split}_images"] = (imgs, attrs)
    return res


def save_grid(imgs: np.ndarray, path: str, cols: int = 8, scale: int = 1, gap: int = 2) -> None:
    """(N, H, W, 3) uint8 images as a PNG grid, each enlarged ``scale`` times (nearest), ``gap`` px apart."""
    from PIL import Image

    imgs = np.asarray(imgs).repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = imgs.shape[1:3]
    rows = int(np.ceil(len(imgs) / cols))
    grid = np.full((rows * (h + gap), cols * (w + gap), 3), 200, np.uint8)
    for i, im in enumerate(imgs):
        y, x = divmod(i, cols)
        top, left = y * (h + gap) + gap // 2, x * (w + gap) + gap // 2
        grid[top : top + h, left : left + w] = im
    Image.fromarray(grid).save(path)


def main() -> None:
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    p = argparse.ArgumentParser(description="Sample a shapes pipeline with diffusers and score it with the judge")
    p.add_argument("pipeline", help="diffusers StableDiffusionPipeline folder")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--n", type=int, default=None, help="prompts per split (default: 64 in-distribution, all 49 held-out)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the scores as JSON here")
    p.add_argument("--grid", help="write a PNG grid of the held-out images here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    res = evaluate(pipe, args.n, args.steps, args.guidance, args.seed, return_images=bool(args.grid))
    table = {k: res[k] for k in ("in", "held")}
    cols = (*ATTRIBUTES, "all", "vertical", "horizontal")
    print("split  " + " ".join(f"{k:>10}" for k in cols))
    for split, s in table.items():
        print(f"{split:6} " + " ".join(f"{s[k]:10.3f}" for k in cols))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"steps": args.steps, "guidance": args.guidance, "seed": args.seed, **table}, f, indent=2)
    if args.grid:
        save_grid(res["held_images"][0], args.grid)


if __name__ == "__main__":
    main()
