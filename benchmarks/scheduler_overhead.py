"""Scheduler overhead: one `scale_model_input` + `step` of every NumPy scheduler against one UNet call.

    python -m benchmarks.scheduler_overhead MODEL_FOLDER [--size 512] [--runs 20] [--out benchmarks/results/scheduler_overhead.md]

Both are timed in the same process on the same latents (batch 1; the UNet call with the CFG batch of 2,
as the pipeline makes it), so the ratio is what a generation pays for the scheduler per UNet call.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from latentrt import Pipeline
from latentrt.runtime.schedulers import available_schedulers, create_scheduler
from latentrt.runtime.schedulers.timesteps import model_timestep


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def scheduler_step_seconds(name: str, config: dict, latents: np.ndarray, runs: int) -> float:
    sched = create_scheduler(name, config)
    sched.set_timesteps(runs + 2)
    rng = np.random.default_rng(0)
    eps = rng.standard_normal(latents.shape, dtype=np.float32)
    state = {"x": latents * np.float32(sched.init_noise_sigma), "i": 0}

    def one_step():
        t = sched.timesteps[state["i"]]
        sched.scale_model_input(state["x"], t)
        state["x"] = sched.step(eps, t, state["x"], rng)
        state["i"] += 1

    return median_seconds(one_step, runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--unet-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    pipe = Pipeline.from_folder(args.model)
    folder = pipe.folder
    side = (args.size or folder.unet.sample_size * folder.vae.scale_factor) // folder.vae.scale_factor
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, folder.unet.in_channels, side, side), dtype=np.float32)
    hidden = rng.standard_normal((2, pipe.tokenizer.max_length, folder.unet.cross_attention_dim), dtype=np.float32)
    info = pipe.unet.inputs["timestep"]
    timestep = model_timestep(500, info.dtype, () if info.rank == 0 else (2,))
    unet = median_seconds(
        lambda: pipe.unet(sample=np.concatenate([latents, latents]), timestep=timestep, encoder_hidden_states=hidden),
        args.unet_runs,
    )
    rows = []
    for name in available_schedulers():
        step = scheduler_step_seconds(name, folder.scheduler_config, latents, args.runs)
        rows.append((name, step, step / unet))
    command = "python -m benchmarks.scheduler_overhead " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Scheduler overhead per UNet call",
        "",
        f"Command: `{command}`",
        f"Model: {folder.path.name}, latents (1, {folder.unet.in_channels}, {side}, {side}); "
        f"UNet call with the CFG batch of 2: {unet * 1000:.1f} ms (median of {args.unet_runs}).",
        f"Machine: {platform.processor() or platform.machine()}, numpy {np.__version__}, "
        f"load average at start {os.getloadavg()[0]:.1f} (other jobs running slow the UNet more than the step).",
        "",
        "| scheduler | scale_model_input + step (ms, median) | share of one UNet call |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{name}` | {step * 1000:.3f} | {share:.4%} |" for name, step, share in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
