"""Train the shapes Stable Diffusion model: one command, seeded, checkpointed, resumable.

    nice -n 19 python -m training.shapes.train --run-dir <run-dir>

runs (or resumes) every phase in order and ends with a diffusers StableDiffusionPipeline folder in
``RUN_DIR/pipeline``. Run the same command again after an interruption: it continues from the last
checkpoint (written every few minutes, atomically). Phases:

1. ``vae``: AutoencoderKL (f=4) on renders, L1 + MSE with the pixels around the shape weighted up
   (sharp corners are what the judge needs), a tiny KL term;
2. ``latents``: encode a fixed bank of renders of the training combinations once (the VAE is frozen
   from here), and set the VAE's ``scaling_factor`` to 1/std of the latents;
3. ``unet``: UNet2DConditionModel + CLIPTextModel jointly, v-prediction on the SD 1.x schedule,
   image-space loss weight min(SNR, 5) + 1, 10% caption dropout (for classifier-free guidance), EMA, AdamW with
   warmup / constant / cosine decay; every ``eval_every`` steps the EMA model is sampled with diffusers
   and scored with the judge, and a pipeline snapshot is written to ``RUN_DIR/pipeline-latest``;
4. ``final``: ``save_pretrained`` of the EMA pipeline into ``RUN_DIR/pipeline`` and a final evaluation.

Run state (``state.json``), checkpoints, logs (``train.log``, ``metrics.jsonl``), the loss curve
(``loss_curve.png``) and the pipeline folders all live in the run directory, outside the work tree.
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
from dataclasses import dataclass, field

import numpy as np

from . import dataset as D
from .models import SCHEDULE, ModelSizes, build_text_encoder, build_unet, build_vae, n_params
from .tokenizer import MODEL_MAX_LENGTH, make_clip_tokenizer, write_tokenizer_files

log = logging.getLogger("shapes.train")

PHASES = ("vae", "latents", "unet", "final")


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    sizes: ModelSizes = field(default_factory=ModelSizes)
    # phase 1: VAE
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_warmup: int = 200
    vae_kl_weight: float = 1e-6
    vae_shape_weight: float = 10.0  # extra loss weight on pixels within 2 px of the shape
    # phase 2: latent bank
    bank_per_combo: int = 24
    # phase 3: UNet + text encoder
    unet_steps: int = 9000
    unet_batch: int = 32
    unet_lr: float = 4e-4
    unet_warmup: int = 500
    unet_decay_fraction: float = 0.2  # cosine decay to 10% over the last 20% of the steps
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0  # image-space loss weight min(SNR, gamma) + 1 (see phase_unet)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    # bookkeeping
    log_every: int = 25
    eval_every: int = 1000
    eval_prompts: int = 48  # per split (in-distribution, held-out)
    eval_steps: int = 20
    eval_guidance: float = 4.0
    checkpoint_minutes: float = 3.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> "Recipe":
        d = dict(d)
        d.pop("preset", None)
        s = d.pop("sizes")
        s = ModelSizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
        return Recipe(sizes=s, **d)


PRESETS = {
    "default": Recipe(),
    # minutes-long check of every phase and of resume
    "smoke": Recipe(
        sizes=ModelSizes(vae_channels=(16, 32, 32), unet_channels=(32, 64, 64), unet_layers_per_block=1,
                         text_width=64, text_layers=1, norm_groups=16),
        vae_steps=30, vae_batch=8, vae_warmup=5, bank_per_combo=1, unet_steps=40, unet_batch=8,
        unet_warmup=5, log_every=5, eval_every=20, eval_prompts=6, eval_steps=4, checkpoint_minutes=0.3,
    ),
}


# ----------------------------------------------------------------------------------------- helpers

def atomic_torch_save(obj, path: str) -> None:
    import torch

    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def lr_factor(step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """Warmup, constant, then cosine decay to 10% over the last ``decay_fraction`` of the steps."""
    if step < warmup:
        return (step + 1) / warmup
    start = int(total * (1 - decay_fraction))
    if step < start:
        return 1.0
    p = min(1.0, (step - start) / max(1, total - start))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


def to_tensor_images(imgs: np.ndarray):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    import torch

    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def shape_weight_map(imgs: np.ndarray, attrs: list[D.Attributes], extra: float) -> np.ndarray:
    """(B, 1, H, W): 1 + extra on pixels within 2 px of the shape, 1 elsewhere."""
    bg = np.array([D.BACKGROUNDS[a.background] for a in attrs], np.int16)[:, None, None, :]
    fg = (np.abs(imgs.astype(np.int16) - bg).sum(-1) > 0).astype(np.float32)  # (B, H, W)
    p = np.pad(fg, ((0, 0), (2, 2), (2, 2)))
    h, w = fg.shape[1:]
    dil = np.zeros_like(fg)
    for dy in range(5):
        for dx in range(5):
            dil = np.maximum(dil, p[:, dy : dy + h, dx : dx + w])
    return (1.0 + extra * dil)[:, None]


class Plot:
    """metrics.jsonl -> loss_curve.png."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def __call__(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(l) for l in open(os.path.join(self.run_dir, "metrics.jsonl"))]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, phase, key in ((axes[0], "vae", "loss"), (axes[1], "unet", "loss")):
            r = [x for x in rows if x.get("phase") == phase and key in x]
            if r:
                s = np.array([x["step"] for x in r])
                v = np.array([x[key] for x in r])
                ax.plot(s, v, lw=0.6, alpha=0.5)
                k = max(1, len(v) // 50)
                if len(v) > k:
                    ax.plot(s[k - 1 :], np.convolve(v, np.ones(k) / k, "valid"), lw=1.5)
                ax.set_yscale("log")
            ax.set_title(f"{phase} training loss")
            ax.set_xlabel("step")
        ev = [x for x in rows if x.get("phase") == "eval"]
        for split, ls in (("in", "-"), ("held", "--")):
            for attr in ("color", "shape", "position", "background"):
                k = f"{split}_{attr}"
                pts = [(x["step"], x[k]) for x in ev if k in x]
                if pts:
                    axes[2].plot(*zip(*pts), ls, marker=".", label=k)
        axes[2].set_ylim(0, 1.02)
        axes[2].set_title("judge accuracy (EMA model)")
        axes[2].set_xlabel("UNet step")
        if ev:
            axes[2].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        tmp = os.path.join(self.run_dir, "loss_curve.tmp.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, os.path.join(self.run_dir, "loss_curve.png"))


# ------------------------------------------------------------------------------------------ runner

class Run:
    def __init__(self, run_dir: str, recipe: Recipe, threads: int):
        import torch

        self.dir = run_dir
        self.r = recipe
        torch.set_num_threads(threads)
        self.state_path = os.path.join(run_dir, "state.json")
        self.state = json.load(open(self.state_path)) if os.path.exists(self.state_path) else {"phase": "vae"}
        self.metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self.plot = Plot(run_dir)
        self.tok = make_clip_tokenizer(os.path.join(run_dir, "tokenizer-src"))
        self._last_ckpt = time.time()

    # -- bookkeeping
    def metric(self, **kv) -> None:
        kv["time"] = round(time.time(), 1)
        self.metrics.write(json.dumps(kv) + "\n")
        self.metrics.flush()

    def set_phase(self, phase: str) -> None:
        self.state = {"phase": phase}
        atomic_json(self.state, self.state_path)
        log.info("phase -> %s", phase)

    def due(self) -> bool:
        return time.time() - self._last_ckpt > 60 * self.r.checkpoint_minutes

    def gen(self, phase: str, step: int):
        import torch

        return torch.Generator().manual_seed((self.r.seed * 10 + PHASES.index(phase)) * 100_000_000 + step)

    def rng(self, phase: str, step: int) -> np.random.Generator:
        return np.random.default_rng([self.r.seed, PHASES.index(phase), step])

    # -- models
    def new_vae(self):
        import torch

        torch.manual_seed(self.r.seed)
        return build_vae(self.r.sizes)

    def new_text_unet(self):
        import torch

        torch.manual_seed(self.r.seed + 1)
        te = build_text_encoder(self.r.sizes, len(self.tok), MODEL_MAX_LENGTH, self.tok.bos_token_id, self.tok.eos_token_id)
        unet = build_unet(self.r.sizes)
        return te, unet

    def load_vae(self):
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(os.path.join(self.dir, "vae")).eval()

    # -- phase 1
    def phase_vae(self) -> None:
        import torch

        r = self.r
        vae = self.new_vae()
        opt = torch.optim.AdamW(vae.parameters(), lr=r.vae_lr, weight_decay=0.0)
        ck = os.path.join(self.dir, "ckpt_vae.pt")
        step = 0
        if os.path.exists(ck):
            c = torch.load(ck, weights_only=False)
            vae.load_state_dict(c["model"])
            opt.load_state_dict(c["opt"])
            step = c["step"]
            log.info("resumed VAE at step %d", step)
        log.info("VAE: %d parameters", n_params(vae))
        vae.train()
        t0, n0 = time.time(), step

        def save():
            atomic_torch_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ck)
            self.plot()
            self._last_ckpt = time.time()

        while step < r.vae_steps:
            for gp in opt.param_groups:
                gp["lr"] = r.vae_lr * lr_factor(step, r.vae_steps, r.vae_warmup, 0.5)
            imgs, attrs = D.sample_batch(self.rng("vae", step), r.vae_batch)
            x = to_tensor_images(imgs)
            wmap = torch.from_numpy(shape_weight_map(imgs, attrs, r.vae_shape_weight))
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=self.gen("vae", step))
            rec = vae.decode(z).sample
            err = rec - x
            l1 = (err.abs() * wmap).mean() / wmap.mean()
            l2 = (err.pow(2) * wmap).mean() / wmap.mean()
            kl = post.kl().mean() / x[0].numel()
            loss = l1 + l2 + r.vae_kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), r.grad_clip)
            opt.step()
            step += 1
            if step % r.log_every == 0 or step == r.vae_steps:
                ips = (step - n0) / (time.time() - t0)
                log.info("vae %d/%d loss %.4f l1 %.4f l2 %.5f kl %.1f  %.2f it/s", step, r.vae_steps,
                         loss.item(), l1.item(), l2.item(), kl.item(), ips)
                self.metric(phase="vae", step=step, loss=loss.item(), l1=l1.item(), l2=l2.item(),
                            kl=kl.item(), it_s=ips, lr=opt.param_groups[0]["lr"])
            if self.due():
                save()
        save()
        vae.eval()
        scores = self.judge_reconstructions(vae)
        log.info("VAE reconstructions judged: %s", scores)
        self.metric(phase="vae_eval", step=step, **scores)
        tmp = os.path.join(self.dir, "vae.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        vae.save_pretrained(tmp)
        shutil.rmtree(os.path.join(self.dir, "vae"), ignore_errors=True)
        os.replace(tmp, os.path.join(self.dir, "vae"))
        self.set_phase("latents")

    def judge_reconstructions(self, vae, n: int = 486) -> dict:
        import torch

        from .judge import score

        imgs, attrs = D.sample_batch(np.random.default_rng(12345), n, D.ALL_COMBINATIONS)
        out = []
        with torch.no_grad():
            for i in range(0, n, 64):
                x = to_tensor_images(imgs[i : i + 64])
                rec = vae.decode(vae.encode(x).latent_dist.mean).sample
                out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
        rec = np.concatenate(out)
        mae = float(np.abs(rec.astype(np.float32) - imgs).mean())
        return {**{f"rec_{k}": v for k, v in score(list(rec), attrs).items()}, "rec_mae": mae}

    # -- phase 2
    def phase_latents(self) -> None:
        import torch

        r = self.r
        vae = self.load_vae()
        combos = D.TRAIN_COMBINATIONS
        rng = self.rng("latents", 0)
        means, stds, labels = [], [], []
        with torch.no_grad():
            for ci in range(0, len(combos), 8):
                attrs = [a for a in combos[ci : ci + 8] for _ in range(r.bank_per_combo)]
                imgs = np.stack([D.render(a, rng) for a in attrs])
                post = vae.encode(to_tensor_images(imgs)).latent_dist
                means.append(post.mean)
                stds.append(post.std)
                labels += [combos.index(a) for a in attrs]
        mean = torch.cat(means)
        std = torch.cat(stds)
        scale = float(1.0 / mean.std())
        log.info("latent bank: %s, mean %.3f std %.3f -> scaling_factor %.4f, posterior std %.4f",
                 tuple(mean.shape), mean.mean().item(), mean.std().item(), scale, std.mean().item())
        self.metric(phase="latents", step=0, latent_mean=mean.mean().item(), latent_std=mean.std().item(),
                    scaling_factor=scale, posterior_std=std.mean().item())
        atomic_torch_save({"mean": mean, "std": std, "combo": torch.tensor(labels), "scale": scale},
                          os.path.join(self.dir, "latents.pt"))
        vae.register_to_config(scaling_factor=scale)
        tmp = os.path.join(self.dir, "vae.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        vae.save_pretrained(tmp)
        shutil.rmtree(os.path.join(self.dir, "vae"), ignore_errors=True)
        os.replace(tmp, os.path.join(self.dir, "vae"))
        self.set_phase("unet")

    # -- phase 3
    def caption_ids(self):
        import torch

        caps = [a.caption for a in D.TRAIN_COMBINATIONS] + [""]
        enc = self.tok(caps, padding="max_length", max_length=self.tok.model_max_length, truncation=True,
                       return_tensors="pt")
        return enc.input_ids  # (n_combos + 1, L); the last row is the empty prompt

    def phase_unet(self) -> None:
        import torch
        import torch.nn.functional as F
        from diffusers import DDPMScheduler

        r = self.r
        bank = torch.load(os.path.join(self.dir, "latents.pt"))
        lat_mean, lat_std, lat_combo, scale = bank["mean"], bank["std"], bank["combo"], bank["scale"]
        ids_all = self.caption_ids()
        empty = ids_all.shape[0] - 1
        te, unet = self.new_text_unet()
        log.info("text encoder %d parameters, UNet %d parameters", n_params(te), n_params(unet))
        params = list(unet.parameters()) + list(te.parameters())
        ema = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=r.unet_lr, weight_decay=r.weight_decay)
        sched = DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k not in ("steps_offset", "timestep_spacing")})
        ac = sched.alphas_cumprod  # (T,)
        snr = ac / (1 - ac)
        # v-prediction: |v error|^2 = (SNR + 1) |x0 error|^2. We weigh the image-space error by
        # min(SNR, gamma) + 1: at least 1 at high noise (the layout), capped at low noise (min-SNR).
        if sched.config.prediction_type != "v_prediction":
            raise ValueError("the shapes recipe trains a v-prediction model")
        loss_w = (torch.clamp(snr, max=r.min_snr_gamma) + 1) / (snr + 1)
        ck = os.path.join(self.dir, "ckpt_unet.pt")
        step = 0
        if os.path.exists(ck):
            c = torch.load(ck, weights_only=False)
            unet.load_state_dict(c["unet"])
            te.load_state_dict(c["te"])
            opt.load_state_dict(c["opt"])
            for e, v in zip(ema, c["ema"]):
                e.copy_(v)
            step = c["step"]
            log.info("resumed UNet at step %d", step)

        def save():
            atomic_torch_save({"unet": unet.state_dict(), "te": te.state_dict(), "opt": opt.state_dict(),
                               "ema": ema, "step": step}, ck)
            self.plot()
            self._last_ckpt = time.time()

        unet.train()
        te.train()
        t0, n0 = time.time(), step
        while step < r.unet_steps:
            for gp in opt.param_groups:
                gp["lr"] = r.unet_lr * lr_factor(step, r.unet_steps, r.unet_warmup, r.unet_decay_fraction)
            g = self.gen("unet", step)
            b = r.unet_batch
            idx = torch.randint(0, lat_mean.shape[0], (b,), generator=g)
            z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scale
            cap = lat_combo[idx].clone()
            cap[torch.rand(b, generator=g) < r.caption_dropout] = empty
            t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=g)
            noise = torch.randn(z0.shape, generator=g)
            zt = sched.add_noise(z0, noise, t)
            target = sched.get_velocity(z0, noise, t)
            cond = te(ids_all[cap])[0]  # (B, L, D)
            pred = unet(zt, t, cond).sample
            per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))  # (B,)
            loss = (per * loss_w[t]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
            opt.step()
            step += 1
            d = min(r.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - d)
            if step % r.log_every == 0:
                ips = (step - n0) / (time.time() - t0)
                log.info("unet %d/%d loss %.4f (unweighted %.4f) gn %.2f lr %.2e  %.2f it/s", step, r.unet_steps,
                         loss.item(), per.mean().item(), gn.item(), opt.param_groups[0]["lr"], ips)
                self.metric(phase="unet", step=step, loss=loss.item(), mse=per.mean().item(), grad_norm=gn.item(),
                            it_s=ips, lr=opt.param_groups[0]["lr"])
            if step % r.eval_every == 0 or step == r.unet_steps:
                save()
                self.eval_snapshot(te, unet, ema, params, step, "pipeline-latest")
            elif self.due():
                save()
        save()
        self.set_phase("final")

    def build_pipeline(self, te, unet):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.load_vae(), text_encoder=te, tokenizer=self.tok, unet=unet,
            scheduler=DPMSolverMultistepScheduler(**SCHEDULE), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )

    def eval_snapshot(self, te, unet, ema, params, step: int, name: str) -> dict:
        """Swap in the EMA weights, score with the judge, save the pipeline folder, swap back."""
        import torch

        from .evaluate import evaluate

        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
        unet.eval()
        te.eval()
        try:
            pipe = self.build_pipeline(te, unet)
            t = time.time()
            res = evaluate(pipe, n_prompts=self.r.eval_prompts, steps=self.r.eval_steps,
                           guidance=self.r.eval_guidance, seed=0)
            log.info("eval @%d (%.0fs): in-distribution %s | held-out %s", step, time.time() - t,
                     fmt(res["in"]), fmt(res["held"]))
            self.metric(phase="eval", step=step, **{f"in_{k}": v for k, v in res["in"].items()},
                        **{f"held_{k}": v for k, v in res["held"].items()})
            save_pipeline(pipe, os.path.join(self.dir, name))
            self.plot()
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
            unet.train()
            te.train()
        return res

    # -- phase 4
    def phase_final(self) -> None:
        import torch

        te, unet = self.new_text_unet()
        c = torch.load(os.path.join(self.dir, "ckpt_unet.pt"), weights_only=False)
        params = list(unet.parameters()) + list(te.parameters())
        with torch.no_grad():
            for p, e in zip(params, c["ema"]):
                p.copy_(e)
        unet.eval()
        te.eval()
        pipe = self.build_pipeline(te, unet)
        save_pipeline(pipe, os.path.join(self.dir, "pipeline"))
        from .evaluate import evaluate

        res = evaluate(pipe, n_prompts=None, steps=self.r.eval_steps, guidance=self.r.eval_guidance, seed=1)
        log.info("final eval: in-distribution %s | held-out %s", fmt(res["in"]), fmt(res["held"]))
        self.metric(phase="final_eval", step=c["step"], **{f"in_{k}": v for k, v in res["in"].items()},
                    **{f"held_{k}": v for k, v in res["held"].items()})
        self.plot()
        self.set_phase("done")

    def run(self) -> None:
        while self.state["phase"] != "done":
            getattr(self, f"phase_{self.state['phase']}")()
        log.info("done: pipeline in %s", os.path.join(self.dir, "pipeline"))


