"""The time of one full and one shallow UNet call (DeepCache) of a pipeline, on the same inputs."""

from __future__ import annotations

import statistics
import time

import numpy as np


def call_times(pipe, prompts: list[str], height: int, width: int, do_cfg: bool, repeats: int = 20) -> dict[str, float]:
    """Median seconds of one full and one shallow UNet call, the two alternated `repeats` times (the batch: one row
    per prompt, two with CFG)."""
    from latentrt.runtime.families import Prompts, SizeConditioning

    text = Prompts(list(prompts), [""] * len(prompts), False, do_cfg, 1)
    conditioning = pipe.family.conditioning(pipe._run, text, SizeConditioning(height, width))
    batch = len(prompts) * (2 if do_cfg else 1)
    sample = np.random.default_rng(0).standard_normal((batch, *pipe.latent_shape(height, width)), dtype=np.float32)
    _, feature = pipe._unet(sample, 500.0, conditioning, keep_feature=True)
    times: dict[str, list[float]] = {"full": [], "shallow": []}
    for _ in range(repeats):
        for kind, call in (("full", lambda: pipe._unet(sample, 500.0, conditioning)),
                           ("shallow", lambda: pipe._unet_shallow(sample, 500.0, conditioning, feature))):
            t0 = time.perf_counter()
            call()
            times[kind].append(time.perf_counter() - t0)
    return {kind: statistics.median(values) for kind, values in times.items()}
