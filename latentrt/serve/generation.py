"""Generation requests, shared by both APIs: seeds, the one check before queueing, the queued run awaited."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import numpy as np
from fastapi import Request
from PIL import Image

from latentrt.runtime.pipeline import ImageTooLargeError, PipelineResult, largest_side

from .inputs import Upload
from .jobs import Cancelled, Job, QueueFull, ShuttingDown
from .sizes import check_allowed_size
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


def admit(state: ServerState, job: Job) -> None:
    """The one admission check, before anything is allocated or queued (run off the event loop): the request's cost
    (output pixels x images x steps) against this server's limits, each uploaded image's size from its header
    (--max-input-pixels) and the output's size against --max-pixels and the memory guard, all before any image is
    decoded; then the images are decoded and the pipeline's own check (`check_job`) is made. The number of images
    was bounded when the seeds were made (--max-images)."""
    options, pipe, r = state.options, state.pipe, job.request
    try:
        steps = pipe.folder.defaults.steps if r.steps is None else r.steps
        if isinstance(steps, int) and steps > options.max_steps:
            raise ApiError(422, "too_many_steps", f"steps must be at most {options.max_steps} on this server "
                           f"(--max-steps), got {steps}: ask for fewer steps")
        uploads = {name: value for name in ("image", "mask_image") if isinstance(value := getattr(r, name), Upload)}
        headers = {name: upload.open(options.max_input_pixels) for name, upload in uploads.items()}  # nothing decoded
        controls = getattr(r, "control_image", None)  # ControlNet: a list, one image per unit
        controls = list(controls) if isinstance(controls, (list, tuple)) else []
        for upload in controls:
            if isinstance(upload, Upload):
                upload.open(options.max_input_pixels)
        source = headers.get("image", r.image)
        if not isinstance(source, Image.Image) and controls:  # ControlNet text to image: the first control image's
            first = controls[0]
            source = first.open(options.max_input_pixels) if isinstance(first, Upload) else first
        if isinstance(source, Image.Image):  # the output's size: as asked, else the image's (from its header)
            height, width = pipe.image_size(source, r.height, r.width)
        else:
            height, width = pipe.check_size(r.height, r.width)
        check_allowed_size(options.sizes, width, height)  # --sizes: the compiled sizes only
        limit = options.max_pixels
        if limit is not None and height * width > limit:
            side = largest_side(height, width, pipe.folder.size_multiple, lambda h, w: h * w <= limit)
            raise ApiError(422, "too_large", f"{width}x{height} is {height * width:,} pixels, over this server's "
                           f"--max-pixels={limit:,}: the largest size that fits at this aspect ratio is {side}")
        if uploads or controls:  # the memory guard, still from the header only
            pipe.check_fits(height, width, 1, r.guidance_scale, r.vae)
            decoded = {name: upload.decode(options.max_input_pixels) for name, upload in uploads.items()}
            if controls:  # each decoded and passed through its unit's preprocessor (serve/controlnet.py)
                decoded["control_image"] = [c.decode(options.max_input_pixels) if isinstance(c, Upload) else c
                                            for c in controls]
            job.request = dataclasses.replace(r, **decoded)
    except ImageTooLargeError as error:
        raise ApiError(422, "too_large", str(error)) from None
    except ValueError as error:
        raise ApiError(422, "validation", str(error)) from None
    check_job(state, job)


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
    """Admit the job (`admit`), queue it, await it; cancel it if the client goes away or --timeout passes; errors
    become ApiError."""
    state = server_state(request)
    queue = state.ready()
    timeout = state.options.timeout_s
    deadline = time.monotonic() + timeout if timeout else None
    await asyncio.to_thread(admit, state, job)
    start = time.perf_counter()
    try:
        future = asyncio.wrap_future(queue.submit(job))
    except QueueFull as error:
        raise ApiError(429, "queue_full", str(error), {"Retry-After": str(error.retry_after)}) from None
    except ShuttingDown as error:
        raise ApiError(503, "shutting_down", str(error)) from None
    def abandon() -> None:  # dropped if queued (its slot free now), stopped at its next step if running
        queue.cancel(job)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # its outcome is nobody's now

    try:
        while True:
            left = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            done, _ = await asyncio.wait({future}, timeout=left)
            if done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                abandon()
                raise ApiError(504, "timeout", f"the request did not finish within {timeout:g} s (this server's "
                               "--timeout): ask for fewer steps, images or pixels, or retry when the server is less busy")
            if await request.is_disconnected():
                abandon()
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
