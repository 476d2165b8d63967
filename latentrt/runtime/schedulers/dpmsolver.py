"""DPM-Solver++ (2M, optionally SDE, optionally on Karras sigmas): Lu et al., "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models" (2022), as diffusers' ``DPMSolverMultistepScheduler`` runs it.

Notation: ``alpha_t = 1 / sqrt(sigma^2 + 1)``, ``sigma_t = sigma * alpha_t`` (VP), ``lambda = log(alpha_t / sigma_t)``
(half log-SNR), ``h = lambda_next - lambda_now``; the model output is converted to a data prediction ``x_0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import IndexedScheduler, ScheduleConfig
from .betas import zero_snr_alphas_cumprod
from .prediction import dynamic_threshold
from .sigmas import exponential_sigmas, karras_sigmas, sigma_to_t, sigmas_from_alphas_cumprod
from .timesteps import multistep_timesteps

def vp_alpha_sigma(sigma: np.floating) -> tuple[np.floating, np.floating]:
    """``(alpha_t, sigma_t)`` of the VP process at VE noise level ``sigma`` (Karras et al. 2022, Table 1)."""
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


def half_log_snr(alpha_t: np.floating, sigma_t: np.floating) -> np.floating:
    """``lambda = log(alpha_t) - log(sigma_t)`` (DPM-Solver, section 3.1); ``+inf`` at ``sigma_t = 0``."""
    with np.errstate(divide="ignore"):
        return np.log(alpha_t) - np.log(sigma_t)


def dpmpp_first_order(
    x: NDArray[Any], x0: NDArray[Any], s0: tuple, t: tuple, sde: bool, noise: NDArray[Any] | None
) -> NDArray[Any]:
    """DPM-Solver++(1) (= DDIM in data-prediction form), DPM-Solver++ paper eq. 8; the SDE variant is eq. 18
    with ``noise``. ``s0``, ``t``: ``(alpha, sigma, lambda)`` at the current and next noise level."""
    (_, sigma_s, lambda_s), (alpha_t, sigma_t, lambda_t) = s0, t
    h = lambda_t - lambda_s
    if not sde:
        return (sigma_t / sigma_s) * x - (alpha_t * (np.exp(-h) - 1.0)) * x0
    return (
        (sigma_t / sigma_s * np.exp(-h)) * x
        + (alpha_t * (1 - np.exp(-2.0 * h))) * x0
        + sigma_t * np.sqrt(1.0 - np.exp(-2 * h)) * noise
    )


def dpmpp_second_order(
    x: NDArray[Any],
    m0: NDArray[Any],
    m1: NDArray[Any],
    s1: tuple,
    s0: tuple,
    t: tuple,
    solver_type: str,
    sde: bool,
    noise: NDArray[Any] | None,
) -> NDArray[Any]:
    """Multistep DPM-Solver++(2M), Algorithm 2 of the DPM-Solver++ paper (``midpoint``) or its ``heun`` variant;
    with ``sde``, the SDE-DPM-Solver++(2M) of section 5. ``m0``, ``m1``: data predictions now and one step ago."""
    lambda_s1, (_, sigma_s0, lambda_s0), (alpha_t, sigma_t, lambda_t) = s1[2], s0, t
    h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
    r0 = h_0 / h
    d0, d1 = m0, (1.0 / r0) * (m0 - m1)
    if not sde:
        first = (sigma_t / sigma_s0) * x - (alpha_t * (np.exp(-h) - 1.0)) * d0
        if solver_type == "midpoint":
            return first - 0.5 * (alpha_t * (np.exp(-h) - 1.0)) * d1
        return first + (alpha_t * ((np.exp(-h) - 1.0) / h + 1.0)) * d1
    first = (sigma_t / sigma_s0 * np.exp(-h)) * x + (alpha_t * (1 - np.exp(-2.0 * h))) * d0
    if solver_type == "midpoint":
        second = 0.5 * (alpha_t * (1 - np.exp(-2.0 * h))) * d1
    else:
        second = (alpha_t * ((1.0 - np.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
    return first + second + sigma_t * np.sqrt(1.0 - np.exp(-2 * h)) * noise


def dpmpp_third_order(
    x: NDArray[Any],
    m: tuple[NDArray[Any], NDArray[Any], NDArray[Any]],
    s2: tuple,
    s1: tuple,
    s0: tuple,
    t: tuple,
    sde: bool,
    noise: NDArray[Any] | None,
) -> NDArray[Any]:
    """Multistep DPM-Solver++(3M) (DPM-Solver++ paper, appendix); ``m``: data predictions now, -1 and -2 steps."""
    m0, m1, m2 = m
    lambda_s2, lambda_s1, (_, sigma_s0, lambda_s0), (alpha_t, sigma_t, lambda_t) = s2[2], s1[2], s0, t
    h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    if not sde:
        return (
            (sigma_t / sigma_s0) * x
            - (alpha_t * (np.exp(-h) - 1.0)) * m0
            + (alpha_t * ((np.exp(-h) - 1.0) / h + 1.0)) * d1
            - (alpha_t * ((np.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        )
    return (
        (sigma_t / sigma_s0 * np.exp(-h)) * x
        + (alpha_t * (1.0 - np.exp(-2.0 * h))) * m0
        + (alpha_t * ((1.0 - np.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
        + (alpha_t * ((1.0 - np.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
        + sigma_t * np.sqrt(1.0 - np.exp(-2 * h)) * noise
    )


def data_prediction(
    prediction_type: str, model_output: NDArray[Any], sample: NDArray[Any], alpha_t: np.floating, sigma_t: np.floating
) -> NDArray[Any]:
    """``x_0`` from the model output, with ``x_t = alpha_t x_0 + sigma_t eps`` (``v = alpha_t eps - sigma_t x_0``)."""
    if prediction_type == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    return model_output  # sample


@dataclass(frozen=True)
class MultistepConfig(ScheduleConfig):
    """Keys DPM-Solver and UniPC share in diffusers."""

    timestep_spacing: str = "linspace"
    solver_order: int = 2
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    lower_order_final: bool = True
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    final_sigmas_type: str = "zero"
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    def validate(self) -> None:
        super().validate()
        self._int("solver_order", 1)
        self._bool("thresholding", "lower_order_final", "use_karras_sigmas", "use_exponential_sigmas")
        self._bool("use_beta_sigmas", "use_flow_sigmas", "rescale_betas_zero_snr", "use_dynamic_shifting")
        self._number("dynamic_thresholding_ratio")
        self._number("sample_max_value")
        self._number("flow_shift")  # read by diffusers only with use_flow_sigmas (rejected below)
        self._one_of("final_sigmas_type", ("zero", "sigma_min"))
        self._unsupported("use_beta_sigmas", False, "beta-distributed sigmas need scipy; use_karras_sigmas is close")
        self._unsupported("use_flow_sigmas", False, "flow-matching models are not Stable Diffusion 1/2 models")
        self._unsupported("use_dynamic_shifting", False, "dynamic shifting is for flow-matching models")
        # time_shift_type is read by diffusers only with use_dynamic_shifting (rejected above)
        if self.use_karras_sigmas and self.use_exponential_sigmas:
            raise ValueError(
                "scheduler_config.json: use_karras_sigmas and use_exponential_sigmas are both true; set only one"
            )

    def threshold(self, x0: NDArray[Any]) -> NDArray[Any]:
        if self.thresholding:
            return dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        return x0


@dataclass(frozen=True)
class DPMSolverConfig(MultistepConfig):
    scheduler: ClassVar[str] = "dpm++2m"

    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    euler_at_final: bool = False
    use_lu_lambdas: bool = False
    lambda_min_clipped: float = -float("inf")
    variance_type: str | None = None

    def validate(self) -> None:
        super().validate()
        # diffusers' own renames, so that a UniPC or DEIS folder config works (register_to_config in __init__)
        if self.algorithm_type == "deis":
            if self.final_sigmas_type == "zero":  # diffusers checks the name before renaming it
                raise ValueError(
                    "scheduler_config.json: algorithm_type 'deis' needs final_sigmas_type 'sigma_min' "
                    "(as in diffusers); or set algorithm_type to 'dpmsolver++'"
                )
            object.__setattr__(self, "algorithm_type", "dpmsolver++")
        if self.solver_type in ("logrho", "bh1", "bh2"):
            object.__setattr__(self, "solver_type", "midpoint")
        if self.solver_order > 3:
            raise ValueError(f"scheduler_config.json: solver_order must be 1, 2 or 3, got {self.solver_order}")
        if self.algorithm_type in ("dpmsolver", "sde-dpmsolver"):
            self._unsupported(
                "algorithm_type", "dpmsolver++",
                "diffusers deprecates the noise-prediction solvers; dpmsolver++ is the one people use",
            )
        self._one_of("algorithm_type", ("dpmsolver++", "sde-dpmsolver++"))
        self._one_of("solver_type", ("midpoint", "heun"))
        self._bool("euler_at_final", "use_lu_lambdas")
        self._number("lambda_min_clipped")
        # diffusers only acts on the learned types (it drops channels); a DDPM folder's "fixed_small" is a no-op
        if self.variance_type in ("learned", "learned_range"):
            self._unsupported("variance_type", None, "learned variances need a UNet with 2x output channels")
        if self.use_lu_lambdas and (self.use_karras_sigmas or self.use_exponential_sigmas):
            raise ValueError("scheduler_config.json: use_lu_lambdas cannot be combined with other sigma spacings")


def dpm_name(config: DPMSolverConfig) -> str:
    """The short name for a DPM-Solver++ config: ``dpm++2m``, ``dpm++2m-karras``, ``dpm++2m-sde-karras`` (the
    solver order and the other spacings show up as ``dpm++3m``, ``dpm++2m-sde``, ``-exponential``...)."""
    name = f"dpm++{config.solver_order}m"
    if config.algorithm_type == "sde-dpmsolver++":
        name += "-sde"
    if config.use_karras_sigmas:
        name += "-karras"
    elif config.use_exponential_sigmas:
        name += "-exponential"
    elif config.use_lu_lambdas:
        name += "-lu"
    return name


class MultistepScheduler(IndexedScheduler):
    """State shared by the multistep solvers: the (int64) timesteps, their sigmas, the history of predictions."""

    config: MultistepConfig

    def __init__(self, config: Any, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod = zero_snr_alphas_cumprod(self.alphas_cumprod)
        self.sigmas: NDArray[np.float32] = np.zeros(0, dtype=np.float32)

    def _reset(self) -> None:
        super()._reset()
        self.model_outputs: list[NDArray[Any] | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def add_noise(
        self, original: NDArray[np.floating], noise: NDArray[np.floating], timesteps: Any
    ) -> NDArray[np.floating]:
        """``alpha_t x_0 + sigma_t noise`` at the VE noise level ``add_noise`` of sigma schedulers finds."""
        original = np.asarray(original)
        alpha_t, sigma_t = vp_alpha_sigma(self._sigmas_at(timesteps, original))
        return (alpha_t * original + sigma_t * noise).astype(original.dtype, copy=False)

    def _push(self, x0: NDArray[Any]) -> None:
        self.model_outputs = self.model_outputs[1:] + [x0]

    def _levels(self, i: int) -> tuple[np.floating, np.floating, np.floating]:
        """``(alpha_t, sigma_t, lambda)`` at ``self.sigmas[i]``, float32 like diffusers."""
        alpha_t, sigma_t = vp_alpha_sigma(self.sigmas[i])
        return alpha_t, sigma_t, half_log_snr(alpha_t, sigma_t)

    def _x0(self, model_output: NDArray[Any], sample: NDArray[Any], i: int) -> NDArray[Any]:
        alpha_t, sigma_t, _ = self._levels(i)
        x0 = data_prediction(self.config.prediction_type, model_output, sample, alpha_t, sigma_t)
        return self.config.threshold(x0)


class DPMSolverScheduler(MultistepScheduler):
    """DPM-Solver++ multistep: one UNet call per step; first order on the first step, second (or third) order
    after, with diffusers' lower-order final steps.

    Behaviours of diffusers reproduced on purpose: ``linspace``/``leading`` space ``n + 1`` points and drop 0;
    Karras sigmas span the whole training range (``sigma(0)`` to ``sigma(T-1)``) and their timesteps are rounded
    to integers (except for ``squaredcos_cap_v2``); the last step is first order when the final sigma is 0, and
    the last two are lowered when fewer than 15 steps; ``sde-dpmsolver++`` draws fresh noise on every step.
    """

    name = "dpm++2m"
    diffusers_class = "DPMSolverMultistepScheduler"
    config_class = DPMSolverConfig
    config: DPMSolverConfig

    def __init__(self, config: Any, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.name = dpm_name(self.config)
        self.stochastic = self.config.algorithm_type == "sde-dpmsolver++"

    def _make_timesteps(self, n: int) -> NDArray[np.int64]:
        c = self.config
        train = sigmas_from_alphas_cumprod(self.alphas_cumprod)  # (T,) float32
        log_sigmas = np.log(train)
        round_t = c.beta_schedule != "squaredcos_cap_v2"
        if c.use_karras_sigmas or c.use_exponential_sigmas:
            make = karras_sigmas if c.use_karras_sigmas else exponential_sigmas
            sigmas = make(train[0].item(), train[-1].item(), n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if c.use_karras_sigmas and round_t:
                timesteps = timesteps.round()
        elif c.use_lu_lambdas:
            lambdas = np.flip(log_sigmas)
            ramp = np.linspace(0, 1, n)
            sigmas = np.exp(lambdas[0].item() + ramp * (lambdas[-1].item() - lambdas[0].item()))
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if round_t:
                timesteps = timesteps.round()
        else:
            alpha_t = np.sqrt(self.alphas_cumprod)
            lambda_t = half_log_snr(alpha_t, np.sqrt(1 - self.alphas_cumprod))
            clipped = int(np.searchsorted(np.flip(lambda_t), c.lambda_min_clipped))
            last = c.num_train_timesteps - clipped
            timesteps = multistep_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset, last)
            sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        sigma_last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        sigma_last = sigma_last if c.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(timesteps)
        return timesteps

    def _step(
        self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: np.random.Generator | None
    ) -> NDArray[Any]:
        # a step of zero length (final_sigmas_type 'sigma_min' after Karras sigmas) gives r0 = h_0 / 0 = inf
        # whose inverse multiplies the history, as in diffusers: keep NumPy quiet about it
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._dpm_step(model_output, t, sample, rng)

    def _dpm_step(
        self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: np.random.Generator | None
    ) -> NDArray[Any]:
        c = self.config
        i = self._index(t)
        n = len(self.timesteps)
        short = c.lower_order_final and n < 15
        lower_final = i == n - 1 and (c.euler_at_final or short or c.final_sigmas_type == "zero")
        lower_second = i == n - 2 and short
        self._push(self._x0(model_output, sample, i))
        sample = sample.astype(np.float32, copy=False)
        noise = self._noise(rng, sample) if (self.stochastic and rng is not None) else None
        sde = self.stochastic
        levels = [self._levels(j) for j in (i - 2, i - 1, i, i + 1)]  # (s2, s1, s0, t); negative j unused
        m = self.model_outputs
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_final:
            prev = dpmpp_first_order(sample, m[-1], levels[2], levels[3], sde, noise)
        elif c.solver_order == 2 or self.lower_order_nums < 2 or lower_second:
            prev = dpmpp_second_order(sample, m[-1], m[-2], levels[1], levels[2], levels[3], c.solver_type, sde, noise)
        else:
            prev = dpmpp_third_order(sample, (m[-1], m[-2], m[-3]), *levels, sde, noise)  # type: ignore[arg-type]
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index = i + 1
        return prev.astype(model_output.dtype, copy=False)
