"""The time of one full and one shallow UNet call (DeepCache) of a pipeline, on the same inputs."""

from __future__ import annotations

import statistics
import time

import numpy as np


def call_times(pipe, prompts: list[str], height: int, width: int, do_cfg: bool, repeats: int = 20) -> dict[str, float]:
    """Median seconds of one full and one shallow UNet call, the two alternated `repeats` times (the batch: one row
    per prompt, two with CFG)."""
    from latentrt.runtime.request import Request

    plan = pipe.check(Request(list(prompts), height=height, width=width, guidance_scale=7.5 if do_cfg else 1.0))
    conditioning = pipe.encode_prompt(plan)
    batch = len(prompts) * (2 if do_cfg else 1)
    sample = np.random.default_rng(0).standard_normal((batch, *pipe.latent_shape(height, width)), dtype=np.float32)
    times: dict[str, list[float]] = {"full": [], "shallow": []}
    with pipe.denoiser(conditioning, shallow=True) as unet:
        _, feature = unet(sample, 500.0, keep_feature=True)
        for _ in range(repeats):
            for kind, call in (("full", lambda: unet(sample, 500.0)), ("shallow", lambda: unet.shallow(sample, 500.0, feature))):
                t0 = time.perf_counter()
                call()
                times[kind].append(time.perf_counter() - t0)
    return {kind: statistics.median(values) for kind, values in times.items()}
