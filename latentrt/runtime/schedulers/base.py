"""What every scheduler shares: its typed config, the training noise schedule, and the call checks.

The classes only hold state; the math is in :mod:`.betas`, :mod:`.sigmas`, :mod:`.timesteps` and in the small
pure functions at the top of each family's module.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from .betas import BETA_SCHEDULES, alphas_cumprod, make_betas
from .timesteps import TIMESTEP_SPACINGS

logger = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

C = TypeVar("C", bound="ScheduleConfig")


def _fail(key: str, value: Any, expected: str, scheduler: str) -> ValueError:
    return ValueError(f"scheduler_config.json: {key} must be {expected} for the {scheduler} scheduler, got {value!r}")


@dataclass(frozen=True)
class ScheduleConfig:
    """The keys of ``scheduler_config.json`` that a scheduler reads, with diffusers' defaults for its class.

    Each subclass declares exactly the ``__init__`` arguments of its diffusers class, with the same defaults, so a
    key is either honoured or, for a value latentrt cannot honour, rejected in ``validate`` (nothing is silently
    ignored). Keys of other classes (``skip_prk_steps`` given to Euler) and private keys (``_class_name``,
    ``_diffusers_version``) are ignored, as diffusers' ``from_config`` ignores them.
    """

    scheduler: ClassVar[str] = "?"
    prediction_types: ClassVar[tuple[str, ...]] = PREDICTION_TYPES
    beta_schedules: ClassVar[tuple[str, ...]] = BETA_SCHEDULES

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    @classmethod
    def from_dict(cls: type[C], config: Mapping[str, Any], **overrides: Any) -> C:
        """Fill the dataclass from a config dict, ignoring keys this scheduler does not read; then validate."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        ignored = sorted(k for k in config if k not in names and not k.startswith("_"))
        if ignored:
            logger.debug("%s scheduler ignores config keys of other schedulers: %s", cls.scheduler, ignored)
        kwargs.update(overrides)
        if kwargs.get("trained_betas") is not None:
            kwargs["trained_betas"] = tuple(float(b) for b in kwargs["trained_betas"])
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}  # frozen: lists as tuples
        return cls(**kwargs)

    def __post_init__(self) -> None:
        self.validate()

    # --- validation helpers -------------------------------------------------------------------------------
    def _one_of(self, key: str, allowed: Sequence[Any]) -> None:
        value = getattr(self, key)
        if value not in allowed:
            raise _fail(key, value, "one of " + ", ".join(repr(a) for a in allowed), self.scheduler)

    def _int(self, key: str, minimum: int) -> None:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(key, value, f"an integer >= {minimum}", self.scheduler)

    def _bool(self, *keys: str) -> None:
        for key in keys:
            if not isinstance(getattr(self, key), bool):
                raise _fail(key, getattr(self, key), "true or false", self.scheduler)

    def _number(self, key: str, optional: bool = False) -> None:
        value = getattr(self, key)
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(key, value, "a number" + (" or null" if optional else ""), self.scheduler)

    def _unsupported(self, key: str, default: Any, why: str) -> None:
        value = getattr(self, key)
        if value != default:
            raise ValueError(
                f"scheduler_config.json: {key}={value!r} is not supported by latentrt's {self.scheduler} scheduler "
                f"({why}); set it to {default!r} or choose another scheduler"
            )

    def validate(self) -> None:
        self._int("num_train_timesteps", 1)
        self._number("beta_start")
        self._number("beta_end")
        self._one_of("beta_schedule", self.beta_schedules)
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise _fail(
                "trained_betas", f"{len(self.trained_betas)} values",
                f"num_train_timesteps={self.num_train_timesteps} values", self.scheduler,
            )
        self._one_of("prediction_type", self.prediction_types)
        self._one_of("timestep_spacing", TIMESTEP_SPACINGS)
        self._int("steps_offset", 0)


def as_scalar(t: Any) -> float:
    """A timestep as given by the caller (Python or NumPy scalar, 0-d or 1-element array) as a Python number."""
    arr = np.asarray(t)
    if arr.size != 1:
        raise ValueError(f"timestep must be a single value, got an array of shape {arr.shape}")
    return arr.reshape(()).item()


def per_sample(values: NDArray[Any], ndim: int) -> NDArray[Any]:
    """One value per sample (or one for all) shaped ``(batch, 1, ...)`` to broadcast over an ``ndim`` sample."""
    return np.asarray(values).reshape(-1, *(1,) * (ndim - 1))


