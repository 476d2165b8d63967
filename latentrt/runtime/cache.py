"""Where latentrt keeps compiled models (OpenVINO's, opt-in: see `backend.compiled_model_cache`), and how entries are named.

The root is `cache_dir=` / `--cache-dir`, else `$LATENTRT_CACHE`, else `~/.cache/latentrt`. An entry's key
hashes everything that could make it stale: the model files (the manifest's sha256, or path, size and mtime
for folders without one), the backend's version, the compile options and the CPU (model name and
instruction-set flags), so that a stale entry is never found. Writes are atomic (a temporary file renamed
into place), so two processes filling the same entry both succeed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("LATENTRT_CACHE") or Path.home() / ".cache" / "latentrt").expanduser()


@lru_cache(maxsize=1)
def cpu_signature() -> str:
    """The CPU's model name and instruction-set flags (a compiled kernel is only valid on the same ones)."""
    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:  # not Linux: the platform string is all we have
        pass
    return f"{platform.machine()}|{model}|{flags}"


def files_identity(model: Path, manifest_entry: dict[str, Any] | None) -> dict[str, Any]:
    """What identifies a component's files: the manifest's checksums, else path, size and mtime."""
    if manifest_entry and manifest_entry.get("files"):
        return {name: meta.get("sha256") for name, meta in sorted(manifest_entry["files"].items())}
    out = {}
    for path in sorted(Path(model).parent.glob(Path(model).name + "*")):  # model.onnx, model.onnx_data
        stat = path.stat()
        out[str(path.resolve())] = [stat.st_size, stat.st_mtime_ns]
    return out


def entry_key(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is shared like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
