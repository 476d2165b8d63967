"""Where latentrt keeps what makes the next load fast, and how entries are named.

The root is `cache_dir=` / `--cache-dir`, else `$LATENTRT_CACHE`, else `~/.cache/latentrt`. Each backend has
its folder under it (`MODEL_CACHES`): `onnxruntime/` holds ONNX Runtime's optimized models with their
prepacked weights (session.py), `openvino/` OpenVINO's IR and weightless compiled models (backends/openvino.py).
An entry's key hashes everything that could make it stale: the model files (the manifest's sha256, or path,
size and mtime for folders without one), the backend's version, its options and the CPU (model name and
instruction-set flags), so that a stale entry is never found. Writes are atomic (a temporary file or folder
renamed into place), so two processes filling the same entry both succeed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

MODEL_CACHES = ("onnxruntime", "openvino")  # the folders `latentrt cache clear` empties; the rest of the root is the bench's


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


def publish_folder(entry: Path, build: Callable[[Path], None]) -> None:
    """Build an entry folder beside `entry`, then rename it into place in one step.

    Readers never see a half-written entry; when two processes build the same entry at once, the first rename
    wins and the other process drops its copy and uses the winner's.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp"))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def entry_source(entry: Path) -> str:
    """The model file an entry was made from, as its `source.json` records it ("" when it has none)."""
    try:
        return json.loads((entry / "source.json").read_text()).get("model", "")
    except (OSError, ValueError):
        return ""


def cache_entries(root: Path) -> list[tuple[str, Path, int]]:
    """(backend, entry, bytes) for every model-cache entry under the root; half-written ones (.tmp) included."""
    out = []
    for backend in MODEL_CACHES:
        folder = root / backend
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                out.append((backend, entry, folder_size(entry) if entry.is_dir() else entry.stat().st_size))
    return out


def clear_cache(root: Path) -> tuple[int, int]:
    """Remove every model-cache entry under the root; returns (entries, bytes) removed."""
    entries = cache_entries(root)
    for _, entry, _ in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return len(entries), sum(size for *_, size in entries)
