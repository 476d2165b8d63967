"""The peers' own virtual environments (optimum, optimum-intel), built once and driven through subprocess.

Peers pin libraries that latentrt's main environment does not accept (older transformers, huggingface_hub,
diffusers), so each lives in a venv of its own under `$LATENTRT_CACHE/<name>-venv` (default
`~/.cache/latentrt/<name>-venv`) and its scripts run there. What a peer installs and runs (its pins and
worker script) is in its folder under benchmarks/peers/, which only latentrt's source checkout has:

    from latentrt.bench.peers import peer_env
    env = peer_env("optimum")         # benchmarks/peers/optimum/{requirements.txt,worker.py}
    env.ensure()                      # builds it once; later calls read the stamp
    env.run_worker(["export", "my-diffusers-folder", "my-onnx-folder"])

`python -m benchmarks.peers.<peer>.env` builds that venv and prints its path.
Standard library only: imported by the harness, and by benchmarks/peers/compat.py inside the peers' venvs.
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
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Installed on its own, first: with the machine's local CPU wheel (pip's find-links) this is fast
# and small; an unpinned torch resolved together with the rest would pull a multi-GB CUDA build.
TORCH_PIN = "torch==2.13.0"
STAMP_NAME = ".latentrt-stamp"
INSTALL_TIMEOUT_S = 1800
# Every peer reads local folders only: set before any Hugging Face import.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "DISABLE_TELEMETRY": "1"}
# A source checkout: the folder holding the latentrt package (an editable install), whose benchmarks/peers/ holds
# each peer's pins and worker. An installed wheel's is site-packages, which has none.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
# systems that run in a peer's own virtual environment: system -> its folder under benchmarks/peers/
PEERS = {"optimum": "optimum", "optimum-intel": "optimum_intel"}
# Variables that must not leak from the main environment into a peer's interpreter.
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")


class PeerEnvError(RuntimeError):
    """A peer's venv could not be built."""


class PeerWorkerError(RuntimeError):
    """A peer's worker script exited non-zero; the message carries its stderr."""

    def __init__(self, message: str, completed: subprocess.CompletedProcess):
        super().__init__(message)
        self.completed = completed


def cache_dir() -> Path:
    return Path(os.environ.get("LATENTRT_CACHE") or Path.home() / ".cache" / "latentrt").expanduser()


