"""Heun's second-order method on the probability-flow ODE (Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", 2022, Algorithm 1, no churn), as diffusers' ``HeunDiscreteScheduler`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import SigmaScheduler
from .betas import BETA_SCHEDULES
from .euler import SigmaConfig, sigma_space_timesteps
from .sigmas import denoised_from_model_output, discrete_noise_levels, to_d


@dataclass(frozen=True)
class HeunConfig(SigmaConfig):
    scheduler: ClassVar[str] = "heun"
    beta_schedules: ClassVar[tuple[str, ...]] = BETA_SCHEDULES + ("exp",)

    beta_start: float = 0.00085
    beta_end: float = 0.012
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    def validate(self) -> None:
        super().validate()
        self._bool("clip_sample")
        self._number("clip_sample_range")


class HeunScheduler(SigmaScheduler):
    """Two UNet calls per step: an Euler predictor to the next sigma, then the trapezoidal corrector.

    Behaviours of diffusers reproduced on purpose: ``timesteps`` interleaves them, ``t0, t1, t1, t2, t2, ...``
    (``2n - 1`` entries, so odd counts), and the last step to sigma 0 is a plain Euler step.
    """

    name = "heun"
    diffusers_class = "HeunDiscreteScheduler"
    config_class = HeunConfig
    config: HeunConfig
    order = 2

    def _make_timesteps(self, n: int) -> NDArray[np.float32]:
        c = self.config
        timesteps, sigmas = discrete_noise_levels(
            self.alphas_cumprod, sigma_space_timesteps(c, n), n, c.sigma_spacing
        )
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = np.concatenate([sigmas[:1], sigmas[1:-1].repeat(2), sigmas[-1:]])  # (2n,)
        timesteps = np.asarray(timesteps).astype(np.float32)
        return np.concatenate([timesteps[:1], timesteps[1:].repeat(2)])  # (2n - 1,)

    def _reset(self) -> None:
        super()._reset()
        self._prev_derivative: NDArray[Any] | None = None
        self._dt: np.floating | None = None
        self._sample: NDArray[Any] | None = None

    def _step(self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: Any) -> NDArray[Any]:
        i = self._index(t)
        first_order = self._dt is None
        j = i if first_order else i - 1  # the corrector re-evaluates the step the predictor took
        sigma, sigma_next = self.sigmas[j], self.sigmas[j + 1]
        sigma_in = sigma if first_order else sigma_next
        prediction = self.config.prediction_type
        denoised = denoised_from_model_output(prediction, model_output, sample, sigma_in)
        if self.config.clip_sample:
            denoised = np.clip(denoised, -self.config.clip_sample_range, self.config.clip_sample_range)
        if first_order:
            derivative = to_d(sample, sigma, denoised)
            dt = sigma_next - sigma
            self._prev_derivative, self._dt, self._sample = derivative, dt, sample
        else:
            derivative = (self._prev_derivative + to_d(sample, sigma_next, denoised)) / 2
            dt, sample = self._dt, self._sample  # type: ignore[assignment]
            self._prev_derivative, self._dt, self._sample = None, None, None
        self._step_index = i + 1
        return sample + derivative * dt
