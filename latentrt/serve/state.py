"""What the server knows: its options, its state (the pipeline, the queue), and the error every route answers with."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from fastapi import Request

from latentrt.runtime.pipeline import Pipeline

from .jobs import JobQueue
from .metrics import Metrics


@dataclass
class ServeOptions:
    """What `latentrt serve` is given. model: a folder (None: the shipped model)."""

    model: str | None = None
    provider: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_queue: int = 64  # requests waiting past this get 429
    max_batch: int = 0  # images per UNet call when compatible requests are batched (1: off; 0: auto, measured)
    max_images: int = 8  # n / batch_size x n_iter per request
    max_body_bytes: int = 32 * 2**20
    body_timeout_s: float = 30.0  # a client that has not sent its body by then gets 408
    max_pixels: int | None = 1024 * 1024  # output pixels per image (SDXL's 1024x1024; the memory guard applies anyway)
    max_input_pixels: int | None = 4096 * 4096  # an uploaded image's decoded size, read from its header: 413 past it
    max_steps: int = 150  # steps per request (A1111's slider's maximum)
    timeout_s: float | None = 600.0  # a request not answered by then gets 504; its job is dropped or stops at its next step
    api_key: str | None = None
    cache_dir: str | None = None
    io_binding: bool = False  # ONNX Runtime's IO binding for the UNet (Pipeline(io_binding=True))
    provider_options: dict[str, str] | None = None  # for the first ONNX Runtime provider
    sizes: tuple[tuple[int, int], ...] | None = None  # (width, height) allow-list, compiled at start; None: any size
    max_compiled_shapes: int | None = None  # OpenVINO: on-demand compiled shapes kept per network (None: the default, 8)
    max_connections: int = 128  # requests in progress at once; past this 503 + Retry-After (/health still answers)
    header_timeout_s: float = 10.0  # a connection that has not sent a request's headers by then is closed
    vae: str = "full"  # what requests decode with unless they send `vae`: "full" or "tiny" (Pipeline(vae=...))


class ApiError(Exception):
    """An answer other than 200: the status, a kind (the metrics' label) and a message for the client."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


REPLICA = secrets.token_hex(6)  # this process in X-Latentrt-Replica and /health: random, no host name or PID


@dataclass
class ServerState:
    options: ServeOptions
    metrics: Metrics
    pipe: Pipeline | None = None
    queue: JobQueue | None = None
    load_error: str | None = None
    draining: bool = False
    max_batch: int = 1  # what batching was set to (options.max_batch, or measured)
    replica: str = field(default_factory=lambda: REPLICA)
    active: int = 0  # requests in progress (the guard's connection cap)

    def ready(self) -> JobQueue:
        if self.draining:
            raise ApiError(503, "shutting_down", "the server is shutting down and takes no new requests")
        if self.queue is None:
            why = f"the model failed to load: {self.load_error}" if self.load_error else "the model is still loading"
            raise ApiError(503, "not_ready", f"{why}; GET /health says when it is ready",
                           {"Retry-After": "5"} if not self.load_error else {})
        return self.queue


def server_state(request: Request) -> ServerState:
    return request.app.state.latentrt


def model_name(state: ServerState) -> str:
    return state.pipe.folder.name  # asked after run_job: the model is loaded