def clean_env() -> dict[str, str]:
    """This process's environment without what would make a peer's interpreter read the main venv."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log, for an error message ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class PeerEnv:
    """One peer's venv: `<cache>/<name>-venv`, built from `requirements` (after TORCH_PIN, alone).

    `no_deps`: a second pins file installed with `pip install --no-deps` after `requirements`, for a
    package whose declared requirements cannot be met here (optimum-intel asks for torchvision, whose
    PyPI build does not import beside the CPU torch wheel); `requirements` then lists what it does need.
    """

    name: str
    requirements: Path
    worker: Path | None = None
    no_deps: Path | None = None

    def venv_dir(self) -> Path:
        return cache_dir() / f"{self.name}-venv"

    def python(self, venv: Path | None = None) -> Path:
        return (venv or self.venv_dir()) / "bin" / "python"

    def key(self) -> str:
        """What the venv depends on: the pins, the torch pin and the interpreter's minor version."""
        h = hashlib.sha256()
        h.update(self.requirements.read_bytes())
        if self.no_deps is not None:
            h.update(b"\0no-deps\0" + self.no_deps.read_bytes())
        h.update(TORCH_PIN.encode())
        h.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
        return h.hexdigest()

    def _stamp_ok(self, venv: Path, key: str) -> bool:
        stamp = venv / STAMP_NAME
        return stamp.is_file() and stamp.read_text().strip() == key and self.python(venv).exists()

    def _pip(self, venv: Path, args: list[str], log) -> None:
        cmd = [str(self.python(venv)), "-m", "pip", "install", "--disable-pip-version-check", *args]
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
                              timeout=INSTALL_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise PeerEnvError(f"pip install {' '.join(args)} failed (exit {proc.returncode}); see {log.name}")

    def ensure(self) -> Path:
        """Create the venv once and return its folder; later calls only read the stamp.

        Safe when several processes call it at once: the build runs under an exclusive lock on
        `<cache>/<name>-venv.lock`, and the others wait, then find the stamp. A venv whose stamp does
        not match the pins (changed, or an install died half way) is rebuilt from scratch.
        """
        venv = self.venv_dir()
        key = self.key()
        if self._stamp_ok(venv, key):
            return venv
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(venv.parent / f"{self.name}-venv.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self._stamp_ok(venv, key):  # another process built it while we waited
                return venv
            t0 = time.monotonic()
            logger.info("building the %s venv at %s (a few minutes, once)", self.name, venv)
            shutil.rmtree(venv, ignore_errors=True)
            log_path = venv.parent / f"{self.name}-venv-install.log"
            with open(log_path, "w") as log:
                try:
                    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env(),
                                   stdout=log, stderr=subprocess.STDOUT, timeout=300)
                    self._pip(venv, [TORCH_PIN], log)
                    self._pip(venv, ["-r", str(self.requirements)], log)
                    if self.no_deps is not None:
                        self._pip(venv, ["--no-deps", "-r", str(self.no_deps)], log)
                except (PeerEnvError, subprocess.SubprocessError, OSError) as exc:
                    tail_text = tail(log_path)
                    raise PeerEnvError(f"could not build the {self.name} venv at {venv}: {exc}\n{tail_text}") from exc
            (venv / STAMP_NAME).write_text(key + "\n")
            logger.info("%s venv ready in %.0f s", self.name, time.monotonic() - t0)
        return venv

    def run_worker(self, args: list, timeout: float | None = 3600, env: dict[str, str] | None = None,
                   cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run `worker.py ARGS` in the venv (building it first if needed).

        Returns the CompletedProcess (stdout/stderr as text); raises PeerWorkerError with the
        worker's stderr when it exits non-zero, and subprocess.TimeoutExpired past `timeout` seconds.
        Hugging Face hubs are switched off (HF_HUB_OFFLINE=1): the worker only reads local folders.
        """
        if self.worker is None:
            raise PeerEnvError(f"the {self.name} peer has no worker script")
        venv = self.ensure()
        full_env = {**clean_env(), **OFFLINE_ENV, "PYTHONUNBUFFERED": "1", **(env or {})}
        cmd = [str(self.python(venv)), str(self.worker), *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout,
                              cwd=cwd, check=False)
        if proc.returncode != 0:
            stderr = proc.stderr.strip()
            if len(stderr) > 8000:
                stderr = "...\n" + stderr[-8000:]
            raise PeerWorkerError(
                f"{self.name} worker {' '.join(map(str, args[:1]))} failed (exit {proc.returncode}):\n{stderr}", proc
            )
        return proc

    def main(self) -> None:
        """`python -m benchmarks.peers.<peer>.env`: build the venv if needed, print its path."""
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        print(self.ensure())


def peers_dir() -> Path:
    return SOURCE_ROOT / "benchmarks" / "peers"


def peers_available() -> bool:
    """True in a source checkout (benchmarks/peers/ beside the package), where the peers' venvs can be built."""
    return all((peers_dir() / folder / "requirements.txt").is_file() for folder in PEERS.values())


def no_peers_message(systems) -> str:
    one = len(systems) == 1
    return (f"{', '.join(systems)} {'runs in a virtual environment' if one else 'run in virtual environments'} built "
            f"from benchmarks/peers/, which only latentrt's source checkout has (the installed package, in {SOURCE_ROOT}, "
            f"has none): clone the repository and install it with `pip install -e .`, or leave "
            f"{'it' if one else 'them'} out of --systems")


def peer_env(system: str, folder: Path | None = None) -> PeerEnv:
    """The PeerEnv of a peer system, from its folder (default: benchmarks/peers/<folder> of the source checkout):
    requirements.txt, worker.py and, where the peer has one, requirements-no-deps.txt."""
    folder = folder or peers_dir() / PEERS[system]
    no_deps = folder / "requirements-no-deps.txt"
    return PeerEnv(system, folder / "requirements.txt", worker=folder / "worker.py",
                   no_deps=no_deps if no_deps.is_file() else None)
