"""Error bodies in each API's own shape, with nothing of the machine in them (paths, object addresses)."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse

# a path of two or more parts (POSIX or Windows), not inside a URL; and Python's " at 0x7f..." in object reprs
_PATH = re.compile(r"(?<![\w:/.\\-])(?:[A-Za-z]:\\|/)(?:[^\s'\"/\\:<>]+[/\\])+[^\s'\"/\\:<>,;)]*")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ROUTES = ("/v1/", "/sdapi/")


def scrub(text: str) -> str:
    """`text` without absolute paths (each keeps its last part: a file or folder name) and object addresses."""
    text = _ADDRESS.sub("", text)
    return _PATH.sub(lambda m: m[0] if m[0].startswith(_ROUTES) else re.split(r"[/\\]", m[0].rstrip("/\\"))[-1], text)


def error_response(path: str, status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape under /v1, AUTOMATIC1111's ({error, detail}) elsewhere."""
    message = scrub(message)
    if path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                          "param": None, "code": kind}}
    else:
        body = {"error": kind, "detail": message}
    return JSONResponse(body, status, headers=headers)
