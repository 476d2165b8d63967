"""optimum's own virtual environment, built once and driven through subprocess.

optimum-onnx pins transformers < 4.58 and huggingface_hub < 1.0, which current diffusers and
transformers 5 (our main environment) do not accept, so optimum lives in a venv of its own under
`$LATENTRT_CACHE/optimum-venv` (default `~/.cache/latentrt/optimum-venv`) and `worker.py` runs in it.

    from benchmarks.peers.optimum.env import ensure_env, run_worker
    run_worker(["export", "my-diffusers-folder", "my-onnx-folder"])

`python -m benchmarks.peers.optimum.env` builds the venv (if needed) and prints its path.
The machinery (stamp, lock, torch first) is latentrt/bench/peers.py, shared with the other peers.
Standard library only: this module is imported from the main environment.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from latentrt.bench.peers import STAMP_NAME, TORCH_PIN, PeerEnvError, PeerWorkerError, cache_dir, peer_env  # noqa: F401

HERE = Path(__file__).resolve().parent
ENV = peer_env("optimum", HERE)  # HERE's requirements.txt and worker.py

OptimumEnvError = PeerEnvError
OptimumWorkerError = PeerWorkerError


def venv_dir() -> Path:
    return ENV.venv_dir()


def venv_python(venv: Path | None = None) -> Path:
    return ENV.python(venv)


def env_key() -> str:
    return ENV.key()


def ensure_env() -> Path:
    """Create the optimum venv once and return its folder (see PeerEnv.ensure)."""
    return ENV.ensure()


def run_worker(args: list, timeout: float | None = 3600, env: dict[str, str] | None = None,
               cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run `worker.py ARGS` in the optimum venv (see PeerEnv.run_worker)."""
    return ENV.run_worker(args, timeout=timeout, env=env, cwd=cwd)


if __name__ == "__main__":
    ENV.main()