class Scheduler:
    """Base class: holds the config, the training schedule and the state of one sampling run.

    The pipeline calls ``set_timesteps(n)``, then for each ``t`` in ``timesteps``:
    ``x_in = scale_model_input(x, t)``, ``eps = unet(x_in, t)``, ``x = step(eps, t, x, rng)``.
    """

    name: str = ""
    """The short name (``euler``, ``dpm++2m-karras``): what the user types and what goes into PNG metadata."""
    diffusers_class: ClassVar[str]
    config_class: ClassVar[type[ScheduleConfig]] = ScheduleConfig
    order: ClassVar[int] = 1
    """UNet calls per step (informational; ``timesteps`` already holds one entry per UNet call)."""
    stochastic: bool = False
    """True when ``step`` draws noise from the ``rng`` it is given."""
    timestep_dtype: ClassVar[type] = np.int64
    """The dtype of ``timesteps``, as diffusers has it (int64 or float32)."""

    def __init__(self, config: Mapping[str, Any] | ScheduleConfig, **overrides: Any) -> None:
        if isinstance(config, ScheduleConfig):
            config = dataclasses.asdict(config)
        self.config = self.config_class.from_dict(config, **overrides)
        c = self.config
        self.betas = make_betas(
            c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule, c.trained_betas,
            getattr(c, "rescale_betas_zero_snr", False),
        )  # (T,) float32
        self.alphas_cumprod = alphas_cumprod(self.betas)  # (T,) float32
        self.num_inference_steps: int | None = None
        self._timesteps: NDArray[Any] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, {self.config})"

    # --- the API the pipeline uses ------------------------------------------------------------------------
    @property
    def timesteps(self) -> NDArray[Any]:
        """One entry per UNet call, in calling order."""
        self._check_ready()
        return self._timesteps  # type: ignore[return-value]

    @property
    def init_noise_sigma(self) -> float:
        """The standard deviation of the initial noise: the pipeline multiplies unit Gaussian noise by it."""
        return 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        n = int(num_inference_steps)
        if n < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {n}")
        if n > self.config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be at most num_train_timesteps={self.config.num_train_timesteps} "
                f"(the model was trained on that many noise levels), got {n}"
            )
        self.num_inference_steps = n
        self._timesteps = np.asarray(self._make_timesteps(n)).astype(self.timestep_dtype)
        self._reset()

    def scale_model_input(self, sample: NDArray[np.floating], t: Any) -> NDArray[np.floating]:
        """The UNet input for ``sample`` at ``t`` (identity unless the scheduler works in sigma space)."""
        self._check_ready()
        return sample

    def step(
        self,
        model_output: NDArray[np.floating],
        t: Any,
        sample: NDArray[np.floating],
        rng: np.random.Generator | None = None,
    ) -> NDArray[np.floating]:
        """One sampler update from ``sample`` at ``t`` to the previous (less noisy) sample, same dtype as ``sample``."""
        self._check_ready()
        if self.stochastic:
            self._check_rng(rng)
        sample = np.asarray(sample)
        prev = self._step(np.asarray(model_output), t, sample, rng)
        return prev.astype(sample.dtype, copy=False)

    def add_noise(
        self, original: NDArray[np.floating], noise: NDArray[np.floating], timesteps: Any
    ) -> NDArray[np.floating]:
        """Forward process ``q(x_t | x_0)`` (Ho et al. 2020, eq. 4): ``sqrt(a_t) x_0 + sqrt(1 - a_t) noise``.

        ``timesteps``: one training timestep for the whole batch, or one per sample (shape ``(batch,)``), as in
        diffusers' ``DDPMScheduler.add_noise``; computed in ``original``'s dtype. Needs no ``set_timesteps``.
        """
        original = np.asarray(original)
        t = np.asarray(timesteps).astype(np.int64)
        a = per_sample(self.alphas_cumprod.astype(original.dtype)[t], original.ndim)
        return (a**0.5 * original + (1 - a) ** 0.5 * noise).astype(original.dtype, copy=False)

    # --- for subclasses -----------------------------------------------------------------------------------
    def _make_timesteps(self, n: int) -> NDArray[Any]:
        raise NotImplementedError

    def _reset(self) -> None:
        """Clear the state of a previous run (called by ``set_timesteps``)."""

    def _step(
        self, model_output: NDArray[Any], t: Any, sample: NDArray[Any], rng: np.random.Generator | None
    ) -> NDArray[Any]:
        raise NotImplementedError

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise RuntimeError(f"{self.name} scheduler: call set_timesteps(num_inference_steps) before sampling")

    def _check_rng(self, rng: np.random.Generator | None) -> None:
        if not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"the {self.name} scheduler is stochastic: step() needs an np.random.Generator as rng "
                f"(for example np.random.default_rng(seed)), got {type(rng).__name__}"
            )

    @staticmethod
    def _noise(rng: np.random.Generator, like: NDArray[np.floating]) -> NDArray[np.floating]:
        """Unit Gaussian noise shaped like ``like``: float32 draws, whatever the sample's dtype."""
        return rng.standard_normal(like.shape, dtype=np.float32).astype(like.dtype, copy=False)


