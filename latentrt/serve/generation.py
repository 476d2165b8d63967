"""Generation requests, shared by both APIs: seeds, the one check before queueing, the queued run awaited."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import numpy as np
from fastapi import Request

from latentrt.runtime.pipeline import ImageTooLargeError, PipelineResult

from .jobs import Cancelled, Job, QueueFull, ShuttingDown
from .state import ApiError, ServerState, server_state

logger = logging.getLogger("latentrt.serve")

MAX_SEED = 2**32 - 1  # AUTOMATIC1111's seeds are 32-bit; image i of a request gets seed + i


def make_seeds(request: Request, seed: int | None, count: int) -> list[int]:
    """Image i gets seed + i (AUTOMATIC1111's rule); None or -1: a random seed. At most --max-images images."""
    limit = server_state(request).options.max_images
    if not 1 <= count <= limit:
        raise ApiError(422, "validation", f"a request makes 1 to {limit} images (--max-images), asked for {count}")
    if seed is None or seed == -1:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    if not 0 <= seed <= MAX_SEED:
        raise ApiError(422, "validation", f"seed must be in [0, {MAX_SEED}] or -1 (random), got {seed}")
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]


def check_job(state: ServerState, job: Job) -> None:
    """The pipeline's own checks (`Pipeline.check`), made before the job is queued (and batched with others): the
    same messages as the CLI's and the Python API's. Text to image is checked for all its images at once (they may
    share one call); an image task runs image by image."""
    request = job.request if job.request.image is not None else dataclasses.replace(job.request, num_images=job.n)
    try:
        state.pipe.check(request)
    except ImageTooLargeError as error:
        raise ApiError(422, "too_large", str(error)) from None
    except (ValueError, FileNotFoundError) as error:
        raise ApiError(422, "validation", str(error)) from None


async def run_job(request: Request, job: Job, route: str) -> PipelineResult:
    """Queue the job, await it, cancel it if the client goes away; errors become ApiError."""
    state = server_state(request)
    queue = state.ready()
    check_job(state, job)
    start = time.perf_counter()
    try:
        future = asyncio.wrap_future(queue.submit(job))
    except QueueFull as error:
        raise ApiError(429, "queue_full", str(error), {"Retry-After": str(error.retry_after)}) from None
    except ShuttingDown as error:
        raise ApiError(503, "shutting_down", str(error)) from None
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.5)
            if done:
                break
            if await request.is_disconnected():
                queue.cancel(job)  # its queue slot is free now
                future.add_done_callback(lambda f: f.cancelled() or f.exception())  # its outcome is nobody's now
                raise ApiError(499, "cancelled", "the client disconnected")
        result = future.result()
    except ImageTooLargeError as error:
        raise ApiError(422, "too_large", str(error)) from None
    except Cancelled as error:
        raise ApiError(499, "cancelled", str(error)) from None
    except ValueError as error:
        raise ApiError(422, "validation", str(error)) from None
    except FloatingPointError as error:
        raise ApiError(500, "generation", str(error)) from None
    except ApiError:
        raise
    except Exception as error:
        logger.exception("generation failed")
        raise ApiError(500, "internal", f"generation failed: {type(error).__name__}: {error}") from None
    state.metrics.latency.labels(route).observe(time.perf_counter() - start)
    state.metrics.images.inc(len(result.images))
    return result
