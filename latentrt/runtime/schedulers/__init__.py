"""NumPy schedulers that match diffusers' step for step, built from a folder's ``scheduler_config.json``.

Usage (the loop is diffusers')::

    sched = create_scheduler("euler", config)  # or None: the folder's own scheduler (config["_class_name"])
    sched.set_timesteps(20)
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(sched.init_noise_sigma)
    for t in sched.timesteps:  # one UNet call per entry
        eps = unet(sched.scale_model_input(x, t), model_timestep(t, graph_dtype, (batch,)))
        x = sched.step(eps, t, x, rng)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Scheduler, ScheduleConfig
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpmsolver import DPMSolverConfig, DPMSolverScheduler, dpm_name
from .euler import EulerAncestralScheduler, EulerScheduler
from .heun import HeunScheduler
from .lcm import LCMScheduler
from .lms import LMSScheduler
from .pndm import PNDMScheduler
from .timesteps import model_timestep
from .unipc import UniPCScheduler

__all__ = ["Scheduler", "ScheduleConfig", "available_schedulers", "create_scheduler", "model_timestep"]


class _Entry:
    """A short name: the class that runs it, the config keys the name implies, and the paper-ish facts."""

    def __init__(self, cls: type[Scheduler], overrides: Mapping[str, Any] | None = None) -> None:
        self.cls = cls
        self.overrides = dict(overrides or {})


_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_exponential_sigmas": False, "use_lu_lambdas": False}

_NAMES: dict[str, _Entry] = {
    "ddim": _Entry(DDIMScheduler),
    "ddpm": _Entry(DDPMScheduler),
    "pndm": _Entry(PNDMScheduler),
    "lms": _Entry(LMSScheduler),
    "euler": _Entry(EulerScheduler),
    "euler-a": _Entry(EulerAncestralScheduler),
    "heun": _Entry(HeunScheduler),
    "dpm++2m": _Entry(DPMSolverScheduler, {**_DPM_2M, "use_karras_sigmas": False}),
    "dpm++2m-karras": _Entry(DPMSolverScheduler, {**_DPM_2M, "use_karras_sigmas": True}),
    "dpm++2m-sde-karras": _Entry(
        DPMSolverScheduler, {**_DPM_2M, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}
    ),
    "unipc": _Entry(UniPCScheduler),
    "lcm": _Entry(LCMScheduler),
}

# diffusers class name (lower case) -> short name, or a function of the config for classes behind several names
_CLASS_ALIASES: dict[str, str] = {
    "ddimscheduler": "ddim",
    "ddpmscheduler": "ddpm",
    "pndmscheduler": "pndm",
    "lmsdiscretescheduler": "lms",
    "eulerdiscretescheduler": "euler",
    "eulerancestraldiscretescheduler": "euler-a",
    "heundiscretescheduler": "heun",
    "dpmsolvermultistepscheduler": "dpm++2m",  # the config as it is: named by dpm_name()
    "unipcmultistepscheduler": "unipc",
    "lcmscheduler": "lcm",
}


def available_schedulers() -> list[str]:
    """The short names ``create_scheduler`` accepts (diffusers class names are accepted too)."""
    return list(_NAMES)


def _resolve(name: str, config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(short name, config overrides)`` for a short name or a diffusers class name (case-insensitive)."""
    key = name.strip().lower()
    if key in _NAMES:
        return key, _NAMES[key].overrides
    alias = _CLASS_ALIASES.get(key)
    if alias is None:
        raise ValueError(
            f"unknown scheduler {name!r}; available: {', '.join(available_schedulers())} "
            "(or their diffusers class names)"
        )
    return alias, {}  # a class name runs the config as it is, with no overrides


def create_scheduler(name: str | None, config: Mapping[str, Any]) -> Scheduler:
    """The scheduler ``name`` built from ``config`` (the dict of a folder's ``scheduler_config.json``).

    ``name=None`` means the folder's own scheduler, from ``config["_class_name"]``. Another name is built from
    the same config the way diffusers' ``XScheduler.from_config(pipe.scheduler.config)`` does: keys the chosen
    scheduler does not read are ignored; a value of a key it reads but cannot honour raises ``ValueError``.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be the dict of scheduler_config.json, got {type(config).__name__}")
    if name is None:
        class_name = config.get("_class_name")
        if not isinstance(class_name, str) or class_name.strip().lower() not in _CLASS_ALIASES:
            raise ValueError(
                f"scheduler_config.json names scheduler class {class_name!r}, which latentrt does not have; "
                f"pick one of {', '.join(available_schedulers())}"
            )
        name = class_name
    short, overrides = _resolve(name, config)
    scheduler = _NAMES[short].cls(config, **overrides)
    if not isinstance(scheduler.config, DPMSolverConfig):
        scheduler.name = short
    else:  # one class behind several names: named by what the config runs (dpm++2m-karras, dpm++3m-sde, ...)
        scheduler.name = dpm_name(scheduler.config)
    return scheduler
