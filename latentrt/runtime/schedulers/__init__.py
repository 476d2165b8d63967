"""NumPy schedulers that match diffusers' step for step, built from a folder's ``scheduler_config.json``.

>>> sched = create_scheduler("euler", config)      # or None: the folder's own (config["_class_name"])
>>> sched.set_timesteps(20)
>>> x = rng.standard_normal(shape, dtype=np.float32) * sched.init_noise_sigma
>>> for t in sched.timesteps:                        # one UNet call per entry
...     eps = unet(sched.scale_model_input(x, t), t)
...     x = sched.step(eps, t, x, rng)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from .base import Scheduler, ScheduleConfig
from .ddim import DDIMScheduler
from .euler import EulerScheduler
from .pndm import PNDMScheduler

__all__ = ["Scheduler", "ScheduleConfig", "available_schedulers", "create_scheduler"]


class _Entry:
    """A short name: the class that runs it, the config keys the name implies, and the paper-ish facts."""

    def __init__(self, cls: type[Scheduler], overrides: Mapping[str, Any] | None = None) -> None:
        self.cls = cls
        self.overrides = dict(overrides or {})


_NAMES: dict[str, _Entry] = {
    "ddim": _Entry(DDIMScheduler),
    "pndm": _Entry(PNDMScheduler),
    "euler": _Entry(EulerScheduler),
}

# diffusers class name (lower case) -> short name, or a function of the config for classes behind several names
_CLASS_ALIASES: dict[str, str | Callable[[Mapping[str, Any]], str]] = {
    "ddimscheduler": "ddim",
    "pndmscheduler": "pndm",
    "eulerdiscretescheduler": "euler",
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
    # a class name runs the config as it is, with no overrides
    return (alias(config) if callable(alias) else alias), {}


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
    scheduler.name = short
    return scheduler