def fmt(d: dict) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in d.items())


def save_pipeline(pipe, dest: str) -> None:
    """save_pretrained into a temp folder, add vocab.json/merges.txt, then rename into place."""
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    write_tokenizer_files(os.path.join(tmp, "tokenizer"))
    old = dest + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(dest):
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="run directory (state, checkpoints, logs, pipeline); keep it outside the git work tree")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="recipe for a new run (a resumed run keeps its recipe.json)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    # On a shared CPU, OpenMP threads that spin while waiting for a descheduled sibling burned ~5x the
    # CPU time per step here (measured at nice 19 beside other jobs); sleeping waits cost nothing.
    # Must be set before torch is imported (this module imports it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    os.makedirs(args.run_dir, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(args.run_dir, "train.log"))],
    )
    rp = os.path.join(args.run_dir, "recipe.json")
    if os.path.exists(rp):
        recipe = Recipe.from_json(json.load(open(rp)))
        log.info("resuming run in %s", args.run_dir)
    else:
        recipe = PRESETS[args.preset]
        atomic_json({"preset": args.preset, **recipe.to_json()}, rp)
        log.info("new run (%s preset) in %s", args.preset, args.run_dir)
    log.info("recipe %s", json.dumps(recipe.to_json()))
    Run(args.run_dir, recipe, args.threads).run()


if __name__ == "__main__":
    main()
