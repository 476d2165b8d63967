"""DDIM: denoising diffusion implicit models (Song, Meng & Ermon, ICLR 2021), deterministic (eta = 0), as
diffusers' ``DDIMScheduler`` runs it; Stable Diffusion 2.x's default scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import Scheduler, ScheduleConfig, as_scalar
from .betas import final_alpha_cumprod
from .prediction import dynamic_threshold, x0_and_eps
from .timesteps import spaced_timesteps


def ddim_step(
    x0: NDArray[np.floating], eps: NDArray[np.floating], alpha_prod_t_prev: np.floating
) -> NDArray[np.floating]:
    """DDIM update with eta = 0 (Song et al. 2021, eq. 12): ``sqrt(a_prev) x_0 + sqrt(1 - a_prev) eps``."""
    return alpha_prod_t_prev**0.5 * x0 + (1 - alpha_prod_t_prev) ** 0.5 * eps


@dataclass(frozen=True)
class DDPMFamilyConfig(ScheduleConfig):
    """The keys DDIM and DDPM share: clipping / thresholding of the ``x_0`` estimate, zero terminal SNR."""

    clip_sample: bool = True
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        super().validate()
        self._bool("clip_sample", "thresholding", "rescale_betas_zero_snr")
        self._number("clip_sample_range")
        self._number("dynamic_thresholding_ratio")
        self._number("sample_max_value")


def clip_x0(config: DDPMFamilyConfig, x0: NDArray[np.floating]) -> NDArray[np.floating]:
    """Dynamic thresholding if the config asks for it, else clipping to ``clip_sample_range`` if asked."""
    if config.thresholding:
        return dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    if config.clip_sample:
        return np.clip(x0, -config.clip_sample_range, config.clip_sample_range)
    return x0


@dataclass(frozen=True)
class DDIMConfig(DDPMFamilyConfig):
    scheduler: ClassVar[str] = "ddim"

    set_alpha_to_one: bool = True

    def validate(self) -> None:
        super().validate()
        self._bool("set_alpha_to_one")


class DDIMScheduler(Scheduler):
    """Deterministic DDIM.

    Behaviours of diffusers reproduced on purpose: the step goes from ``t`` to ``t - T // n`` whatever the spacing
    (with ``trailing`` and an ``n`` that does not divide ``T`` that is not the next entry of ``timesteps``); below
    0 it uses ``final_alpha_cumprod`` (1 with ``set_alpha_to_one``, else ``alpha_bar_0``); ``x_0`` is clipped
    before the update when ``clip_sample`` (diffusers' default for this class is true).
    """

    name = "ddim"
    diffusers_class = "DDIMScheduler"
    config_class = DDIMConfig
    config: DDIMConfig

    def __init__(self, config: Any, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.final_alpha_cumprod = final_alpha_cumprod(self.alphas_cumprod, self.config.set_alpha_to_one)

    def _make_timesteps(self, n: int) -> NDArray[np.int64]:
        c = self.config
        return spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset).round().astype(np.int64)

    def _step(self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: Any) -> NDArray[Any]:
        t = int(as_scalar(t))
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps  # type: ignore[operator]
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0, eps = x0_and_eps(self.config.prediction_type, model_output, sample, a_t)
        x0 = clip_x0(self.config, x0)
        return ddim_step(x0, eps, a_prev)
