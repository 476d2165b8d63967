"""A trained ControlNet for the shipped shapes model: the shape's edge map says what and where, the prompt the colours.

    nice -n 19 python -m training.shapes.controlnet --run-dir <run-dir> [--out training/shapes/controlnet]

One command, seeded, resumable (run it again after an interruption: it continues from the last checkpoint,
written atomically every few minutes). The run directory (keep it outside the git work tree) holds
``recipe.json``, ``bank.pt`` (the latents and edge maps, built once), ``ckpt.pt``, ``train.log``,
``metrics.jsonl`` and, at the end, ``controlnet/``: a diffusers ``ControlNetModel`` folder (fp16
safetensors), which is also copied to ``--out``.

Recipe: ``ControlNetModel.from_unet`` of the reference UNet (``training/shapes/reference``: the weights the
shipped ONNX model was exported from), so its encoder starts as the UNet's and its zero convolutions at zero; the
conditioning embedding downsamples 4x (64x64 control -> the 16x16 latents; diffusers' default is 8x, for SD's
f=8 VAE). UNet, VAE and text encoder frozen. The base model's own loss (v-prediction, image-space weight
min(SNR, 5) + 1); timesteps drawn with a bias to high noise for the first 570 steps (the cubic rule of
T2I-Adapter: the layout is decided there), then uniformly (corners are drawn at low noise); AdamW with warmup and a
cosine decay; 1,300 steps at batch 32 (about 40 minutes on 2 shared CPU cores). The README says how it went.

Data: renders of the base model's training combinations only (``dataset.TRAIN_COMBINATIONS``; the 49
``dataset.HELD_OUT`` ones are never seen), each paired with

- its control image: ``edge_map(render)``, the Canny edges of the render (latentrt's ``canny`` preprocessor, which
  is OpenCV's ``cv2.Canny``, thresholds 100 and 200: what a user gets from such an image), white on black, 3 channels;
- its prompt: ``control_caption``, ``a {colour} shape on a {background} background``: every word is already one
  token of the model's vocabulary; the shape and the position are not in it, so they must come from the control.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from . import dataset as D

log = logging.getLogger("shapes.controlnet")

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "reference"
DEFAULT_OUT = HERE / "controlnet"
CANNY_LOW, CANNY_HIGH = 100, 200


@dataclasses.dataclass(frozen=True)
class Recipe:
    seed: int = 0
    steps: int = 1300
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 50
    decay_fraction: float = 0.3  # cosine decay to 10% over the last 30% of the steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    min_snr_gamma: float = 5.0
    high_noise_bias: float = 3.0  # t = T * (1 - u ** bias), u uniform: 1 is uniform, 3 is T2I-Adapter's cubic rule
    high_noise_until: int = 570  # the bias for the first steps (the layout), then uniform t (the corners: low noise)
    conditioning_channels: tuple[int, ...] = (16, 32, 64)  # two stride-2 convolutions: 64x64 -> 16x16
    renders_per_combo: int = 16
    log_every: int = 25
    eval_every: int = 250
    eval_prompts: int = 48  # in-distribution combinations (fresh renders) judged during training
    checkpoint_minutes: float = 3.0

    @staticmethod
    def from_json(d: dict) -> Recipe:
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return Recipe(**d)


# ------------------------------------------------------------------------------------------ data

def control_caption(a: D.Attributes) -> str:
    """The prompt of a ControlNet case: colour and background only."""
    return prompt_text(a.color, a.background)


def prompt_text(color: str, background: str) -> str:
    return f"a {color} shape on a {background} background"


def control_prompts() -> list[tuple[str, str]]:
    """The 18 (colour, background) prompts, in a fixed order."""
    return [(c, b) for c in D.COLORS for b in D.BACKGROUNDS]


def edge_map(image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> NDArray[np.uint8]:
    """The control image of a render: latentrt's canny preprocessor (OpenCV's ``cv2.Canny``), white edges on black,
    (H, W, 3) uint8: exactly what ``control_preprocess="canny"`` makes of the render at run time."""
    from latentrt.runtime.control_preprocess import canny

    return np.asarray(canny(image, low, high))


def control_case(a: D.Attributes, rng: np.random.Generator) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """A fresh render of ``a`` and its control image: (64, 64, 3) uint8 each."""
    img = D.render(a, rng)
    return img, edge_map(img)


# ------------------------------------------------------------------------------------------ training

def atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_factor(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return (step + 1) / r.warmup
    start = int(r.steps * (1 - r.decay_fraction))
    if step < start:
        return 1.0
    p = min(1.0, (step - start) / max(1, r.steps - start))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


class Run:
    def __init__(self, run_dir: Path, r: Recipe, threads: int):
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        torch.set_num_threads(threads)
        self.dir, self.r = run_dir, r
        self.segment = round(time.time())  # this process's part of the run (a resume starts a new one)
        f32 = {"torch_dtype": torch.float32}
        self.tok = CLIPTokenizer.from_pretrained(REFERENCE / "tokenizer")
        self.te = CLIPTextModel.from_pretrained(REFERENCE / "text_encoder", **f32).eval().requires_grad_(False)
        self.vae = AutoencoderKL.from_pretrained(REFERENCE / "vae", **f32).eval().requires_grad_(False)
        self.unet = UNet2DConditionModel.from_pretrained(REFERENCE / "unet", **f32).eval().requires_grad_(False)

    def metric(self, **kv) -> None:
        kv["time"] = round(time.time(), 1)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(kv) + "\n")

    def embed(self, captions: list[str]):
        import torch

        ids = self.tok(captions, padding="max_length", max_length=self.tok.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
        with torch.no_grad():
            return self.te(ids)[0]

    def bank(self) -> dict:
        """Latents (posterior mean and std), control images and prompt index of renders of the training combinations."""
        import torch

        path = self.dir / "bank.pt"
        if path.exists():
            return torch.load(path)
        from .train import to_tensor_images

        t = time.time()
        rng = np.random.default_rng([self.r.seed, 7])
        combos = D.TRAIN_COMBINATIONS
        prompts = control_prompts()
        means, stds, controls, labels = [], [], [], []
        with torch.no_grad():
            for i in range(0, len(combos), 8):
                attrs = [a for a in combos[i : i + 8] for _ in range(self.r.renders_per_combo)]
                cases = [control_case(a, rng) for a in attrs]
                post = self.vae.encode(to_tensor_images(np.stack([c[0] for c in cases]))).latent_dist
                means.append(post.mean)
                stds.append(post.std)
                controls.append(torch.from_numpy(np.stack([c[1][..., 0] > 0 for c in cases])))
                labels += [prompts.index((a.color, a.background)) for a in attrs]
        bank = {"mean": torch.cat(means), "std": torch.cat(stds), "control": torch.cat(controls),
                "prompt": torch.tensor(labels)}
        atomic_save(bank, path)
        log.info("bank: %d renders of %d combinations, %.0f s", len(labels), len(combos), time.time() - t)
        return bank

    def new_controlnet(self):
        import torch
        from diffusers import ControlNetModel

        torch.manual_seed(self.r.seed)
        return ControlNetModel.from_unet(self.unet, conditioning_embedding_out_channels=self.r.conditioning_channels)

    def train(self) -> None:
        import torch
        import torch.nn.functional as F
        from diffusers import DDPMScheduler

        from .models import SCHEDULE

        r = self.r
        bank = self.bank()
        scale = self.vae.config.scaling_factor
        cond_all = self.embed([prompt_text(c, b) for c, b in control_prompts()])
        cn = self.new_controlnet()
        params = [p for p in cn.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
        sched = DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k not in ("steps_offset", "timestep_spacing")})
        snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
        loss_w = (torch.clamp(snr, max=r.min_snr_gamma) + 1) / (snr + 1)  # as train.py: v loss -> image-space weight
        T = sched.config.num_train_timesteps
        ck = self.dir / "ckpt.pt"
        step = 0
        if ck.exists():
            c = torch.load(ck, weights_only=False)
            cn.load_state_dict(c["controlnet"])
            opt.load_state_dict(c["opt"])
            step = c["step"]
            log.info("resumed at step %d", step)
        log.info("ControlNet: %d parameters; %d training renders", sum(p.numel() for p in params), len(bank["prompt"]))

        def save() -> None:
            atomic_save({"controlnet": cn.state_dict(), "opt": opt.state_dict(), "step": step}, ck)

        last_ckpt, t0, n0, losses = time.time(), time.time(), step, []
        cn.train()
        while step < r.steps:
            for gp in opt.param_groups:
                gp["lr"] = r.lr * lr_factor(step, r)
            g = torch.Generator().manual_seed(r.seed * 1_000_000 + step)
            idx = torch.randint(0, len(bank["prompt"]), (r.batch,), generator=g)
            z0 = (bank["mean"][idx] + bank["std"][idx] * torch.randn(bank["mean"][idx].shape, generator=g)) * scale
            control = bank["control"][idx].float()[:, None].expand(-1, 3, -1, -1)  # (B, 3, 64, 64) in {0, 1}
            u = torch.rand(r.batch, generator=g)
            bias = r.high_noise_bias if step < r.high_noise_until else 1.0
            t = ((1 - u ** bias) * T).long().clamp(0, T - 1)
            noise = torch.randn(z0.shape, generator=g)
            zt = sched.add_noise(z0, noise, t)
            cond = cond_all[bank["prompt"][idx]]
            down, mid = cn(zt, t, cond, controlnet_cond=control, return_dict=False)
            pred = self.unet(zt, t, cond, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            per = F.mse_loss(pred, sched.get_velocity(z0, noise, t), reduction="none").mean(dim=(1, 2, 3))
            loss = (per * loss_w[t]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
            opt.step()
            step += 1
            losses.append(loss.item())
            if step % r.log_every == 0:
                ips = (step - n0) / (time.time() - t0)
                log.info("step %d/%d loss %.4f gn %.2f lr %.2e  %.2f it/s", step, r.steps, np.mean(losses[-r.log_every:]),
                         gn.item(), opt.param_groups[0]["lr"], ips)
                self.metric(phase="train", step=step, loss=float(np.mean(losses[-r.log_every:])), grad_norm=gn.item(),
                            it_s=ips, lr=opt.param_groups[0]["lr"], segment=self.segment)
            if step % r.eval_every == 0 or step == r.steps:
                save()
                last_ckpt = time.time()
                self.evaluate(cn, step)
                cn.train()
            elif time.time() - last_ckpt > 60 * r.checkpoint_minutes:
                save()
                last_ckpt = time.time()
        save()
        self.finish(cn)

    def pipeline(self, cn):
        from diffusers import (
            DPMSolverMultistepScheduler,
            StableDiffusionControlNetPipeline,
        )

        pipe = StableDiffusionControlNetPipeline(
            vae=self.vae, text_encoder=self.te, tokenizer=self.tok, unet=self.unet, controlnet=cn,
            scheduler=DPMSolverMultistepScheduler.from_pretrained(REFERENCE / "scheduler"), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def evaluate(self, cn, step: int) -> None:
        """Judge fresh renders' controls of training combinations (never the held-out ones) at the shipped defaults."""
        import hashlib

        from .controlnet_eval import generate_diffusers, judged

        cn.eval()
        t = time.time()
        ranked = sorted(D.TRAIN_COMBINATIONS, key=lambda a: hashlib.sha256(("cn-train" + a.caption).encode()).hexdigest())
        attrs = ranked[: self.r.eval_prompts]
        rng = np.random.default_rng([self.r.seed, 8])
        controls = [control_case(a, rng)[1] for a in attrs]
        imgs = generate_diffusers(self.pipeline(cn), attrs, controls, seed=0)
        res = judged(imgs, attrs)
        log.info("eval @%d (%.0f s): %s", step, time.time() - t, " ".join(f"{k} {v:.2f}" for k, v in res.items()))
        self.metric(phase="eval", step=step, **res)

    def finish(self, cn) -> None:
        import torch

        final = self.dir / "controlnet"
        tmp = self.dir / "controlnet.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        n = sum(p.numel() for p in cn.parameters())
        cn.to(dtype=torch.float16).save_pretrained(tmp, safe_serialization=True)
        info = training_summary(self.dir, self.r, n, sum(f.stat().st_size for f in tmp.iterdir()))
        (self.dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        log.info("done: %s", final)


def training_summary(run_dir: Path, r: Recipe, parameters: int, size: int) -> dict:
    """The run's figures from metrics.jsonl: wall-clock of the training steps (each process's part timed apart; steps
    that a resume ran again count once, the last time), losses, the judge during training."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = sorted({x["step"]: x for x in rows if x["phase"] == "train"}.values(), key=lambda x: x["step"])
    seconds = 0.0
    for prev, row in zip([None, *train], train):
        if prev is not None and prev.get("segment") == row.get("segment"):
            seconds += row["time"] - prev["time"]
        else:  # the first row of a part: its steps at its mean speed
            seconds += r.log_every / row["it_s"]
    evals = {x["step"]: {k: x[k] for k in ("step", "shape", "position", "color", "background", "all")}
             for x in rows if x["phase"] == "eval"}
    return {"recipe": dataclasses.asdict(r), "parameters": parameters, "bytes": size,
            "train_minutes": round(seconds / 60, 1), "loss_first": train[0]["loss"] if train else None,
            "loss_last": train[-1]["loss"] if train else None, "evals": [evals[k] for k in sorted(evals)]}


def copy_folder(src: Path, dest: Path) -> None:
    """Replace ``dest`` with a copy of ``src``, atomically (copy beside it, then rename)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True, help="state, checkpoints, logs; keep it outside the git work tree")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the finished ControlNet folder is copied")
    p.add_argument("--summary", type=Path, default=HERE / "results" / "controlnet_training.json",
                   help="where the run's figures (training.json) are copied")
    p.add_argument("--steps", type=int, default=None, help="training steps of a new run (a resumed run keeps its recipe.json)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py: spinning waits cost ~5x on a shared CPU
    args.run_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(args.run_dir / "train.log")])
    rp = args.run_dir / "recipe.json"
    if rp.exists():
        recipe = Recipe.from_json(json.loads(rp.read_text()))
        log.info("resuming run in %s", args.run_dir)
    else:
        recipe = Recipe() if args.steps is None else Recipe(steps=args.steps)
        rp.write_text(json.dumps(dataclasses.asdict(recipe), indent=2) + "\n")
    log.info("recipe %s", json.dumps(dataclasses.asdict(recipe)))
    run = Run(args.run_dir, recipe, args.threads)
    if not (args.run_dir / "controlnet").exists():
        run.train()
    copy_folder(args.run_dir / "controlnet", args.out)
    shutil.copyfile(args.run_dir / "training.json", args.summary)
    log.info("copied to %s and %s", args.out, args.summary)


if __name__ == "__main__":
    main()
