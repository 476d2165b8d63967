"""The server's work queue: bounded, one worker thread that owns the pipeline, compatible requests batched.

The HTTP handlers never run a network: they submit a `Job` and await its future (the event loop stays free). The
worker takes the oldest job and, when batching is on, every queued job that can share its UNet calls (`Job.key`:
same size, steps, guidance, scheduler, text to image with a deterministic scheduler), and runs them as one
pipeline call whose latents are each job's own seeded draws: each job gets the images it would get alone.
A cancelled job (its client went away) leaves the queue at once (`JobQueue.cancel`: its slot is free for the next
request), and a running call whose jobs are all cancelled stops at its next step.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from latentrt.runtime.pipeline import ImageTooLargeError, Pipeline, PipelineResult
from latentrt.runtime.request import Request
from latentrt.runtime.schedulers import create_scheduler

class QueueFull(Exception):
    """More jobs waiting than --max-queue allows; `retry_after` is a guess in whole seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy: {waiting} requests are waiting (--max-queue); retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is draining: running work finishes, new work is refused."""


class Cancelled(Exception):
    """Every job of a running call was cancelled (clients disconnected)."""


@dataclass
class Job:
    """One HTTP request's generation: the pipeline request (its seed unused), the seeds, where its result goes."""

    request: Request
    seeds: list[int]  # one per image: each image is the one its seed gives alone
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def n(self) -> int:
        return len(self.seeds)


