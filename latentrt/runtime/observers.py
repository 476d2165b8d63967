"""Observers: the public way to watch a pipeline work (benchmarks, calibration recorders, call counters, tests).

An observer is a callable that receives an `Event` after each network call and each stage of a generation:

    kind "network": name is the network ("text_encoder", "text_encoder_2", "unet", "unet_shallow", "vae_encoder",
                    "vae_decoder"); inputs are the feeds it got (the generation's conditioning included), outputs
                    what it returned (device OrtValues with io_binding); seconds the call's wall time.
    kind "stage":   name is "text_encoder" (tokenize and encode the prompts), "vae_encode" (the task's image
                    latents), "denoise" (the whole loop) or "vae_decode"; seconds its wall time.
    kind "open":    a network was opened (loaded; compiled where the backend compiles at load) after the pipeline
                    was made: at its first use, per use with low_memory, when LoRAs change; seconds the time it took.

    with pipe.observe(lambda event: print(event.kind, event.name, f"{event.seconds:.3f}")):
        pipe("a red circle")

Observers run on the generating thread, in the order added; one that raises stops the generation with its
exception (a calibration recorder stops after its last wanted call so). They see every call of the pipeline,
also those of other threads' generations.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

NETWORK, STAGE, OPEN = "network", "stage", "open"


@dataclass(frozen=True)
class Event:
    kind: str  # NETWORK, STAGE or OPEN
    name: str
    seconds: float
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)


Observer = Callable[[Event], None]


class Observers:
    """The observers of one pipeline; emitting with none attached costs a clock read."""

    def __init__(self) -> None:
        self._observers: tuple[Observer, ...] = ()
        self._lock = threading.Lock()

    def add(self, observer: Observer) -> None:
        if not callable(observer):
            raise TypeError(f"an observer is a callable taking an Event, got {type(observer).__name__}")
        with self._lock:
            self._observers = (*self._observers, observer)

    def remove(self, observer: Observer) -> None:
        with self._lock:
            observers = list(self._observers)
            observers.remove(observer)
            self._observers = tuple(observers)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def emit(self, event: Event) -> None:
        for observer in self._observers:
            observer(event)

    def network(self, name: str, call: Callable[..., Mapping[str, Any]], feeds: Mapping[str, Any],
                constants: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        """`call(**feeds)`, reported as a network event (its inputs: `constants`, bound elsewhere, and `feeds`)."""
        start = time.perf_counter()
        outputs = call(**feeds)
        if self._observers:
            inputs = {**constants, **feeds} if constants else dict(feeds)
            self.emit(Event(NETWORK, name, time.perf_counter() - start, inputs, outputs))
        return outputs

    @contextmanager
    def stage(self, name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
        """Times the block as stage `name`: into `timings[name]` and as a stage event."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        if timings is not None:
            timings[name] = seconds
        if self._observers:
            self.emit(Event(STAGE, name, seconds))
