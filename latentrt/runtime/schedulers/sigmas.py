"""Noise levels in sigma space (the variance-exploding view of a DDPM) and the ODE/SDE helpers built on them.

Notation of Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM, 2022):
``x_sigma = x_0 + sigma * eps`` with ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``; a DDPM sample is
``x_sigma / sqrt(sigma^2 + 1)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .betas import linspace_f32


def sigmas_from_alphas_cumprod(alphas_cumprod: NDArray[np.float32]) -> NDArray[np.float32]:
    """``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` per training step, shape ``(T,)`` float32 (EDM, Table 1)."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).astype(np.float32)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> NDArray[np.float64]:
    """The EDM noise levels, Karras et al. 2022, eq. 5: ``(max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho``."""
    ramp = np.linspace(0, 1, num_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> NDArray[np.float64]:
    """Noise levels evenly spaced in ``log sigma`` (k-diffusion's ``get_sigmas_exponential``)."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_steps))


def sigma_to_t(sigma: NDArray[np.floating], log_sigmas: NDArray[np.floating]) -> NDArray[np.float64]:
    """The (fractional) training timestep of each ``sigma``, interpolating linearly in ``log sigma``.

    k-diffusion's ``DiscreteSchedule.sigma_to_t`` (Crowson), as diffusers has it: ``log_sigmas`` ascending, shape
    ``(T,)``; ``sigma`` any shape; the result has ``sigma``'s shape.
    """
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (T, n)
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def to_d(sample: NDArray[np.floating], sigma: np.floating, denoised: NDArray[np.floating]) -> NDArray[np.floating]:
    """The probability-flow ODE derivative ``dx/dsigma = (x - D(x)) / sigma`` (Karras et al. 2022, eq. 4 / Alg. 1)."""
    return (sample - denoised) / sigma


def ancestral_step(sigma_from: np.floating, sigma_to: np.floating) -> tuple[np.floating, np.floating]:
    """Split a step to ``sigma_to`` into a deterministic part down to ``sigma_down`` and fresh noise ``sigma_up``.

    ``sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2``, ``sigma_down^2 = sigma_to^2 - sigma_up^2``:
    the ancestral sampler of Ho et al. 2020 written in sigma space (k-diffusion's ``get_ancestral_step``, eta=1).
    """
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_up, sigma_down


def denoised_from_model_output(
    prediction_type: str, model_output: NDArray[np.floating], sample: NDArray[np.floating], sigma: np.floating
) -> NDArray[np.floating]:
    """The model's estimate of ``x_0`` from its output at noise level ``sigma`` (sample in sigma space).

    ``epsilon``: ``x - sigma * eps``; ``v_prediction`` (Salimans & Ho, "Progressive Distillation", 2022):
    ``-sigma / sqrt(sigma^2+1) * v + x / (sigma^2+1)``; ``sample``: the output itself.
    """
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


SIGMA_SPACINGS = ("interp", "karras", "exponential")


def discrete_noise_levels(
    alphas_cumprod: NDArray[np.float32],
    timesteps: NDArray[np.floating],
    num_steps: int,
    spacing: str = "interp",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    interpolation: str = "linear",
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """``(timesteps, sigmas)`` of a ``num_steps`` sampler (no final zero), as diffusers' discrete schedulers build
    them.

    ``interp``: the training sigma at each timestep (linear interpolation for fractional ones). ``karras`` /
    ``exponential``: ``num_steps`` levels between the first and last of those (or ``sigma_min``/``sigma_max``),
    spaced as in :func:`karras_sigmas` / :func:`exponential_sigmas`, with their fractional timesteps from
    :func:`sigma_to_t`.

    ``interpolation="log_linear"`` is diffusers' Euler option, kept as diffusers has it: ``n + 1`` levels evenly
    spaced in ``log sigma`` over the whole training range, whatever ``timesteps`` says (so with a final zero the
    run stops at ``sigma_min`` and never uses the zero).
    """
    train = sigmas_from_alphas_cumprod(alphas_cumprod)  # (T,) float32
    if interpolation == "log_linear":
        sigmas = np.exp(linspace_f32(np.log(train[-1]).item(), np.log(train[0]).item(), num_steps + 1))  # (n+1,)
    else:
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)  # (n,) float64
    if spacing == "interp":
        return timesteps, sigmas
    lo = sigma_min if sigma_min is not None else sigmas[-1].item()
    hi = sigma_max if sigma_max is not None else sigmas[0].item()
    if spacing == "karras":
        sigmas = karras_sigmas(lo, hi, num_steps)
    elif spacing == "exponential":
        sigmas = exponential_sigmas(lo, hi, num_steps)
    else:
        raise ValueError(f"sigma spacing must be one of {', '.join(SIGMA_SPACINGS)}, got {spacing!r}")
    return sigma_to_t(sigmas, np.log(train)), sigmas
