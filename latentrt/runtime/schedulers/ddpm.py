"""DDPM: ancestral sampling of Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (NeurIPS 2020), on
the n-step sub-sequence of timesteps, as diffusers' ``DDPMScheduler`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import Scheduler, as_scalar
from .betas import BETA_SCHEDULES
from .ddim import DDPMFamilyConfig, clip_x0
from .prediction import x0_and_eps
from .timesteps import spaced_timesteps

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


def ddpm_posterior_mean(
    x0: NDArray[np.floating], sample: NDArray[np.floating], alpha_prod_t: np.floating, alpha_prod_t_prev: np.floating
) -> NDArray[np.floating]:
    """Mean of ``q(x_{t-1} | x_t, x_0)``, Ho et al. 2020, eq. 7, with ``beta_t`` the step's effective beta."""
    beta_prod_t = 1 - alpha_prod_t
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    x0_coeff = (alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t
    sample_coeff = current_alpha_t**0.5 * (1 - alpha_prod_t_prev) / beta_prod_t
    return x0_coeff * x0 + sample_coeff * sample


def ddpm_std(variance_type: str | None, alpha_prod_t: np.floating, alpha_prod_t_prev: np.floating) -> np.floating:
    """Standard deviation of the step's fresh noise: ``fixed_small`` is the posterior variance
    ``beta~_t = (1 - a_prev) / (1 - a_t) * beta_t`` (Ho et al. 2020, section 3.2), ``fixed_large`` is ``beta_t``."""
    current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
    variance = max((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, np.float32(1e-20))
    if variance_type in ("fixed_small", None):  # diffusers' None falls through to the fixed_small value
        return variance**0.5
    if variance_type == "fixed_small_log":
        return np.exp(0.5 * np.log(variance))
    return current_beta_t**0.5  # fixed_large


@dataclass(frozen=True)
class DDPMConfig(DDPMFamilyConfig):
    scheduler: ClassVar[str] = "ddpm"
    beta_schedules: ClassVar[tuple[str, ...]] = BETA_SCHEDULES + ("laplace", "sigmoid")

    variance_type: str | None = "fixed_small"

    def validate(self) -> None:
        super().validate()
        if self.variance_type in ("learned", "learned_range", "fixed_large_log"):
            self._unsupported(
                "variance_type", "fixed_small",
                "learned variances need a UNet with 2x output channels, and diffusers' fixed_large_log is broken",
            )
        self._one_of("variance_type", VARIANCE_TYPES + (None,))  # None (a DPM-Solver folder's): fixed_small


class DDPMScheduler(Scheduler):
    """Stochastic DDPM: fresh noise at every step except the one that lands on ``t = 0``.

    Behaviours of diffusers reproduced on purpose: the previous timestep is the next entry of ``timesteps``
    (unlike DDIM's ``t - T // n``), and after the last entry ``alpha_bar_prev = 1``; no noise is drawn when
    ``t == 0`` (so with ``leading`` spacing and ``steps_offset`` 1 the last step is noisy).
    """

    name = "ddpm"
    diffusers_class = "DDPMScheduler"
    config_class = DDPMConfig
    config: DDPMConfig
    stochastic = True

    def _make_timesteps(self, n: int) -> NDArray[np.int64]:
        c = self.config
        return spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset).round().astype(np.int64)

    def _step(
        self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: np.random.Generator | None
    ) -> NDArray[Any]:
        t = int(as_scalar(t))
        matches = np.flatnonzero(self.timesteps == t)  # diffusers looks t up on every call, first match
        if len(matches) == 0:
            raise ValueError(f"ddpm scheduler: timestep {t} is not one of scheduler.timesteps")
        i = int(matches[0])
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else np.float32(1.0)
        x0, _ = x0_and_eps(self.config.prediction_type, model_output, sample, a_t)
        x0 = clip_x0(self.config, x0)
        prev = ddpm_posterior_mean(x0, sample, a_t, a_prev)
        if t > 0 and rng is not None:  # step() has checked that rng is a Generator
            prev = prev + ddpm_std(self.config.variance_type, a_t, a_prev) * self._noise(rng, model_output)
        return prev
