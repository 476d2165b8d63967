"""optimum-intel's own virtual environment, built once and driven through subprocess.

optimum-intel 2.2.0 pins transformers < 5.6 and huggingface_hub < 1.22, which latentrt's main environment
(transformers 5.24, huggingface_hub 2.x, diffusers 0.42) does not accept, so it lives in a venv of its own
under `$LATENTRT_CACHE/optimum-intel-venv` (default `~/.cache/latentrt/optimum-intel-venv`); `worker.py`
(export) and latentrt/bench/systems/optimum_intel_worker.py (the bench system) run in it.

    from benchmarks.peers.optimum_intel.env import ENV
    ENV.run_worker(["export", "my-diffusers-folder", "my-openvino-folder"])

`python -m benchmarks.peers.optimum_intel.env` builds the venv (if needed) and prints its path.
Standard library only: this module is imported from the main environment.
"""

from __future__ import annotations

from pathlib import Path

from latentrt.bench.peers import peer_env

HERE = Path(__file__).resolve().parent
ENV = peer_env("optimum-intel", HERE)  # HERE's requirements.txt, requirements-no-deps.txt and worker.py

if __name__ == "__main__":
    ENV.main()
