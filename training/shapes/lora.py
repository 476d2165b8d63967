"""A real LoRA for the shipped shapes model: "red-to-blue", trained and judged.

    nice -n 19 python -m training.shapes.lora train --out training/shapes/loras/red-to-blue.safetensors
    nice -n 19 python -m training.shapes.lora evaluate training/shapes/loras/red-to-blue.safetensors

The LoRA is trained on the dataset with one change: every shape the caption calls red is drawn blue (the
captions are unchanged). With it, a prompt that asks for a red shape gives a blue one, and the other
colours, the shapes, positions and backgrounds stay as they were.

Recipe (``train``): the reference checkpoint (``training/shapes/reference``, the weights the shipped ONNX model
was exported from) in fp32, text encoder and VAE frozen; a PEFT LoRA (rank 8, alpha 8) on the UNet's
attention projections (self- and cross-attention q/k/v/out, proj_in/proj_out); the base model's own loss
(v-prediction, image-space weight min(SNR, 5) + 1); batches of 32 latents, half of them red prompts (drawn
blue) and half other colours (drawn as usual, so the rest is not unlearned); AdamW; seeded, CPU only, a few
minutes. Saved as diffusers saves a LoRA (``save_lora_weights``: ``unet.*.lora_A/B.weight`` + the adapter
config with its alpha), which is what latentrt loads.

Prompts: the combinations are split by a hash of the caption. The LoRA trains on two thirds of the base
model's training combinations; ``evaluate`` uses the other third plus the combinations the base model never
saw (``dataset.HELD_OUT``), so every evaluation prompt is new to the LoRA. ``evaluate`` runs the latentrt
runtime (OpenVINO and ONNX Runtime, fp32, the shipped defaults) with no LoRA and with the LoRA at each scale
and scores the images with the judge: on red prompts, the fraction judged red and judged blue; on the other
prompts, every attribute. It writes ``results/lora.json`` and ``results/lora.md`` (``train`` also writes its
figures next to the LoRA, ``red-to-blue.json``, which the results quote).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from . import dataset as D
from .judge import judge

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "reference"
DEFAULT_OUT = HERE / "loras" / "red-to-blue.safetensors"
RESULTS = HERE / "results"
SOURCE, TARGET = "red", "blue"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"]
SCALES = (0.0, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Recipe:
    seed: int = 0
    rank: int = 8
    alpha: int = 8
    steps: int = 400
    batch: int = 32
    source_fraction: float = 0.5  # of each batch: red prompts (drawn blue); the rest other colours, unchanged
    lr: float = 1e-3
    warmup: int = 20
    min_snr_gamma: float = 5.0
    renders_per_combo: int = 8  # latent bank


def lora_split() -> dict[str, list[D.Attributes]]:
    """'train': two thirds of the base model's training combinations; 'eval': the other third + dataset.HELD_OUT."""
    ranked = sorted(D.TRAIN_COMBINATIONS, key=lambda a: hashlib.sha256(("lora" + a.caption).encode()).hexdigest())
    k = len(ranked) // 3
    return {"train": sorted(ranked[k:]), "eval": sorted(ranked[:k]) + list(D.HELD_OUT_COMBINATIONS)}


def drawn_as(a: D.Attributes) -> D.Attributes:
    """What the LoRA's training image shows for caption ``a``: red shapes drawn blue."""
    return dataclasses.replace(a, color=TARGET) if a.color == SOURCE else a


# ------------------------------------------------------------------------------------------------- train

