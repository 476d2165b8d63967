"""Euler and Euler ancestral: the first-order samplers of Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models" (2022, Algorithm 1 without churn) and Ho et al. 2020's ancestral sampling in
sigma space (Crowson's k-diffusion ``sample_euler_ancestral``), as diffusers' ``EulerDiscreteScheduler`` and
``EulerAncestralDiscreteScheduler`` run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import ScheduleConfig, SigmaScheduler
from .betas import zero_snr_alphas_cumprod
from .sigmas import ancestral_step, denoised_from_model_output, discrete_noise_levels, to_d
from .timesteps import spaced_timesteps


@dataclass(frozen=True)
class SigmaConfig(ScheduleConfig):
    """Keys of the k-diffusion family: how the ``n`` noise levels are spaced."""

    timestep_spacing: str = "linspace"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False

    def validate(self) -> None:
        super().validate()
        self._bool("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
        self._unsupported("use_beta_sigmas", False, "beta-distributed sigmas need scipy; use_karras_sigmas is close")
        if self.use_karras_sigmas and self.use_exponential_sigmas:
            raise ValueError(
                "scheduler_config.json: use_karras_sigmas and use_exponential_sigmas are both true; set only one"
            )

    @property
    def sigma_spacing(self) -> str:
        if self.use_karras_sigmas:
            return "karras"
        if self.use_exponential_sigmas:
            return "exponential"
        return "interp"


def sigma_space_timesteps(config: ScheduleConfig, n: int) -> NDArray[np.float32]:
    """The k-diffusion family's timesteps: float32, ``linspace`` not rounded (diffusers' behaviour)."""
    c = config
    return spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset).astype(np.float32)


@dataclass(frozen=True)
class EulerConfig(SigmaConfig):
    scheduler: ClassVar[str] = "euler"

    interpolation_type: str = "linear"
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_type: str = "discrete"
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"

    def validate(self) -> None:
        super().validate()
        self._one_of("interpolation_type", ("linear", "log_linear"))
        self._number("sigma_min", optional=True)
        self._number("sigma_max", optional=True)
        self._one_of("timestep_type", ("discrete", "continuous"))
        self._bool("rescale_betas_zero_snr")
        self._one_of("final_sigmas_type", ("zero", "sigma_min"))


class EulerScheduler(SigmaScheduler):
    """Euler's method on the probability-flow ODE ``dx/dsigma = (x - D(x)) / sigma``; one UNet call per step.

    Behaviours of diffusers reproduced on purpose: ``linspace`` timesteps are fractional float32 (not rounded);
    ``init_noise_sigma`` is ``sigma_max`` for ``linspace``/``trailing`` but ``sqrt(sigma_max^2 + 1)`` for
    ``leading``; ``timestep_type='continuous'`` with v-prediction hands ``0.25 * log(sigma)`` to the UNet.
    """

    name = "euler"
    diffusers_class = "EulerDiscreteScheduler"
    config_class = EulerConfig
    config: EulerConfig

    def __init__(self, config: Any, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod = zero_snr_alphas_cumprod(self.alphas_cumprod)

    def _make_timesteps(self, n: int) -> NDArray[np.float32]:
        c = self.config
        timesteps, sigmas = discrete_noise_levels(
            self.alphas_cumprod, sigma_space_timesteps(c, n), n, c.sigma_spacing, c.sigma_min, c.sigma_max,
            c.interpolation_type,
        )
        if c.final_sigmas_type == "sigma_min":
            sigma_last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        else:
            sigma_last = 0.0
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)  # (n + 1,); n + 2 with log_linear
        if c.timestep_type == "continuous" and c.prediction_type == "v_prediction":
            # log rounded once to float32, then the exact * 0.25: torch's float32 log, up to its last-bit slips
            return np.float32(0.25) * np.log(self.sigmas[:-1].astype(np.float64)).astype(np.float32)
        return np.asarray(timesteps).astype(np.float32)

    def _step(self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: Any) -> NDArray[Any]:
        i = self._index(t)
        sample = sample.astype(np.float32, copy=False)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        denoised = denoised_from_model_output(self.config.prediction_type, model_output, sample, sigma)
        prev = sample + to_d(sample, sigma, denoised) * (sigma_next - sigma)
        self._step_index = i + 1
        return prev.astype(model_output.dtype, copy=False)


@dataclass(frozen=True)
class EulerAncestralConfig(ScheduleConfig):
    scheduler: ClassVar[str] = "euler-a"
    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction")  # diffusers: 'sample' not implemented

    timestep_spacing: str = "linspace"
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        super().validate()
        self._bool("rescale_betas_zero_snr")


class EulerAncestralScheduler(SigmaScheduler):
    """Euler ancestral ("Euler a"): an Euler step down to ``sigma_down``, then fresh noise of ``sigma_up``
    (:func:`.sigmas.ancestral_step`), every step including the last (where ``sigma_up`` is 0)."""

    name = "euler-a"
    diffusers_class = "EulerAncestralDiscreteScheduler"
    config_class = EulerAncestralConfig
    config: EulerAncestralConfig
    stochastic = True

    def __init__(self, config: Any, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod = zero_snr_alphas_cumprod(self.alphas_cumprod)

    def _make_timesteps(self, n: int) -> NDArray[np.float32]:
        timesteps, sigmas = discrete_noise_levels(self.alphas_cumprod, sigma_space_timesteps(self.config, n), n)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)  # (n + 1,)
        return np.asarray(timesteps).astype(np.float32)

    def _step(
        self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: np.random.Generator | None
    ) -> NDArray[Any]:
        i = self._index(t)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sample = sample.astype(np.float32, copy=False)
        denoised = denoised_from_model_output(self.config.prediction_type, model_output, sample, sigma)
        sigma_up, sigma_down = ancestral_step(sigma, sigma_next)
        prev = sample + to_d(sample, sigma, denoised) * (sigma_down - sigma)
        if rng is not None:  # step() has checked rng
            prev = prev + self._noise(rng, model_output) * sigma_up
        self._step_index = i + 1
        return prev.astype(model_output.dtype, copy=False)
