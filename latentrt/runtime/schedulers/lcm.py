"""LCM: multi-step sampling of a latent consistency model (Luo et al., "Latent Consistency Models: Synthesizing
High-Resolution Images with Few-Step Inference", 2023, Algorithm 3), as diffusers' ``LCMScheduler`` runs it.
Meant for LCM-distilled UNets (or LCM-LoRA); with an ordinary UNet it gives poor images, as in diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import IndexedScheduler, as_scalar
from .betas import final_alpha_cumprod
from .ddim import DDPMFamilyConfig, clip_x0
from .prediction import x0_and_eps


def lcm_origin_timesteps(num_train_timesteps: int, original_inference_steps: int) -> NDArray[np.int64]:
    """The distillation's skipping-step schedule ``k - 1, 2k - 1, ..., T - 1`` with ``k = T // original_steps``."""
    k = num_train_timesteps // original_inference_steps
    return np.arange(1, original_inference_steps + 1, dtype=np.int64) * k - 1


def consistency_scalings(t: int, timestep_scaling: float, sigma_data: float = 0.5) -> tuple[np.float32, np.float32]:
    """``(c_skip, c_out)`` of the consistency-model boundary condition (Song et al., "Consistency Models", 2023,
    eq. 7) at the scaled discrete timestep ``t * timestep_scaling``, in float32 like diffusers."""
    scaled = np.float32(t * timestep_scaling)
    sd2 = np.float32(sigma_data**2)
    c_skip = sd2 / (scaled**2 + sd2)
    c_out = scaled / (scaled**2 + sd2) ** np.float32(0.5)
    return c_skip, c_out


@dataclass(frozen=True)
class LCMConfig(DDPMFamilyConfig):
    scheduler: ClassVar[str] = "lcm"

    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    clip_sample: bool = False
    set_alpha_to_one: bool = True
    original_inference_steps: int = 50
    timestep_scaling: float = 10.0

    def validate(self) -> None:
        super().validate()
        self._bool("set_alpha_to_one")
        self._int("original_inference_steps", 1)
        if self.original_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"scheduler_config.json: original_inference_steps={self.original_inference_steps} cannot exceed "
                f"num_train_timesteps={self.num_train_timesteps}"
            )
        self._number("timestep_scaling")


class LCMScheduler(IndexedScheduler):
    """Each step predicts ``x_0`` through the consistency boundary condition, then re-noises it to the next
    timestep with fresh noise (none after the last step).

    Behaviours of diffusers reproduced on purpose: timesteps are picked from the distillation's
    ``original_inference_steps`` schedule (so ``timestep_spacing`` and ``steps_offset`` do not apply, as in
    diffusers), and more steps than ``original_inference_steps`` is an error.
    """

    name = "lcm"
    diffusers_class = "LCMScheduler"
    config_class = LCMConfig
    config: LCMConfig
    stochastic = True

    def __init__(self, config: Any, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.final_alpha_cumprod = final_alpha_cumprod(self.alphas_cumprod, self.config.set_alpha_to_one)

    def _make_timesteps(self, n: int) -> NDArray[np.int64]:
        c = self.config
        if n > c.original_inference_steps:
            raise ValueError(
                f"num_inference_steps must be at most original_inference_steps={c.original_inference_steps} for "
                f"the lcm scheduler (its timesteps are a subset of the distillation's), got {n}"
            )
        origin = lcm_origin_timesteps(c.num_train_timesteps, c.original_inference_steps)[::-1]
        idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        return origin[idx]

    def _step(
        self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: np.random.Generator | None
    ) -> NDArray[Any]:
        i = self._index(t)
        t = int(as_scalar(t))
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        c_skip, c_out = consistency_scalings(t, self.config.timestep_scaling)
        x0, _ = x0_and_eps(self.config.prediction_type, model_output, sample, a_t)
        denoised = c_out * clip_x0(self.config, x0) + c_skip * sample
        self._step_index = i + 1
        if i != len(self.timesteps) - 1 and rng is not None:  # step() has checked rng
            return a_prev**0.5 * denoised + (1 - a_prev) ** 0.5 * self._noise(rng, denoised)
        return denoised