def train(out: Path, r: Recipe, threads: int) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTokenizer

    from .models import SCHEDULE
    from .train import to_tensor_images

    torch.set_num_threads(threads)
    torch.manual_seed(r.seed)
    t_start = time.time()
    f32 = dict(torch_dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(REFERENCE / "tokenizer")
    te = CLIPTextModel.from_pretrained(REFERENCE / "text_encoder", **f32).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(REFERENCE / "vae", **f32).eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(REFERENCE / "unet", **f32).requires_grad_(False)

    combos = lora_split()["train"]
    groups = [[i for i, a in enumerate(combos) if a.color == SOURCE], [i for i, a in enumerate(combos) if a.color != SOURCE]]
    rng = np.random.default_rng([r.seed, 1])
    with torch.no_grad():  # frozen parts: the captions' embeddings and a bank of latents, computed once
        ids = tok([a.caption for a in combos], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        cond = te(ids)[0]  # (n_combos, L, D)
        means, stds = [], []
        for i in range(0, len(combos), 16):
            imgs = np.stack([D.render(drawn_as(a), rng) for a in combos[i : i + 16] for _ in range(r.renders_per_combo)])
            post = vae.encode(to_tensor_images(imgs)).latent_dist
            means.append(post.mean)
            stds.append(post.std)
        lat_mean, lat_std = torch.cat(means), torch.cat(stds)  # row j: combo j // renders_per_combo
    scale = vae.config.scaling_factor

    config = LoraConfig(r=r.rank, lora_alpha=r.alpha, target_modules=TARGET_MODULES, init_lora_weights=True)
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=0.0)
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k not in ("steps_offset", "timestep_spacing")})
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    loss_w = (torch.clamp(snr, max=r.min_snr_gamma) + 1) / (snr + 1)  # as train.py: v loss -> image-space weight
    print(f"LoRA: {sum(p.numel() for p in params):,} parameters on {len(TARGET_MODULES)} module kinds; "
          f"{len(combos)} training combinations ({len(groups[0])} {SOURCE}); setup {time.time() - t_start:.0f}s", flush=True)

    unet.train()
    n_src = round(r.batch * r.source_fraction)
    t0, log = time.time(), []
    for step in range(r.steps):
        for gp in opt.param_groups:
            gp["lr"] = r.lr * min(1.0, (step + 1) / r.warmup)
        g = torch.Generator().manual_seed(r.seed * 1_000_000 + step)
        pick = [groups[0][j] for j in torch.randint(0, len(groups[0]), (n_src,), generator=g)]
        pick += [groups[1][j] for j in torch.randint(0, len(groups[1]), (r.batch - n_src,), generator=g)]
        combo = torch.tensor(pick)
        row = combo * r.renders_per_combo + torch.randint(0, r.renders_per_combo, (r.batch,), generator=g)
        z0 = (lat_mean[row] + lat_std[row] * torch.randn(lat_mean[row].shape, generator=g)) * scale
        t = torch.randint(0, sched.config.num_train_timesteps, (r.batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        pred = unet(sched.add_noise(z0, noise, t), t, cond[combo]).sample
        per = F.mse_loss(pred, sched.get_velocity(z0, noise, t), reduction="none").mean(dim=(1, 2, 3))
        loss = (per * loss_w[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append(loss.item())
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}/{r.steps} loss {np.mean(log[-25:]):.4f} "
                  f"({(step + 1) / (time.time() - t0):.2f} it/s)", flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out.parent, unet_lora_layers=get_peft_model_state_dict(unet), unet_lora_adapter_metadata=config.to_dict(),
        weight_name=out.name, safe_serialization=True)
    info = {"recipe": dataclasses.asdict(r), "target_modules": TARGET_MODULES, "lora_parameters": sum(p.numel() for p in params),
            "train_seconds": round(time.time() - t0, 1), "loss_first_25": float(np.mean(log[:25])),
            "loss_last_25": float(np.mean(log[-25:])), "bytes": out.stat().st_size}
    print(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------------------------------------- evaluate

def judged(images: np.ndarray, attrs: list[D.Attributes]) -> dict:
    """Per prompt set: fraction judged red, judged blue, and each attribute right (colour: the prompt's)."""
    verdicts = [judge(im) for im in images]
    n = len(attrs)
    out = {"n": n, "judged_red": sum(v.color == SOURCE for v in verdicts) / n,
           "judged_blue": sum(v.color == TARGET for v in verdicts) / n}
    rights = [v.matches(a) for v, a in zip(verdicts, attrs)]
    for k in ("color", "shape", "position", "background"):
        out[k] = sum(m[k] for m in rights) / n
    out["all"] = sum(all(m.values()) for m in rights) / n
    out["all_but_color"] = sum(m["shape"] and m["position"] and m["background"] for m in rights) / n
    colors = [str(v.color) for v in verdicts]
    out["judged_colors"] = {c: colors.count(c) / n for c in sorted(set(colors))}
    return out


PROVIDERS = {"cpu": "ONNX Runtime", "openvino": "OpenVINO"}


def evaluate(lora: Path, providers: tuple[str, ...] = ("openvino", "cpu"), seeds: tuple[int, ...] = (0, 1, 2),
             scales: tuple[float, ...] = SCALES) -> dict:
    """Judge latentrt's images (fp32, the shipped defaults) with no LoRA and with the LoRA at each scale."""
    from latentrt import Pipeline

    from .evaluate import generate_onnx

    prompts = lora_split()["eval"]
    sets = {"red prompts": [a for a in prompts if a.color == SOURCE],
            "other prompts": [a for a in prompts if a.color != SOURCE]}
    res: dict = {"lora": lora.name, "seeds": list(seeds), "settings": "fp32, the shipped defaults: dpm++2m, "
                 "4 steps, guidance 1", "prompts": {k: len(v) for k, v in sets.items()}, "providers": {}}
    for provider in providers:
        res["providers"][provider] = {}
        for scale in (None, *scales):
            t = time.time()
            with Pipeline.default(provider=provider, precision="fp32", use_cache=False,
                                  loras=None if scale is None else [(str(lora), scale)]) as pipe:
                row = {}
                for name, attrs in sets.items():
                    imgs = np.concatenate([generate_onnx(pipe, attrs, seed=s) for s in seeds])
                    row[name] = judged(imgs, attrs * len(seeds))
            key = "no LoRA" if scale is None else f"{scale:g}"
            res["providers"][provider][key] = row
            print(f"{provider} {key:>8} ({time.time() - t:.0f}s): " + " | ".join(
                f"{n}: red {r['judged_red']:.2f} blue {r['judged_blue']:.2f} all-but-colour {r['all_but_color']:.2f} "
                f"colour {r['color']:.2f}" for n, r in row.items()), flush=True)
    return res


def write_results(res: dict, train_info: dict | None) -> None:
    if train_info:
        res["training"] = train_info
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# A trained LoRA for the shapes model: red-to-blue",
        "",
        "Written by `nice -n 19 python -m training.shapes.lora evaluate training/shapes/loras/red-to-blue.safetensors` "
        "(the LoRA itself: `nice -n 19 python -m training.shapes.lora train --out training/shapes/loras/red-to-blue.safetensors`).",
        "",
        f"The LoRA (`{res['lora']}`) was trained on renders where every shape the caption calls red is drawn blue, captions "
        f"unchanged. Judged images from the latentrt runtime ({res['settings']}; not diffusers), "
        "the LoRA merged at load at each scale, "
        f"{len(res['seeds'])} seeds per prompt, on prompts the LoRA never trained on: {res['prompts']['red prompts']} red "
        f"prompts and {res['prompts']['other prompts']} of the other five colours (a third of the base model's training "
        "combinations and all 49 it never saw; `lora_split()`).",
    ]
    for provider, scales in res["providers"].items():
        lines += [
            "",
            f"**{PROVIDERS.get(provider, provider)}** (`provider=\"{provider}\"`)",
            "",
            "| LoRA scale | red prompts: judged red | judged blue | shape, position, background right | "
            "other prompts: colour right | shape | position | background | all right |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key, row in scales.items():
            r, o = row["red prompts"], row["other prompts"]
            lines.append(f"| {key} | {r['judged_red']:.3f} | {r['judged_blue']:.3f} | {r['all_but_color']:.3f} | "
                         f"{o['color']:.3f} | {o['shape']:.3f} | {o['position']:.3f} | {o['background']:.3f} | {o['all']:.3f} |")
        mid = scales.get("0.5", {}).get("red prompts")
        if mid:
            lines += ["", "Red prompts at scale 0.5, judged colours: " + ", ".join(
                f"{c} {f:.3f}" for c, f in sorted(mid["judged_colors"].items(), key=lambda kv: -kv[1])) + "."]
        if scales[f"{SCALES[-1]:g}"] == scales["no LoRA"]:
            lines += ["", f"At scale {SCALES[-1]:g} every figure equals the no-LoRA one: on this provider the LoRA did not reach "
                      "the images in this run (a runtime bug, not the LoRA: the other provider, and diffusers, apply it)."]
    if train_info:
        t = train_info
        lines += ["", f"Training: rank {t['recipe']['rank']}, alpha {t['recipe']['alpha']} on the UNet's "
                  f"{', '.join(t['target_modules'])} ({t['lora_parameters']:,} parameters, {t['bytes'] / 1024:.0f} KiB), "
                  f"{t['recipe']['steps']} steps at batch {t['recipe']['batch']}, lr {t['recipe']['lr']}, seed "
                  f"{t['recipe']['seed']}, {t['train_seconds']:.0f} s on 2 shared CPU cores; loss "
                  f"{t['loss_first_25']:.4f} (first 25 steps) -> {t['loss_last_25']:.4f} (last 25)."]
    (RESULTS / "lora.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description="Train / evaluate the red-to-blue LoRA of the shapes model")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the LoRA and save it as diffusers does")
    t.add_argument("--out", type=Path, default=DEFAULT_OUT)
    t.add_argument("--steps", type=int, default=Recipe.steps)
    t.add_argument("--seed", type=int, default=Recipe.seed)
    t.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("evaluate", help="judge latentrt's images with the LoRA at scales 0, 0.5, 1; write results/lora.*")
    e.add_argument("lora", type=Path, nargs="?", default=DEFAULT_OUT)
    e.add_argument("--providers", default="openvino,cpu", help="latentrt providers, comma-separated")
    e.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    if args.cmd == "train":
        info = train(args.out, Recipe(seed=args.seed, steps=args.steps), args.threads)
        args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    else:
        res = evaluate(args.lora, providers=tuple(args.providers.split(",")))
        if not args.no_write:
            info_path = args.lora.with_suffix(".json")
            write_results(res, json.loads(info_path.read_text()) if info_path.exists() else None)


if __name__ == "__main__":
    main()
