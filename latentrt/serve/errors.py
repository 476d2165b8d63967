"""Error bodies in each API's own shape."""

from __future__ import annotations

from fastapi.responses import JSONResponse


def error_response(path: str, status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape under /v1, AUTOMATIC1111's ({error, detail}) elsewhere."""
    if path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                          "param": None, "code": kind}}
    else:
        body = {"error": kind, "detail": message}
    return JSONResponse(body, status, headers=headers)