class IndexedScheduler(Scheduler):
    """A scheduler that walks an array (sigmas, solver history) by position, like diffusers' ``step_index``.

    The position is ``set_begin_index``'s, or else found from the first timestep it is called with; it advances
    by one per ``step``. A run that starts at ``timesteps[0]`` starts at position 0; a run started mid-schedule
    lands on the second match where a timestep appears twice, as in diffusers. (diffusers applies the
    second-match rule to the first entry too, which makes it skip a step and then fail with an IndexError when
    rounded Karras timesteps start with a repeated value; latentrt does not copy that.)
    """

    def _reset(self) -> None:
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at ``timesteps[begin_index]`` (diffusers' img2img passes ``t_start * order``).

        Call after ``set_timesteps`` (which clears it). The first ``step`` then takes this position instead of
        looking its timestep up, and ``add_noise`` uses this position's noise level (the current step's once the
        run has started), as in diffusers.
        """
        self._check_ready()
        n = len(self.timesteps)
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or not 0 <= begin_index < n:
            raise ValueError(f"{self.name} scheduler: begin_index must be an integer in [0, {n}), got {begin_index!r}")
        self._begin_index = int(begin_index)

    def _index(self, t: Any) -> int:
        if self._step_index is None:
            self._step_index = self._lookup(t) if self._begin_index is None else self._begin_index
        return self._step_index

    def _noise_indices(self, timesteps: Any) -> NDArray[np.int64]:
        """Positions of the noise levels ``add_noise`` uses, one per timestep given (diffusers' rule).

        Without ``set_begin_index`` each timestep is looked up; with it, every sample gets the current step's
        position, or ``begin_index`` before the first step.
        """
        self._check_ready()
        ts = np.asarray(timesteps).reshape(-1)
        if self._begin_index is None:
            return np.array([self._lookup(t) for t in ts], dtype=np.int64)
        i = self._begin_index if self._step_index is None else self._step_index
        return np.full(len(ts), i, dtype=np.int64)

    def _sigmas_at(self, timesteps: Any, like: NDArray[Any]) -> NDArray[Any]:
        """The VE noise levels (``self.sigmas``) of ``timesteps``, per sample and in ``like``'s dtype."""
        return per_sample(self.sigmas.astype(like.dtype)[self._noise_indices(timesteps)], like.ndim)

    def _lookup(self, t: Any) -> int:
        value = as_scalar(t)
        if value == self.timesteps[0]:
            return 0
        matches = np.flatnonzero(self.timesteps == value)
        if len(matches) == 0:
            raise ValueError(f"{self.name} scheduler: timestep {t!r} is not one of scheduler.timesteps")
        return int(matches[1] if len(matches) > 1 else matches[0])


class SigmaScheduler(IndexedScheduler):
    """The k-diffusion family (Euler, Euler ancestral, Heun, LMS): the sample lives in sigma space.

    Subclasses fill ``self.sigmas`` (float32, one entry per UNet call plus the final one) in ``_make_timesteps``.
    ``init_noise_sigma`` and the input scaling ``x / sqrt(sigma^2 + 1)`` follow Karras et al. 2022 (Table 1, VP).
    """

    timestep_dtype = np.float32

    def __init__(self, config: Mapping[str, Any] | ScheduleConfig, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.sigmas: NDArray[np.float32] = np.zeros(0, dtype=np.float32)

    @property
    def init_noise_sigma(self) -> float:
        self._check_ready()
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(max_sigma)
        # diffusers' choice for "leading": the DDPM-sample scale of the first noise level (kept on purpose)
        return float((max_sigma**2 + 1) ** 0.5)

    def scale_model_input(self, sample: NDArray[np.floating], t: Any) -> NDArray[np.floating]:
        self._check_ready()
        sigma = self.sigmas[self._index(t)]
        return (sample / ((sigma**2 + 1) ** 0.5)).astype(sample.dtype, copy=False)

    def add_noise(
        self, original: NDArray[np.floating], noise: NDArray[np.floating], timesteps: Any
    ) -> NDArray[np.floating]:
        """``x_0 + sigma_t * noise``, ``sigma_t`` found from ``timesteps`` as ``_noise_indices`` says."""
        original = np.asarray(original)
        return (original + noise * self._sigmas_at(timesteps, original)).astype(original.dtype, copy=False)
