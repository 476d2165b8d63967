#!/usr/bin/env bash
# The GPU benchmark in one command (issue 16): latentrt fp16 on ONNX Runtime's CUDA provider (plain, IO binding,
# CUDA graph) against diffusers fp16 on the same NVIDIA GPU; SD 1.5's architecture (random weights), 512x512, 50 steps.
#
#   benchmarks/gpu/run.sh [OUT_DIR] [bench options]            on a fresh Linux GPU machine with this checkout
#   benchmarks/gpu/run.sh --dry-run [OUT_DIR] [bench options]  the same code on the CPU: tiny model, no installs
#                                                              (or GPU_BENCH_DRY_RUN=1; PYTHON picks the interpreter)
#   GPU_BENCH_NO_INSTALL=1 benchmarks/gpu/run.sh [OUT_DIR]     the GPU run without installing (no network: the
#                                                              packages already there, or carried as wheels)
#
# Writes OUT_DIR/gpu-h200.{json,md,png} (dry run: gpu-dry-run.*); OUT_DIR defaults to benchmarks/results.
# The full run first installs into its own venv ($GPU_BENCH_VENV, default .venv-gpu-bench): torch from PyPI (its
# Linux x86_64 wheel is the CUDA build), this checkout with the export extra, then onnxruntime-gpu in place of
# onnxruntime (both provide the module `onnxruntime`: the CPU one is uninstalled first). Models, exports and run
# folders go to $GPU_BENCH_WORK (default: $LATENTRT_CACHE/gpu-bench, else ~/.cache/latentrt/gpu-bench), reused.
# Options after OUT_DIR go to benchmarks/gpu/bench.py (--steps, --runs, --src, --name; see its --help).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
COMMAND="benchmarks/gpu/run.sh $*"
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" || "${GPU_BENCH_DRY_RUN:-0}" == "1" ]]; then
    DRY_RUN=1
    [[ "${1:-}" == "--dry-run" ]] && shift
fi
WORK_ARGS=()
[[ -n "${GPU_BENCH_WORK:-}" ]] && WORK_ARGS=(--work "$GPU_BENCH_WORK")

if [[ $DRY_RUN == 1 ]]; then  # the current environment, as CI has it
    exec "${PYTHON:-python}" -m benchmarks.gpu.bench "$@" --dry-run --command "$COMMAND" "${WORK_ARGS[@]}"
fi

START=$SECONDS
if [[ "${GPU_BENCH_NO_INSTALL:-0}" == "1" ]]; then  # a machine without network: the current python already has
    # torch (CUDA), onnxruntime-gpu, diffusers and latentrt's export needs (installed, or carried as wheels)
    exec "${PYTHON:-python3}" -m benchmarks.gpu.bench "$@" --install-seconds 0 --command "$COMMAND" "${WORK_ARGS[@]}"
fi
VENV="${GPU_BENCH_VENV:-$ROOT/.venv-gpu-bench}"
BASE_PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[[ -x "$VENV/bin/python" ]] || "$BASE_PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# uv installs the ~3 GB of CUDA wheels several times faster than pip (parallel downloads); pip where it is missing
if "$PY" -m pip install -q uv; then
    install() { "$VENV/bin/uv" pip install -q --python "$PY" "$@"; }
    uninstall() { "$VENV/bin/uv" pip uninstall -q --python "$PY" "$@"; }
else
    install() { "$PY" -m pip install -q "$@"; }
    uninstall() { "$PY" -m pip uninstall -q -y "$@"; }
fi
echo "[gpu-bench] installing torch, latentrt[export], onnxruntime-gpu into $VENV" >&2
install torch
install -e ".[export]" matplotlib psutil
# onnxruntime-gpu replaces onnxruntime (same module); its cuda/cudnn extras bring the CUDA libraries it was built for
"$PY" -m pip show -q onnxruntime >/dev/null 2>&1 && uninstall onnxruntime
install "onnxruntime-gpu[cuda,cudnn]"
INSTALL_S=$((SECONDS - START))
echo "[gpu-bench] installed in ${INSTALL_S} s" >&2

"$PY" -m benchmarks.gpu.bench "$@" --install-seconds "$INSTALL_S" --command "$COMMAND" "${WORK_ARGS[@]}"
echo "[gpu-bench] done in $((SECONDS - START)) s" >&2
