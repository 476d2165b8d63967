"""Training noise schedules: betas and their cumulative products, as pure NumPy functions.

Everything here is computed the way diffusers computes it (float32 tables), so that a scheduler built from the
same ``scheduler_config.json`` walks through exactly the same noise levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # what every scheduler accepts


def linspace_f32(start: float, end: float, steps: int) -> NDArray[np.float32]:
    """``torch.linspace(start, end, steps, dtype=torch.float32)``, to the bit.

    torch's CPU kernel fills the first half forwards from ``start`` and the second half backwards from ``end``,
    with a float32 step and one fused multiply-add (one rounding) per element; float64 emulates that exactly.
    """
    if steps == 1:
        return np.array([start], dtype=np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(steps - 1))
    idx = np.arange(steps)
    out = np.where(
        idx < steps // 2,
        np.float64(start32) + step * idx,
        np.float64(end32) - step * (steps - 1 - idx),
    )
    return out.astype(np.float32)


def _alpha_bar_cosine(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _alpha_bar_exp(t: float) -> float:
    return math.exp(t * -12.0)


def _alpha_bar_laplace(t: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


_ALPHA_BARS = {"cosine": _alpha_bar_cosine, "exp": _alpha_bar_exp, "laplace": _alpha_bar_laplace}


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine"
) -> NDArray[np.float32]:
    """Betas that discretise a continuous ``alpha_bar(t)``, each capped at ``max_beta``.

    ``cosine`` is Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (2021), eq. 17:
    ``alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2) ** 2``; ``exp`` (``exp(-12 t)``) and ``laplace`` (a
    Laplace-distributed log-SNR) are diffusers' variants of the same construction.
    """
    alpha_bar = _ALPHA_BARS[alpha_transform_type]
    betas = [
        min(1 - alpha_bar((i + 1) / num_diffusion_timesteps) / alpha_bar(i / num_diffusion_timesteps), max_beta)
        for i in range(num_diffusion_timesteps)
    ]
    return np.asarray(betas, dtype=np.float32)


def rescale_zero_terminal_snr(betas: NDArray[np.float32]) -> NDArray[np.float32]:
    """Shift and scale ``sqrt(alpha_bar)`` so that the last timestep has zero signal-to-noise ratio.

    Algorithm 1 of Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (2023).
    """
    sqrt_ab = np.sqrt(alphas_cumprod(betas))
    first, last = sqrt_ab[0].copy(), sqrt_ab[-1].copy()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alphas_bar = sqrt_ab**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1 - alphas).astype(np.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | None = None,
    rescale_betas_zero_snr: bool = False,
) -> NDArray[np.float32]:
    """The per-step noise variances ``beta_t`` of the forward process, shape ``(num_train_timesteps,)``.

    ``linear`` is Ho et al., "Denoising Diffusion Probabilistic Models" (2020); ``scaled_linear`` (linear in
    ``sqrt(beta)``) is the Stable Diffusion schedule (Rombach et al., "High-Resolution Image Synthesis with Latent
    Diffusion Models", 2022); ``squaredcos_cap_v2`` is :func:`betas_for_alpha_bar` (and ``exp``/``laplace``, its
    variants); ``sigmoid`` is a sigmoid over [-6, 6] (Jabri et al., "Scalable Adaptive Computation for Iterative
    Generation", 2022). Which of them a scheduler accepts is its diffusers class's choice.
    """
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float32)
    elif beta_schedule == "linear":
        betas = linspace_f32(beta_start, beta_end, num_train_timesteps)
    elif beta_schedule == "scaled_linear":
        betas = linspace_f32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(num_train_timesteps)
    elif beta_schedule in ("exp", "laplace"):
        betas = betas_for_alpha_bar(num_train_timesteps, alpha_transform_type=beta_schedule)
    elif beta_schedule == "sigmoid":
        x = linspace_f32(-6, 6, num_train_timesteps)
        sig = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)
        betas = (sig * np.float32(beta_end - beta_start) + np.float32(beta_start)).astype(np.float32)
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod(betas: NDArray[np.float32]) -> NDArray[np.float32]:
    """``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` (Ho et al. 2020, eq. 4), shape ``(T,)`` float32.

    Accumulated in float64 and rounded per element, as torch's CPU ``cumprod`` does for float32.
    """
    return np.cumprod((1.0 - betas).astype(np.float64)).astype(np.float32)


def final_alpha_cumprod(alphas_cumprod: NDArray[np.float32], set_alpha_to_one: bool) -> np.float32:
    """``alpha_bar`` used past the last training step (t < 0) by DDIM-style updates: 1 with ``set_alpha_to_one``
    (a clean final sample, Song et al. 2021), else ``alpha_bar_0`` (Stable Diffusion's configs set it false)."""
    return np.float32(1.0) if set_alpha_to_one else alphas_cumprod[0]


def zero_snr_alphas_cumprod(alphas_cumprod: NDArray[np.float32]) -> NDArray[np.float32]:
    """With a zero-terminal-SNR schedule, the last ``alpha_bar`` is set to ``2**-24`` so sigma stays finite
    (diffusers' Euler schedulers; Lin et al. 2023 sample at that step with v-prediction)."""
    out = alphas_cumprod.copy()
    out[-1] = 2**-24
    return out
