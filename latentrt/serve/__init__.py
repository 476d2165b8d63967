"""`latentrt serve`: an HTTP server for OpenAI's Images API and AUTOMATIC1111's /sdapi/v1 (the `serve` extra:
FastAPI and uvicorn), and a Ray Serve deployment of the same app for many replicas (the `ray` extra)."""

from __future__ import annotations

import ipaddress

from .app import ServeOptions, create_app
from .state import ServerState

__all__ = ["ServeOptions", "create_app", "run_server", "is_loopback", "server_config"]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def guarded_protocol(state: ServerState, base: type) -> type:
    """uvicorn's HTTP protocol (`base`) with the connection guard the ASGI app cannot see, as it runs only once a
    request's headers are in: a connection that has not sent a whole request head within header_timeout_s (from
    its opening or its previous answer) is closed, and past max_connections connections waiting for a request
    the oldest of them is closed, so slow or idle sockets cannot lock others out (nor hold file descriptors)."""
    options = state.options
    waiting: dict = {}  # connections without a request in progress, oldest first

    class GuardedProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            app = self.app

            async def request_started(scope, receive, send):  # the head is in: no header timeout now
                self._stop_waiting()
                return await app(scope, receive, send)

            self.app, self._header_timer = request_started, None
            self._wait()

        def _wait(self) -> None:
            self._stop_waiting()
            waiting[self] = None
            self._header_timer = self.loop.call_later(options.header_timeout_s, self._close, "header_timeout")
            while len(waiting) > options.max_connections:
                next(iter(waiting))._close("connections_evicted")

        def _stop_waiting(self) -> None:
            waiting.pop(self, None)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _close(self, kind: str) -> None:
            self._stop_waiting()
            if not self.transport.is_closing():
                state.metrics.errors.labels(kind).inc()
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._wait()

        def connection_lost(self, exc) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

    return GuardedProtocol


def server_config(app, host: str, port: int, log_level: str = "info", **uvicorn_options):
    """uvicorn's Config for `app` (from create_app) with the connection guard; uvicorn's own concurrency limit is
    off (its 503 is plain text and refuses /health too): the app's guard caps the requests in progress."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    http = guarded_protocol(app.state.latentrt, AutoHTTPProtocol)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=http, limit_concurrency=None,
                          **{"timeout_keep_alive": 5} | uvicorn_options)


def run_server(options: ServeOptions, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; then new requests get 503 (or a refused connection) and the running ones finish."""
    import uvicorn

    app = create_app(options)
    state = app.state.latentrt

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # refuse new work at once; uvicorn waits for the running requests
            state.draining = True
            super().handle_exit(sig, frame)

    config = server_config(app, host, port, log_level, timeout_graceful_shutdown=600)
    Server(config).run()
