"""UniPC: unified predictor-corrector (Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models", NeurIPS 2023), as diffusers' ``UniPCMultistepScheduler`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .dpmsolver import MultistepConfig, MultistepScheduler
from .sigmas import exponential_sigmas, karras_sigmas, sigma_to_t, sigmas_from_alphas_cumprod
from .timesteps import multistep_timesteps


def unipc_coefficients(
    rks: NDArray[np.float32], hh: np.float32, solver_type: str, order: int
) -> tuple[NDArray[np.float32], NDArray[np.float32], np.float32, np.float32]:
    """``(R, b, h_phi_1, B_h)`` of the UniPC linear system (Zhao et al. 2023, Algorithm 2 / eq. 9 for B(h)):
    ``R[k] = rks ** k``, ``b[k] = h phi_{k+1}(h) k! / B(h)``; ``bh1``: ``B(h) = h``, ``bh2``: ``B(h) = e^h - 1``."""
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    b_h = hh if solver_type == "bh1" else np.expm1(hh)
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    return np.stack(rows).astype(np.float32), np.asarray(b, dtype=np.float32), h_phi_1, b_h


def _solve(r: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.linalg.solve(r.astype(np.float64), b.astype(np.float64)).astype(np.float32)


def _weighted(rhos: NDArray[np.float32], d1s: list[NDArray[Any]]) -> NDArray[Any] | float:
    """``sum_k rhos[k] * d1s[k]`` (diffusers' einsum ``k,bkc...->bc...``); 0 when there is no history."""
    if not d1s:
        return 0
    return sum(rho * d for rho, d in zip(rhos, d1s))  # type: ignore[return-value]


@dataclass(frozen=True)
class UniPCConfig(MultistepConfig):
    scheduler: ClassVar[str] = "unipc"

    predict_x0: bool = True
    solver_type: str = "bh2"
    disable_corrector: tuple[int, ...] = ()
    solver_p: Any = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    shift_terminal: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.solver_type in ("midpoint", "heun", "logrho"):  # diffusers' rename (a DPM-Solver folder config)
            object.__setattr__(self, "solver_type", "bh2")
        self._one_of("solver_type", ("bh1", "bh2"))
        self._bool("predict_x0")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.disable_corrector):
            raise ValueError(
                "scheduler_config.json: disable_corrector must be a list of step indices, "
                f"got {self.disable_corrector!r}"
            )
        self._unsupported("solver_p", None, "a second scheduler object as predictor cannot come from a JSON config")
        self._number("sigma_min", optional=True)
        self._number("sigma_max", optional=True)
        self._unsupported("shift_terminal", None, "diffusers allows it only with use_flow_sigmas")
        if self.final_sigmas_type == "zero":
            # diffusers' last step to sigma 0 divides by h = inf: NaN/inf latents, which latentrt refuses to copy
            for key, ok in (("solver_type", "bh2"), ("predict_x0", True), ("lower_order_final", True)):
                if getattr(self, key) != ok:
                    raise ValueError(
                        f"scheduler_config.json: {key}={getattr(self, key)!r} with final_sigmas_type 'zero' makes "
                        f"diffusers' UniPC return NaN/inf on its last step; set {key} to {ok!r} or "
                        "final_sigmas_type to 'sigma_min'"
                    )


