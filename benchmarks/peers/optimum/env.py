"""optimum's own virtual environment, built once and driven through subprocess.

optimum-onnx pins transformers < 4.58 and huggingface_hub < 1.0, which current diffusers and
transformers 5 (our main environment) do not accept, so optimum lives in a venv of its own under
`$LATENTRT_CACHE/optimum-venv` (default `~/.cache/latentrt/optimum-venv`) and `worker.py` runs in it.

    from benchmarks.peers.optimum.env import ensure_env, run_worker
    run_worker(["export", "my-diffusers-folder", "my-onnx-folder"])

`python -m benchmarks.peers.optimum.env` builds the venv (if needed) and prints its path.
Standard library only: this module is imported from the main environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
WORKER = HERE / "worker.py"
# Installed on its own, first: with the machine's local CPU wheel (pip's find-links) this is fast
# and small; an unpinned torch resolved together with the rest would pull a multi-GB CUDA build.
TORCH_PIN = "torch==2.13.0"
STAMP_NAME = ".latentrt-stamp"
INSTALL_TIMEOUT_S = 1800
# Variables that must not leak from the main environment into the worker's interpreter.
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")


class OptimumEnvError(RuntimeError):
    """The optimum venv could not be built."""


class OptimumWorkerError(RuntimeError):
    """worker.py exited non-zero; the message carries its stderr."""

    def __init__(self, message: str, completed: subprocess.CompletedProcess):
        super().__init__(message)
        self.completed = completed


def cache_dir() -> Path:
    return Path(os.environ.get("LATENTRT_CACHE") or Path.home() / ".cache" / "latentrt").expanduser()


def venv_dir() -> Path:
    return cache_dir() / "optimum-venv"


def venv_python(venv: Path | None = None) -> Path:
    return (venv or venv_dir()) / "bin" / "python"


def env_key() -> str:
    """What the venv depends on: the pins, the torch pin and the interpreter's minor version."""
    h = hashlib.sha256()
    h.update(REQUIREMENTS.read_bytes())
    h.update(TORCH_PIN.encode())
    h.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    return h.hexdigest()


def _stamp_ok(venv: Path, key: str) -> bool:
    stamp = venv / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == key and venv_python(venv).exists()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _pip(venv: Path, args: list[str], log) -> None:
    cmd = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_clean_env(),
                          timeout=INSTALL_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise OptimumEnvError(f"pip install {' '.join(args)} failed (exit {proc.returncode}); see {log.name}")


def ensure_env() -> Path:
    """Create the optimum venv once and return its folder; later calls only read the stamp.

    Safe when several processes call it at once: the build runs under an exclusive lock on
    `<cache>/optimum-venv.lock`, and the others wait, then find the stamp. A venv whose stamp does
    not match requirements.txt (pins changed, or an install died half way) is rebuilt from scratch.
    """
    venv = venv_dir()
    key = env_key()
    if _stamp_ok(venv, key):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "optimum-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _stamp_ok(venv, key):  # another process built it while we waited
            return venv
        t0 = time.monotonic()
        logger.info("building optimum venv at %s (a few minutes, once)", venv)
        shutil.rmtree(venv, ignore_errors=True)
        log_path = venv.parent / "optimum-venv-install.log"
        with open(log_path, "w") as log:
            try:
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_clean_env(),
                               stdout=log, stderr=subprocess.STDOUT, timeout=300)
                _pip(venv, [TORCH_PIN], log)
                _pip(venv, ["-r", str(REQUIREMENTS)], log)
            except (OptimumEnvError, subprocess.SubprocessError, OSError) as exc:
                tail = _tail(log_path)
                raise OptimumEnvError(f"could not build the optimum venv at {venv}: {exc}\n{tail}") from exc
        (venv / STAMP_NAME).write_text(key + "\n")
        logger.info("optimum venv ready in %.0f s", time.monotonic() - t0)
    return venv


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_worker(args: list[str], timeout: float | None = 3600, env: dict[str, str] | None = None,
               cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run `worker.py ARGS` in the optimum venv (building it first if needed).

    Returns the CompletedProcess (stdout/stderr as text); raises OptimumWorkerError with the
    worker's stderr when it exits non-zero, and subprocess.TimeoutExpired past `timeout` seconds.
    Hugging Face hubs are switched off (HF_HUB_OFFLINE=1): the worker only reads local folders.
    """
    venv = ensure_env()
    full_env = _clean_env()
    full_env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                     "PYTHONUNBUFFERED": "1"})
    if env:
        full_env.update(env)
    cmd = [str(venv_python(venv)), str(WORKER), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=cwd, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.strip()
        if len(stderr) > 8000:
            stderr = "...\n" + stderr[-8000:]
        raise OptimumWorkerError(
            f"optimum worker {' '.join(map(str, args[:1]))} failed (exit {proc.returncode}):\n{stderr}", proc
        )
    return proc


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_env())


if __name__ == "__main__":
    main()
