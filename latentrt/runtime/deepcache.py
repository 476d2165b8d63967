"""DeepCache's step plan: which UNet calls of a generation run the full UNet (and refresh the cached deep
feature) and which run only the shallow UNet on that feature (see latentrt/export/deepcache.py for the split).

- "uniform" (DeepCache's default): calls 0, N, 2N, ... are full.
- "nonuniform" (the paper's non-uniform 1:N strategy): as many full calls as uniform, placed more densely
  around a centre call (default: 30% of the way in, where the paper found the deep features change fastest)
  and more sparsely towards both ends, on a power curve; call 0 is always full.

The plan counts UNet calls, not scheduler steps: a second-order sampler (Heun) calls the UNet twice per step
and each call is planned on its own. The first call is always full (nothing is cached yet).
"""

from __future__ import annotations

import math

import numpy as np

CACHE_SCHEDULES = ("uniform", "nonuniform")


def check_cache_interval(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"cache_interval must be an integer >= 1 (1: every UNet call is full, no caching; N: one full call in N), "
            f"got {value!r}"
        )
    return int(value)


def full_calls(calls: int, interval: int, schedule: str = "uniform", center: float = 0.3, power: float = 1.4) -> list[bool]:
    """For each of `calls` UNet calls, whether it runs the full UNet."""
    if schedule not in CACHE_SCHEDULES:
        raise ValueError(f"unknown cache schedule {schedule!r}: choose {' or '.join(CACHE_SCHEDULES)}")
    if interval <= 1 or calls <= 1:
        return [True] * calls
    if schedule == "uniform":
        return [i % interval == 0 for i in range(calls)]
    return _nonuniform(calls, math.ceil(calls / interval), center * (calls - 1), power)


def _nonuniform(calls: int, count: int, center: float, power: float) -> list[bool]:
    """`count` full calls on a power curve around `center`: evenly spaced in u, call = center + sign(u)|u|^power.
    A power that makes two calls round to the same index is lowered towards 1 (even spacing) until they do not."""
    low, high = -(center ** (1 / power)), (calls - 1 - center) ** (1 / power)
    while True:
        u = np.linspace(low, high, count)
        picked = np.unique(np.clip(np.round(center + np.sign(u) * np.abs(u) ** power), 0, calls - 1).astype(int))
        if len(picked) == count or power <= 1.0:
            break
        power = max(1.0, power - 0.02)
        low, high = -(center ** (1 / power)), (calls - 1 - center) ** (1 / power)
    plan = [False] * calls
    for index in picked:
        plan[int(index)] = True
    plan[0] = True
    return plan
