"""`latentrt serve`: an HTTP server for OpenAI's Images API and AUTOMATIC1111's /sdapi/v1 (the `serve` extra:
FastAPI and uvicorn), and a Ray Serve deployment of the same app for many replicas (the `ray` extra)."""

from __future__ import annotations

import ipaddress

from .app import ServeOptions, create_app

__all__ = ["ServeOptions", "create_app", "run_server", "is_loopback"]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_server(options: ServeOptions, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; then new requests get 503 (or a refused connection) and the running ones finish."""
    import uvicorn

    app = create_app(options)
    state = app.state.latentrt

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # refuse new work at once; uvicorn waits for the running requests
            state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=600,
                            limit_concurrency=options.max_queue + 64, timeout_keep_alive=5)
    Server(config).run()
