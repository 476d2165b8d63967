"""The HTTP app: OpenAI's Images API, AUTOMATIC1111's /sdapi/v1, /health and /metrics around one JobQueue.

`create_app(ServeOptions(...))` returns a FastAPI app whose lifespan loads the model in a thread (GET /health
answers 503 until it is loaded), then serves. Every generation request becomes a `Job`; the handler awaits it
without blocking the event loop and cancels it when the client disconnects.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from latentrt.runtime.pipeline import Pipeline

from .a1111 import router as a1111_router
from .errors import error_response, scrub
from .generation import check_job, run_job
from .jobs import JobQueue
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .openai_api import router as openai_router
from .state import ApiError, ServeOptions, ServerState

logger = logging.getLogger("latentrt.serve")

__all__ = ["ApiError", "ServeOptions", "check_job", "create_app", "run_job"]  # check_job, run_job: for embedding apps


def load_pipeline(options: ServeOptions) -> Pipeline:
    kwargs = dict(provider=options.provider, threads=options.threads, precision=options.precision,
                  max_pixels=options.max_pixels, cache_dir=options.cache_dir, io_binding=options.io_binding,
                  provider_options=options.provider_options, max_compiled_shapes=options.max_compiled_shapes,
                  vae=options.vae)
    if options.model is None:
        return Pipeline.default(**kwargs)
    return Pipeline.from_folder(options.model, **kwargs)


AUTO_BATCH = 8  # --max-batch when batching pays
AUTO_BATCH_GAIN = 0.8  # it pays when a 2-image call costs under 0.8 x two 1-image calls


def auto_batch(pipe: Pipeline) -> int:
    """Measure whether batching pays for this model on this machine: one-step generations at the native size with
    1 and 2 images (best of 5 each): AUTO_BATCH if 2 images cost under AUTO_BATCH_GAIN x twice one image's time,
    else 1 (off). Small models gain (call overheads shared); a model whose one-image step takes over a second is
    compute-bound on a CPU (its cost grows with the batch) and is not measured further: off."""

    def seconds(images: int, tries: int) -> float:
        best = float("inf")
        for _ in range(tries):
            start = time.perf_counter()
            pipe("warm-up", steps=1, seed=0, num_images=images)
            best = min(best, time.perf_counter() - start)
        return best

    one = seconds(1, 1)
    if one > 1.0:
        logger.info("batching: a one-image step takes %.1f s (compute-bound): --max-batch 1", one)
        return 1
    pipe.compile(batch=2)
    one, two = seconds(1, 5), seconds(2, 5)
    chosen = AUTO_BATCH if two < AUTO_BATCH_GAIN * 2 * one else 1
    logger.info("batching: 1 image %.3f s, 2 images %.3f s per call: --max-batch %d", one, two, chosen)
    return chosen


def create_app(options: ServeOptions, pipe: Pipeline | None = None, *, ready_at_startup: bool = False) -> FastAPI:
    """The app; `pipe` serves an already loaded pipeline (tests, embedding) instead of loading options.model.

    The model is loaded and compiled in a thread while the server already answers (/health: 503 until ready);
    `ready_at_startup` finishes that inside the ASGI startup instead, for a host that routes to the app once its
    startup is over (Ray Serve's replicas)."""
    check_api_key(options.api_key)
    state = ServerState(options, Metrics(queue_depth=lambda: state.queue.depth if state.queue else 0))

    def load() -> None:
        try:
            loaded = pipe if pipe is not None else load_pipeline(options)
            # the native size's shapes (and the VAE encoder), so the first request does not pay for them; with
            # batching, every batch size up to --max-batch (OpenVINO compiles per shape: memory is then taken at
            # start, not as batches of new sizes arrive)
            loaded.compile(image="vae_encoder" in loaded.folder.components)
            max_batch = options.max_batch or auto_batch(loaded)
            for batch in range(2, max_batch + 1):
                loaded.compile(batch=batch)
            from .sizes import compile_sizes  # --sizes: every allowed size too, pinned (the rest are refused)

            compile_sizes(loaded, options.sizes, max_batch, image="vae_encoder" in loaded.folder.components)
            state.pipe, state.max_batch = loaded, max_batch
            state.queue = JobQueue(loaded, options.max_queue, max_batch, on_batch=_record_batch)
            logger.info("model %s ready on %s (%s)", loaded.folder.name, loaded.provider, loaded.precision)
        except Exception as error:  # /health reports it; generation requests get 503 with the reason
            state.load_error = scrub(f"{type(error).__name__}: {error}")
            logger.error("the model failed to load: %s", state.load_error)

    def _record_batch(images: int, seconds: float) -> None:
        state.metrics.batch_images.observe(images)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if ready_at_startup:
            await asyncio.to_thread(load)
        else:
            threading.Thread(target=load, name="latentrt-serve-load", daemon=True).start()
        yield
        state.draining = True
        if state.queue is not None:  # uvicorn has let the running requests finish; the worker stops
            await asyncio.to_thread(state.queue.close, 60)
        if state.pipe is not None and pipe is None:
            state.pipe.close()

    app = FastAPI(title="latentrt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.latentrt = state
    app.add_middleware(_Guard, state=state)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        state.metrics.errors.labels(error.kind).inc()
        return error_response(request.url.path, error.status, error.kind, error.message, error.headers)

    @app.exception_handler(HTTPException)  # FastAPI's own 404, 405, 400 (...): in the API's shape too
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = HTTP_KINDS.get(error.status_code, "http_error")
        state.metrics.errors.labels(kind).inc()
        messages = {404: f"{request.method} {request.url.path}: no such route on this server",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        message = messages.get(error.status_code, str(error.detail))
        return error_response(request.url.path, error.status_code, kind, message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            state.metrics.errors.labels("malformed_json").inc()
            return error_response(request.url.path, 400, "malformed_json",
                                  "the request body is not valid JSON: send a JSON object (Content-Type: application/json)")
        state.metrics.errors.labels("validation").inc()
        message = "; ".join(f"{'.'.join(str(x) for x in p['loc'] if x != 'body') or 'body'}: {p['msg']}" for p in problems)
        return error_response(request.url.path, 422, "validation", message)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "shutting_down"}, 503)
        if state.load_error:
            detail = {"error": state.load_error} if authorized(request) else {}
            return JSONResponse({"status": "failed"} | detail, 503)
        if state.queue is None:
            return JSONResponse({"status": "loading"}, 503)
        if not authorized(request):  # with --api-key, the rest is for the key's holders
            return JSONResponse({"status": "ready"})
        folder = state.pipe.folder
        return JSONResponse({"status": "ready", "model": folder.name, "family": state.pipe.family.name,
                             "provider": state.pipe.provider, "precision": state.pipe.precision,
                             "queue": state.queue.depth, "max_batch": state.max_batch, "replica": state.replica})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)  # the schema in the page: a browser cannot send the key for it
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title="latentrt").body.decode()
        spec = json.dumps(app.openapi()).replace("</", "<\\/")
        return HTMLResponse(page.replace("url: '/openapi.json',", f"spec: {spec},"))

    app.include_router(openai_router)
    app.include_router(a1111_router)
    return app


HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def check_api_key(key: str | None) -> None:
    """A key must be visible ASCII: HTTP headers are Latin-1 and clients encode differently (the OpenAI SDK
    cannot send other characters at all), so any other key would be refused or accepted depending on the client."""
    if key is not None and (not key or not all(33 <= ord(c) <= 126 for c in key)):
        raise ValueError("the API key must be printable ASCII without spaces (letters, digits, punctuation), "
                         "for example `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")


def authorized(request: Request) -> bool:
    """Whether the request carried the API key (always, when there is none)."""
    return request.scope.get("latentrt.authorized", True)


# --- the guard: API key, connections, body size and time ----------------------------------------------------
class _Guard:
    """A plain ASGI middleware: checks the API key (all routes but /health), caps the requests in progress (503 with
    Retry-After past max_connections; /health always answers), reads the body whole within its limits (413 past
    max_body_bytes, 408 past body_timeout_s), answers an unexpected exception with a 500 in the API's shape, and
    counts every answer in the metrics. (Headers that never complete are the transport's: `GuardedProtocol`.)"""

    ROUTES = frozenset({"/v1/images/generations", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/samplers",
                        "/sdapi/v1/sd-models", "/controlnet/model_list", "/controlnet/module_list", "/health", "/metrics"})
    # routes whose bodies carry no images: a few text fields of at most 4000 characters fit in far less, and a
    # body refused here is never parsed (A1111's txt2img stays at max_body_bytes: clients send alwayson_scripts
    # with images in it). The OpenAI route carries images only to a model with ControlNets (its `controlnet` field).
    TEXT_BODY_BYTES = {"/v1/images/generations": 256 * 1024}

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in self.ROUTES else "other"

        started = False

        async def counted_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.state.metrics.requests.labels(route, str(message["status"])).inc()
                message = dict(message, headers=[*message.get("headers", []),
                                                 (b"x-latentrt-replica", self.state.replica.encode("latin-1"))])
            await send(message)

        state = self.state
        if path != "/health" and state.active >= state.options.max_connections:
            state.metrics.errors.labels("overloaded").inc()
            return await error_response(path, 503, "overloaded", f"the server has {state.options.max_connections} "
                                        "requests in progress: try again shortly", {"Retry-After": "1"}
                                        )(scope, receive, counted_send)
        state.active += 1
        try:
            await self._serve(scope, receive, counted_send, path)
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), path)
            if started:
                raise
            state.metrics.errors.labels("internal").inc()
            await error_response(path, 500, "internal", "the server failed on this request (its log says why)"
                                 )(scope, receive, counted_send)
        finally:
            state.active -= 1

    async def _serve(self, scope, receive, counted_send, path: str):
        options = self.state.options
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if options.api_key:
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            valid = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), options.api_key.encode())
            scope["latentrt.authorized"] = valid
            if not valid and path != "/health":
                self.state.metrics.errors.labels("unauthorized").inc()
                response = error_response(path, 401, "unauthorized", "missing or invalid API key: send "
                                          "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, counted_send)
        text_only = self.TEXT_BODY_BYTES.get(path, options.max_body_bytes)
        pipe = self.state.pipe
        if pipe is not None and getattr(pipe.folder, "controlnets", None):  # control images in the body
            text_only = options.max_body_bytes
        limit = min(options.max_body_bytes, text_only)
        too_large = f"the request body is larger than {limit} bytes" + (
            " (this route takes text fields only)" if limit < options.max_body_bytes else "")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._refuse(scope, receive, counted_send, 413, "too_large", too_large)
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + options.body_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await self._refuse(scope, receive, counted_send, 408, "slow_client",
                                          f"the request body did not arrive within {options.body_timeout_s:g} s")
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await self._refuse(scope, receive, counted_send, 413, "too_large", too_large)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when the client goes away

        await self.app(scope, replay, counted_send)

    async def _refuse(self, scope, receive, send, status: int, kind: str, message: str):
        self.state.metrics.errors.labels(kind).inc()
        headers = {"Connection": "close"}
        await error_response(scope["path"], status, kind, message, headers)(scope, receive, send)

