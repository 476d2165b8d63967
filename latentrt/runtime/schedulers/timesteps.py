"""Which of the training timesteps an n-step sampler visits: pure NumPy functions."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(
    spacing: str, num_train_timesteps: int, num_steps: int, steps_offset: int = 0
) -> NDArray[np.float64]:
    """The timesteps of an ``num_steps`` sampler, descending, shape ``(num_steps,)`` (float64, not yet rounded).

    The three spacings of Table 2 in Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"
    (2023), as diffusers computes them:

    - ``leading``: ``0, r, 2r, ...`` with ``r = T // n``, plus ``steps_offset`` (Stable Diffusion's, with 1);
      never reaches the last training step (the off-by-one the paper criticises, kept on purpose).
    - ``trailing``: ``round(T, T - T/n, ...) - 1``: starts at the last training step.
    - ``linspace``: ``linspace(0, T - 1, n)``; callers that need integers round it themselves.
    """
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        return (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        return np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.float64) - 1
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_steps)[::-1].copy()
    raise ValueError(f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, got {spacing!r}")


def multistep_timesteps(
    spacing: str, num_train_timesteps: int, num_steps: int, steps_offset: int = 0, last_timestep: int | None = None
) -> NDArray[np.int64]:
    """The timesteps of diffusers' multistep solvers (DPM-Solver, UniPC), int64, descending, ``(num_steps,)``.

    These space ``num_steps + 1`` points and drop the one at 0 (``linspace``, ``leading``), unlike
    :func:`spaced_timesteps`; ``last_timestep`` (default ``T``) is where the schedule is cut for
    ``lambda_min_clipped``.
    """
    last = num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "linspace":
        return np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last // (num_steps + 1)
        return (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        return np.arange(last, 0, -ratio).round().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, got {spacing!r}")


def model_timestep(t: float | np.number, dtype: np.dtype | type | str, shape: tuple[int, ...] = ()) -> NDArray[Any]:
    """A timestep from ``scheduler.timesteps`` as the UNet graph's ``timestep`` input, ``shape`` filled with it.

    A float graph gets the value as it is (Euler, Heun, LMS and Karras schedules have fractional timesteps);
    an integer graph gets it rounded to the nearest integer (diffusers' legacy ONNX pipeline truncates, which
    turns 999.9 into 999; the torch UNet would have seen 999.9).
    """
    dtype = np.dtype(dtype)
    value = np.asarray(t).reshape(()).item()
    if np.issubdtype(dtype, np.integer):
        value = int(np.rint(value))
    return np.full(shape, value, dtype=dtype)