class JobQueue:
    """Jobs waiting for the one worker thread, at most `max_queue` of them; `max_batch` images per call."""

    def __init__(self, pipe: Pipeline, max_queue: int = 64, max_batch: int = 1,
                 on_batch: Callable[[int, float], None] | None = None):
        self.pipe = pipe
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        self.on_batch = on_batch  # (images, seconds) after every pipeline call: metrics
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: list[Job] = []  # the jobs of the call the worker is running
        self._closing = False
        self._seconds_per_job = 1.0  # moving average, for Retry-After
        self._stochastic_by_name: dict[str, bool] = {}
        self._worker = threading.Thread(target=self._work, name="latentrt-serve-worker", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Jobs waiting, not counting the ones running."""
        return len(self._waiting)

    def submit(self, job: Job) -> Future:
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            self._drop_cancelled()  # jobs flagged without cancel() hold no slot either
            if len(self._waiting) >= self.max_queue:
                ahead = len(self._waiting) + sum(not j.cancelled.is_set() for j in self._running)  # live jobs only
                raise QueueFull(len(self._waiting), max(1, math.ceil(ahead * self._seconds_per_job)))
            self._waiting.append(job)
            self._cond.notify()
        return job.future

    def cancel(self, job: Job) -> None:
        """The job's client went away: a waiting job leaves the queue now (its future gets `Cancelled`); a running one
        is only flagged (its call stops at the next step if all its jobs are)."""
        job.cancelled.set()
        with self._cond:
            self._drop_cancelled()

    def _drop_cancelled(self) -> None:
        """Remove the cancelled jobs from the waiting ones (the lock held); each future gets `Cancelled`."""
        if not any(j.cancelled.is_set() for j in self._waiting):
            return
        dropped = [j for j in self._waiting if j.cancelled.is_set()]
        self._waiting = collections.deque(j for j in self._waiting if not j.cancelled.is_set())
        for j in dropped:
            if j.future.set_running_or_notify_cancel():
                j.future.set_exception(Cancelled("the client disconnected before its request ran"))

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, let the queued and running ones finish, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout)

    # --- the worker --------------------------------------------------------------------------------------
    def _key(self, job: Job) -> tuple | None:
        """Jobs with equal keys can share one pipeline call; None: the job runs alone (an image task, or a
        scheduler whose step draws noise from the call's generator: a batch would mix the jobs' noise; a ControlNet
        request)."""
        r = job.request
        scheduler = r.scheduler or self.pipe.folder.defaults.scheduler
        if r.image is not None or getattr(r, "control_image", None) is not None or self._stochastic(scheduler):
            return None
        return (r.width, r.height, r.steps, r.guidance_scale, scheduler, r.negative_prompt is None, r.cache_interval,
                r.cache_schedule, r.clip_skip, r.vae)

    def _stochastic(self, scheduler: str) -> bool:
        if scheduler not in self._stochastic_by_name:
            try:
                stochastic = create_scheduler(scheduler, self.pipe.folder.scheduler_config).stochastic
            except ValueError:  # an unknown name runs alone, and its call says what is wrong
                stochastic = True
            self._stochastic_by_name[scheduler] = stochastic
        return self._stochastic_by_name[scheduler]

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._waiting.popleft()
            jobs = [first]
            key = self._key(first) if self.max_batch > 1 else None
            if key is not None:
                images = first.n
                for job in list(self._waiting):
                    if images + job.n > self.max_batch:
                        break
                    if self._key(job) == key:
                        self._waiting.remove(job)
                        jobs.append(job)
                        images += job.n
            self._running = jobs
            return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            live = [job for job in jobs if not job.cancelled.is_set() and job.future.set_running_or_notify_cancel()]
            for job in jobs:
                if job not in live and not job.future.done():
                    job.future.set_exception(Cancelled("the client disconnected before its request ran"))
            start = time.perf_counter()
            try:
                if live:
                    results = self._run(live)
                    for job, result in zip(live, results):
                        job.future.set_result(result)
            except BaseException as error:  # every job of the call gets the error; the worker goes on
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(error)
            finally:
                seconds = time.perf_counter() - start
                if live:
                    self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * seconds / len(live)
                    if self.on_batch is not None:
                        self.on_batch(sum(job.n for job in live), seconds)
                with self._cond:
                    self._running = []

    def _run(self, jobs: list[Job]) -> list[PipelineResult]:
        def stop_when_all_cancelled(done: int, total: int) -> None:
            if all(job.cancelled.is_set() for job in jobs):
                raise Cancelled("every client of this call disconnected")

        first = jobs[0]
        if self._key(first) is None:  # image by image, each from its own seed
            return [_joined([self.pipe.run(dataclasses.replace(first.request, seed=seed), progress=stop_when_all_cancelled)
                             for seed in first.seeds])]
        try:
            return self._together(jobs, stop_when_all_cancelled)
        except ImageTooLargeError:
            if len(jobs) == 1:
                raise
            return [self._together([job], stop_when_all_cancelled)[0] for job in jobs]  # each fits alone: the memory guard said so

    def _together(self, jobs: list[Job], progress: Callable[[int, int], None]) -> list[PipelineResult]:
        """All the jobs' images in one call, each image's latents drawn from its seed as a call of its own draws them."""
        first = jobs[0].request
        images = sum(job.n for job in jobs)
        self.pipe.check(dataclasses.replace(first, num_images=images))  # before the latents are drawn
        shape = self.pipe.latent_shape(first.height, first.width)
        latents = np.concatenate([np.random.default_rng(seed).standard_normal((1, *shape), dtype=np.float32)
                                  for job in jobs for seed in job.seeds])
        prompts = [job.request.prompt for job in jobs for _ in job.seeds]  # `images` of them
        negatives = None if first.negative_prompt is None else [job.request.negative_prompt for job in jobs for _ in job.seeds]
        together = dataclasses.replace(first, prompt=prompts, negative_prompt=negatives, latents=latents, seed=None)
        batch = self.pipe.run(together, progress=progress)
        results, start = [], 0
        for job in jobs:
            part = slice(start, start + job.n)
            start += job.n
            results.append(dataclasses.replace(
                batch,
                images=batch.images[part],
                parameters=[dataclasses.replace(p, seed=seed) for p, seed in zip(batch.parameters[part], job.seeds)],
                latents=batch.latents[part],
                timings=dict(batch.timings, batched_images=len(prompts)) if len(jobs) > 1 else batch.timings,
            ))
        return results


def _joined(results: list[PipelineResult]) -> PipelineResult:
    """Several one-image results as one (the last one's other fields: timings, the control maps, which every image of
    a request shares)."""
    return dataclasses.replace(results[-1], images=[image for r in results for image in r.images],
                               parameters=[p for r in results for p in r.parameters],
                               latents=np.concatenate([r.latents for r in results]))
