"""LMS: linear multi-step (Adams-Bashforth of order up to 4) on the probability-flow ODE in sigma space
(Karras et al. 2022, section 3; Crowson's k-diffusion ``sample_lms``), as diffusers' ``LMSDiscreteScheduler``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import SigmaScheduler
from .euler import SigmaConfig, sigma_space_timesteps
from .sigmas import denoised_from_model_output, discrete_noise_levels, to_d


def lms_coefficient(sigmas: NDArray[np.float32], order: int, i: int, j: int) -> float:
    """Weight of the derivative taken ``j`` steps ago in the step from ``sigmas[i]`` to ``sigmas[i + 1]``.

    The integral over ``[sigma_i, sigma_{i+1}]`` of the Lagrange basis polynomial through
    ``sigma_i, sigma_{i-1}, ..., sigma_{i-order+1}`` that is 1 at ``sigma_{i-j}``. diffusers integrates it
    numerically (scipy ``quad``); the polynomial is integrated exactly here.
    """
    nodes = [float(sigmas[i - k]) for k in range(order) if k != j]
    poly = np.polynomial.Polynomial([1.0])
    for node in nodes:
        poly = poly * np.polynomial.Polynomial([-node, 1.0]) / (float(sigmas[i - j]) - node)
    antiderivative = poly.integ()
    return float(antiderivative(float(sigmas[i + 1])) - antiderivative(float(sigmas[i])))


@dataclass(frozen=True)
class LMSConfig(SigmaConfig):
    scheduler: ClassVar[str] = "lms"


class LMSScheduler(SigmaScheduler):
    """Order 4 (fewer for the first steps): ``x_{i+1} = x_i + sum_j c_ij d_{i-j}``."""

    name = "lms"
    diffusers_class = "LMSDiscreteScheduler"
    config_class = LMSConfig
    config: LMSConfig
    lms_order = 4

    def _make_timesteps(self, n: int) -> NDArray[np.float32]:
        c = self.config
        timesteps, sigmas = discrete_noise_levels(self.alphas_cumprod, sigma_space_timesteps(c, n), n, c.sigma_spacing)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)  # (n + 1,)
        return np.asarray(timesteps).astype(np.float32)

    def _reset(self) -> None:
        super()._reset()
        self._derivatives: list[NDArray[Any]] = []

    def _step(self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: Any) -> NDArray[Any]:
        i = self._index(t)
        sigma = self.sigmas[i]
        denoised = denoised_from_model_output(self.config.prediction_type, model_output, sample, sigma)
        self._derivatives.append(to_d(sample, sigma, denoised))
        if len(self._derivatives) > self.lms_order:
            self._derivatives.pop(0)
        order = min(i + 1, self.lms_order)
        coeffs = [lms_coefficient(self.sigmas, order, i, j) for j in range(order)]
        self._step_index = i + 1
        return sample + sum(c * d for c, d in zip(coeffs, reversed(self._derivatives)))
