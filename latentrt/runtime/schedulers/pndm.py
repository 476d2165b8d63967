"""PNDM / PLMS: pseudo linear multi-step sampling (Liu et al., "Pseudo Numerical Methods for Diffusion Models on
Manifolds", ICLR 2022), Stable Diffusion 1.x's default scheduler, as diffusers' ``PNDMScheduler`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import Scheduler, ScheduleConfig, as_scalar
from .betas import final_alpha_cumprod
from .timesteps import spaced_timesteps


def pndm_transfer(
    sample: NDArray[np.floating], eps: NDArray[np.floating], alpha_prod_t: float, alpha_prod_t_prev: float
) -> NDArray[np.floating]:
    """The transfer function ``phi(x_t, eps, t, t - delta)`` of the PNDM paper, eq. 9 (``alpha`` = alpha_bar)."""
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
    denom = alpha_prod_t * beta_prod_t_prev**0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * eps / denom


def plms_eps(ets: list[NDArray[np.floating]]) -> NDArray[np.floating]:
    """Adams-Bashforth combination of the last 1-4 noise predictions (PNDM paper, eq. 12 and its warm-up)."""
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])


@dataclass(frozen=True)
class PNDMConfig(ScheduleConfig):
    scheduler: ClassVar[str] = "pndm"
    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction")

    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False

    def validate(self) -> None:
        super().validate()
        self._bool("skip_prk_steps", "set_alpha_to_one")


class PNDMScheduler(Scheduler):
    """PLMS with ``skip_prk_steps`` (what Stable Diffusion ships), or with the Runge-Kutta warm-up without it.

    Behaviours of diffusers reproduced on purpose:

    - PLMS warm-up: the first timestep is visited twice (``timesteps`` has ``n + 1`` entries for n > 1). The first
      call makes a plain step, the second repeats it from the same start with the mean of the two noise predictions
      (a second-order Heun-like start), then Adams-Bashforth of order 2, 3 and 4 follows.
    - The step always goes from ``t`` to ``t - T // n``, whatever the spacing; below 0 it uses
      ``final_alpha_cumprod`` (``alpha_bar_0`` unless ``set_alpha_to_one``).
    - ``v_prediction`` is converted to epsilon; ``prediction_type='sample'`` is rejected, as diffusers does.
    """

    name = "pndm"
    diffusers_class = "PNDMScheduler"
    config_class = PNDMConfig
    config: PNDMConfig
    pndm_order = 4

    def __init__(self, config: Any, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.final_alpha_cumprod = final_alpha_cumprod(self.alphas_cumprod, self.config.set_alpha_to_one)
        self.prk_timesteps: NDArray[np.int64] = np.zeros(0, dtype=np.int64)

    def _make_timesteps(self, n: int) -> NDArray[np.int64]:
        c = self.config
        self._ratio = c.num_train_timesteps // n  # diffusers steps from t to t - T // n, whatever the spacing
        base = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)
        base = base.round().astype(np.int64)[::-1]  # (n,) ascending
        if c.skip_prk_steps:
            self.prk_timesteps = np.zeros(0, dtype=np.int64)
            plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
        else:
            half = self._ratio // 2
            prk = np.array(base[-self.pndm_order :]).repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].astype(np.int64)
            plms = base[:-3][::-1]
        return np.concatenate([self.prk_timesteps, plms]).astype(np.int64)

    def _reset(self) -> None:
        self.ets: list[NDArray[np.floating]] = []
        self.counter = 0
        self.cur_model_output: Any = 0
        self.cur_sample: NDArray[np.floating] | None = None

    def _step(self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: Any) -> NDArray[Any]:
        t = int(as_scalar(t))
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self._step_prk(model_output, t, sample)
        return self._step_plms(model_output, t, sample)

    def _step_prk(self, model_output: NDArray[Any], t: int, sample: NDArray[Any]) -> NDArray[Any]:
        """Runge-Kutta warm-up (PNDM paper, eq. 13): four model calls per step for the first three steps."""
        half = self._ratio // 2
        prev_t = t - (0 if self.counter % 2 else half)
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        if self.counter % 4 == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif self.counter % 4 in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        self.counter += 1
        return self._prev_sample(cur_sample, t, prev_t, model_output)

    def _step_plms(self, model_output: NDArray[Any], t: int, sample: NDArray[Any]) -> NDArray[Any]:
        ratio = self._ratio
        prev_t = t - ratio
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # second call of the warm-up: same step again, from the same start
            prev_t = t
            t = t + ratio
        if len(self.ets) == 1 and self.counter == 0:
            eps = model_output
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            eps = (model_output + self.ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None  # type: ignore[assignment]
        else:
            eps = plms_eps(self.ets)
        self.counter += 1
        return self._prev_sample(sample, t, prev_t, eps)

    def _prev_sample(self, sample: NDArray[Any], t: int, prev_t: int, eps: NDArray[Any]) -> NDArray[Any]:
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":
            eps = a_t**0.5 * eps + (1 - a_t) ** 0.5 * sample
        return pndm_transfer(sample, eps, a_t, a_prev)
