"""Judge the shapes ControlNet: does the image take its shape and cell from the control, its colours from the prompt?

    python -m training.shapes.controlnet_eval [--controlnet training/shapes/controlnet] [--latentrt <onnx-folder>]

Cases (``cases``): a fresh render of a combination gives the control image (``controlnet.edge_map``: its Canny
edges) and the prompt (``controlnet.control_caption``: colour and background only). Two splits:
in-distribution (training combinations, new renders: control images the training never saw) and held-out (the
49 ``dataset.HELD_OUT`` combinations, which neither the base model nor the ControlNet ever trained on).

The judge (``judge.py``) reads each image: shape and cell are right when they are the control's, colour and
background when they are the prompt's. Every case is generated twice with the same seed: with the ControlNet
and without it (the same prompt, the plain pipeline). Settings: the shipped model's defaults (DPM-Solver++
2M, 4 steps, guidance 1). First with diffusers' ``StableDiffusionControlNetPipeline`` on the reference weights,
then (``--latentrt``) through latentrt's runtime on an ONNX folder exported with ``--controlnet``.
Writes ``results/controlnet.json`` and ``results/controlnet.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import dataset as D
from .controlnet import DEFAULT_OUT, REFERENCE, control_caption, control_case
from .evaluate import prompt_splits, save_grid
from .judge import judge

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 31
HELD_REPEATS = 4  # images per held-out combination (each a new render of the control)
IN_CASES = 196  # in-distribution cases: the "measure" split of the shipped model's training combinations
STEPS, GUIDANCE = 4, 1.0


def cases(split: str, renders: bool = False) -> tuple[list[D.Attributes], list[np.ndarray]]:
    """(attributes, control images) of a split, deterministic; ``renders``: the renders the controls are made from."""
    if split == "held":
        attrs = list(D.HELD_OUT_COMBINATIONS) * HELD_REPEATS
    else:
        attrs = prompt_splits()["measure"][:IN_CASES]
    rng = np.random.default_rng([SEED, split == "held"])
    pairs = [control_case(a, rng) for a in attrs]
    return attrs, [p[0] if renders else p[1] for p in pairs]


def judged(images, attrs: list[D.Attributes]) -> dict[str, float]:
    """Fraction right per attribute: shape, position (both from the control), colour, background (the prompt)."""
    hits = {"shape": 0, "position": 0, "color": 0, "background": 0, "all": 0}
    for im, a in zip(images, attrs):
        m = judge(im).matches(a)
        for k in ("shape", "position", "color", "background"):
            hits[k] += m[k]
        hits["all"] += all(m.values())
    return {k: v / max(len(attrs), 1) for k, v in hits.items()}


def generate_diffusers(pipe, attrs: list[D.Attributes], controls: list[np.ndarray] | None, seed: int,
                       batch: int = 32, steps: int = STEPS, guidance: float = GUIDANCE) -> np.ndarray:
    """(N, 64, 64, 3) uint8 from a diffusers pipeline; with ``controls``, a ControlNet pipeline's control images."""
    import torch
    from PIL import Image

    out = []
    for i in range(0, len(attrs), batch):
        chunk = attrs[i : i + batch]
        gens = [torch.Generator().manual_seed(seed * 100_000 + i + j) for j in range(len(chunk))]
        kw = {}
        if controls is not None:
            kw["image"] = [Image.fromarray(c) for c in controls[i : i + batch]]
        with torch.no_grad():
            imgs = pipe([control_caption(a) for a in chunk], num_inference_steps=steps, guidance_scale=guidance,
                        generator=gens, output_type="np", **kw).images
        out.append(np.clip(np.rint(imgs * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def evaluate_diffusers(controlnet: Path, threads: int = 2, grid: Path | None = None) -> dict:
    import torch
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
    )

    torch.set_num_threads(threads)
    f32 = {"torch_dtype": torch.float32}
    cn = ControlNetModel.from_pretrained(controlnet, **f32)
    base = StableDiffusionPipeline.from_pretrained(REFERENCE, safety_checker=None, requires_safety_checker=False, **f32)
    pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=cn)
    for p in (base, pipe):
        p.set_progress_bar_config(disable=True)
    res: dict = {}
    for split in ("in", "held"):
        attrs, controls = cases(split)
        t = time.time()
        with_cn = generate_diffusers(pipe, attrs, controls, seed=SEED)
        without = generate_diffusers(base, attrs, None, seed=SEED)
        res[split] = {"n": len(attrs), "controlnet": judged(with_cn, attrs), "no controlnet": judged(without, attrs)}
        print(f"diffusers {split} ({time.time() - t:.0f} s): {res[split]}", flush=True)
        if grid and split == "held":
            save_grid(np.concatenate([np.stack(controls[:16]), with_cn[:16], without[:16]]), str(grid), cols=16, scale=2)
    return res


PROVIDERS = {"cpu": "ONNX Runtime", "openvino": "OpenVINO"}
SPLITS = {"in": "in-distribution", "held": "held-out"}
TRAINING = RESULTS / "controlnet_training.json"


def _rows(name: str, by_split: dict) -> list[str]:
    lines = []
    for split, r in by_split.items():
        for key in ("controlnet", "no controlnet"):
            s = r[key]
            lines.append(f"| {name} | {SPLITS[split]} ({r['n']}) | {'yes' if key == 'controlnet' else 'no'} | "
                         f"{s['shape']:.3f} | {s['position']:.3f} | {s['color']:.3f} | {s['background']:.3f} | {s['all']:.3f} |")
    return lines


def write_markdown(res: dict, path: Path) -> None:
    st = res["settings"]
    lines = [
        "# A trained ControlNet for the shapes model: edges say what and where, the prompt says the colours",
        "",
        ("Written by `python -m training.shapes.controlnet_eval --latentrt <scratch>/shapes-controlnet-onnx --export "
         "--grid training/shapes/results/controlnet.png` "
        "(the ControlNet: `nice -n 19 python -m training.shapes.controlnet --run-dir <run-dir>`)."),
        "",
        ("Each case is a fresh render of a combination: its Canny edges (thresholds 100/200) are the control image, and "
        "the prompt gives only the colour and the background (`a red shape on a white background`). The judge reads "
        "the image: **shape** and **position** (the grid cell) right when they are the control's, **colour** and "
        "**background** when they are the prompt's; **all**: the four at once. Every case is generated with the "
        "ControlNet and without it (the same prompt and seed). In-distribution: training combinations, control images "
        "the training never saw; held-out: the 49 combinations that neither the base model nor the ControlNet ever "
        f"trained on, {HELD_REPEATS} renders each. Settings: the shipped model's defaults ({st['scheduler']}, "
        f"{st['steps']} steps, guidance {st['guidance']:g}), conditioning scale 1, fp32."),
        "",
        "| pipeline | split (cases) | ControlNet | shape | position | colour | background | all |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    if "diffusers" in res:
        lines += _rows("diffusers `StableDiffusionControlNetPipeline`", res["diffusers"])
    for provider, by_split in res.get("latentrt", {}).items():
        lines += _rows(f"latentrt, {PROVIDERS.get(provider, provider)}", by_split)
    lines += ["", ("[controlnet.png](controlnet.png): the first 16 held-out cases (diffusers): control images, the images with "
              "the ControlNet, the same prompts and seeds without it (`--grid`).")]
    lines += ["", ("Without the ControlNet the prompt names no shape and no cell, so shape and position are the base "
              "model's guess (chance: 1/3 and 1/9). diffusers draws its noise from torch generators, latentrt from its own "
              "seeds, so their images differ (hence the rows without the ControlNet). diffusers is given the edge maps; "
              "latentrt is given the render "
              "itself with `control_preprocess=\"canny\"` (its preprocessor is OpenCV's Canny, the same edges pixel "
              "for pixel), through a folder exported by `latentrt export training/shapes/reference <out> --compact-weights --controlnet "
              "edges=training/shapes/controlnet`.")]
    if TRAINING.exists():
        t = json.loads(TRAINING.read_text())
        r = t["recipe"]
        lines += ["", (f"Training (`results/{TRAINING.name}`): `ControlNetModel.from_unet` of the reference UNet "
                  f"({t['parameters']:,} parameters, {t['bytes'] / 1e6:.1f} MB as fp16 safetensors), UNet, VAE and text "
                  f"encoder frozen; {r['steps']:,} steps at batch {r['batch']}, AdamW lr {r['lr']:g}, seed {r['seed']}, "
                  f"{t['train_minutes']:.0f} min on 2 shared CPU cores (nice 19). Judged during training (48 "
                  "in-distribution combinations, new control images, diffusers at the settings above):"), "",
                  "| step | shape | position | colour | background |", "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {e['step']:,} | {e['shape']:.2f} | {e['position']:.2f} | {e['color']:.2f} | {e['background']:.2f} |"
                  for e in t["evals"]]
    path.write_text("\n".join(lines) + "\n")


def export_folder(controlnet: Path, out: Path) -> None:
    """The reference model exported as the shipped one is (compact weights, its defaults), with the ControlNet
    as ``controlnet/edges``: ``latentrt export <reference> <out> --compact-weights --controlnet edges=<controlnet>``."""
    from latentrt.export.exporter import export_pipeline

    export_pipeline(REFERENCE, out, force=True, compact_weights=True, controlnets=[("edges", controlnet)],
                    defaults={"steps": STEPS, "guidance_scale": GUIDANCE, "scheduler": "dpm++2m"}, report=print)


def generate_latentrt(pipe, attrs: list[D.Attributes], renders: list[np.ndarray] | None, seed: int) -> np.ndarray:
    """(N, 64, 64, 3) uint8 from a latentrt Pipeline, one call per case; with ``renders``, each render's canny
    edges (``control_preprocess="canny"``, the user's path) condition the image."""
    out = []
    for i, a in enumerate(attrs):
        kw = {} if renders is None else {"control_image": renders[i], "control_preprocess": "canny"}
        result = pipe(control_caption(a), seed=seed * 100_000 + i, steps=STEPS, guidance_scale=GUIDANCE,
                      scheduler="dpm++2m", **kw)
        out.append(result.arrays[0])
    return np.stack(out)


def evaluate_latentrt(folder: Path, providers: tuple[str, ...]) -> dict:
    from latentrt import Pipeline

    res: dict = {}
    for provider in providers:
        res[provider] = {}
        with Pipeline.from_folder(folder, provider=provider, precision="fp32", use_cache=False) as pipe:
            for split in ("in", "held"):
                attrs, renders = cases(split, renders=True)
                t = time.time()
                with_cn = generate_latentrt(pipe, attrs, renders, seed=SEED)
                without = generate_latentrt(pipe, attrs, None, seed=SEED)
                res[provider][split] = {"n": len(attrs), "controlnet": judged(with_cn, attrs),
                                        "no controlnet": judged(without, attrs)}
                print(f"latentrt {provider} {split} ({time.time() - t:.0f} s): {res[provider][split]}", flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--controlnet", type=Path, default=DEFAULT_OUT, help="diffusers ControlNetModel folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "controlnet.json")
    p.add_argument("--grid", type=Path, default=None, help="PNG: held-out controls, with and without the ControlNet")
    p.add_argument("--latentrt", type=Path, default=None,
                   help="ONNX folder with the ControlNet as controlnet/edges (exported here first with --export)")
    p.add_argument("--export", action="store_true", help="export the reference model + --controlnet into --latentrt first")
    p.add_argument("--providers", default="cpu,openvino", help="latentrt providers, comma-separated")
    p.add_argument("--skip-diffusers", action="store_true", help="keep the diffusers figures already in --out")
    args = p.parse_args()
    res = json.loads(args.out.read_text()) if args.skip_diffusers else {}
    res["settings"] = {"scheduler": "DPM-Solver++ 2M", "steps": STEPS, "guidance": GUIDANCE, "seed": SEED}
    if not args.skip_diffusers:
        res["diffusers"] = evaluate_diffusers(args.controlnet, args.threads, args.grid)
    if args.latentrt:
        if args.export:
            export_folder(args.controlnet, args.latentrt)
        res["latentrt"] = evaluate_latentrt(args.latentrt, tuple(args.providers.split(",")))
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