class UniPCScheduler(MultistepScheduler):
    """UniP predictor (order up to ``solver_order``) after a UniC corrector that reuses the new model output,
    so still one UNet call per step.

    Behaviours of diffusers reproduced on purpose: the order ramps up 1, 2, ... and comes down on the last steps
    (``lower_order_final``); order 2 predictors use the fixed ``rho = 0.5``; Karras timesteps are rounded.
    """

    name = "unipc"
    diffusers_class = "UniPCMultistepScheduler"
    config_class = UniPCConfig
    config: UniPCConfig

    def _make_timesteps(self, n: int) -> NDArray[np.int64]:
        c = self.config
        train = sigmas_from_alphas_cumprod(self.alphas_cumprod)  # (T,) float32
        timesteps = multistep_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)
        if c.use_karras_sigmas or c.use_exponential_sigmas:
            lo = c.sigma_min if c.sigma_min is not None else train[0].item()
            hi = c.sigma_max if c.sigma_max is not None else train[-1].item()
            sigmas = (karras_sigmas if c.use_karras_sigmas else exponential_sigmas)(lo, hi, n)
            timesteps = sigma_to_t(sigmas, np.log(train))
            if c.use_karras_sigmas:
                timesteps = timesteps.round()
            sigma_last = sigmas[-1]
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
            sigma_last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        sigma_last = sigma_last if c.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(timesteps)
        return timesteps

    def _reset(self) -> None:
        super()._reset()
        self._last_sample: NDArray[Any] | None = None
        self._this_order = 1

    def _convert(self, model_output: NDArray[Any], sample: NDArray[Any], i: int) -> NDArray[Any]:
        if self.config.predict_x0:
            return self._x0(model_output, sample, i)
        alpha_t, sigma_t, _ = self._levels(i)
        if self.config.prediction_type == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        if self.config.prediction_type == "v_prediction":
            return alpha_t * model_output + sigma_t * sample
        return model_output

    def _history(self, s0: int, order: int) -> tuple[list[NDArray[Any]], NDArray[np.float32], Any]:
        """``(D1s, rks, h)`` from the stored outputs ``m_{s0-k}``: ``rk = (lambda_{s0-k} - lambda_{s0}) / h``."""
        lambda_s0 = self._levels(s0)[2]
        h = self._levels(s0 + 1)[2] - lambda_s0
        m0 = self.model_outputs[-1]
        rks, d1s = [], []
        for k in range(1, order):
            rk = (self._levels(s0 - k)[2] - lambda_s0) / h
            rks.append(rk)
            d1s.append((self.model_outputs[-(k + 1)] - m0) / rk)  # type: ignore[operator]
        rks.append(np.float32(1.0))
        return d1s, np.asarray(rks, dtype=np.float32), h

    def _combine(self, x: NDArray[Any], s0: int, h_phi_1: Any, b_h: Any, res: Any) -> NDArray[Any]:
        alpha_t, sigma_t, _ = self._levels(s0 + 1)
        alpha_s0, sigma_s0, _ = self._levels(s0)
        m0 = self.model_outputs[-1]
        if self.config.predict_x0:
            return sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0 - alpha_t * b_h * res
        return alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0 - sigma_t * b_h * res

    def _predictor(self, x: NDArray[Any], i: int, order: int) -> NDArray[Any]:
        """UniP-p (Zhao et al. 2023, Algorithm 2), from ``sigmas[i]`` to ``sigmas[i + 1]``."""
        d1s, rks, h = self._history(i, order)
        hh = -h if self.config.predict_x0 else h
        r, b, h_phi_1, b_h = unipc_coefficients(rks, hh, self.config.solver_type, order)
        rhos = np.array([0.5], dtype=np.float32) if order == 2 else (_solve(r[:-1, :-1], b[:-1]) if d1s else None)
        res = _weighted(rhos, d1s) if d1s else 0
        return self._combine(x, i, h_phi_1, b_h, res).astype(x.dtype, copy=False)

    def _corrector(self, model_t: NDArray[Any], x: NDArray[Any], i: int, order: int) -> NDArray[Any]:
        """UniC-p (Zhao et al. 2023, Algorithm 1): corrects the sample at ``sigmas[i]`` that the last predictor
        made from ``x`` at ``sigmas[i - 1]``, with the new model output ``model_t``."""
        d1s, rks, h = self._history(i - 1, order)
        hh = -h if self.config.predict_x0 else h
        r, b, h_phi_1, b_h = unipc_coefficients(rks, hh, self.config.solver_type, order)
        rhos = np.array([0.5], dtype=np.float32) if order == 1 else _solve(r, b)
        res = _weighted(rhos[:-1], d1s) + rhos[-1] * (model_t - self.model_outputs[-1])
        return self._combine(x, i - 1, h_phi_1, b_h, res).astype(x.dtype, copy=False)

    def _step(self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: Any) -> NDArray[Any]:
        # a step of zero length (final_sigmas_type 'sigma_min' after Karras sigmas) divides 0 by 0 in coefficients
        # that end up multiplied by 0, as in diffusers: keep NumPy quiet about it
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._unipc_step(model_output, t, sample)

    def _unipc_step(self, model_output: NDArray[Any], t: Any, sample: NDArray[Any]) -> NDArray[Any]:
        c = self.config
        i = self._index(t)
        converted = self._convert(model_output, sample, i)
        if i > 0 and (i - 1) not in c.disable_corrector and self._last_sample is not None:
            sample = self._corrector(converted, self._last_sample, i, self._this_order)
        self._push(converted)
        order = min(c.solver_order, len(self.timesteps) - i) if c.lower_order_final else c.solver_order
        self._this_order = min(order, self.lower_order_nums + 1)
        self._last_sample = sample
        prev = self._predictor(sample, i, self._this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index = i + 1
        return prev
