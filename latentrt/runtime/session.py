"""The one session interface (`inputs`, `outputs`, `__call__(**feeds) -> dict`) and its ONNX Runtime implementation.

Every backend (ONNX Runtime here, OpenVINO in `backends/openvino.py`) describes its graph's inputs as
`TensorInfo` and checks a call's feeds with `check_feeds`, so the errors are the same whichever runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

# Short names users type -> ONNX Runtime provider lists (the CPU provider always last as fallback).
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "rocm": ["ROCMExecutionProvider", "CPUExecutionProvider"],
    "directml": ["DmlExecutionProvider", "CPUExecutionProvider"],
    "coreml": ["CoreMLExecutionProvider", "CPUExecutionProvider"],
}
# "openvino" is latentrt's own OpenVINO backend (backends/openvino.py), not ONNX Runtime's OpenVINO
# execution provider; that one is still reachable by its full name, "OpenVINOExecutionProvider".
_ORT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}


class ModelLoadError(RuntimeError):
    """An ONNX file could not be loaded (corrupted, truncated, external data missing)."""


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers."""
    have = set(ort.get_available_providers())
    return [short for short, chain in PROVIDERS.items() if chain[0] in have]


def resolve_providers(provider: str) -> list[str]:
    """'cuda' -> ['CUDAExecutionProvider', 'CPUExecutionProvider'], or a clear error."""
    have = ort.get_available_providers()
    chain = PROVIDERS.get(provider.lower()) if provider.lower() in PROVIDERS else None
    if chain is None and provider in have:
        chain = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    if chain is None:
        raise ValueError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    if chain[0] not in have:
        raise ValueError(
            f"provider {provider!r} ({chain[0]}) is not available in this onnxruntime build; "
            f"available here: {', '.join(available_providers())}. For GPUs install onnxruntime-gpu "
            "in place of onnxruntime (see the README)"
        )
    return chain


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # ints are fixed sizes; str/None are dynamic

    @property
    def rank(self) -> int:
        return len(self.shape)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxModel:
    """An ONNX Runtime session for one component, called with keyword arrays."""

    def __init__(self, name: str, path: Path, providers: list[str], threads: int | None = None):
        self.name = name
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads), providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            reason = str(exc).strip().splitlines()[0][:300]
            raise ModelLoadError(
                f"{name}: {self.path} could not be loaded ({reason}). The file is corrupted or truncated, "
                "or its model.onnx_data is missing: re-export the folder with `latentrt export`"
            ) from exc
        self.providers = self.session.get_providers()
        logger.info("%s: running on %s", name, self.providers[0])
        if self.providers[0] != providers[0]:
            logger.warning("%s: asked for %s but got %s", name, providers[0], self.providers[0])
        self.inputs = {i.name: _info(i) for i in self.session.get_inputs()}
        self.outputs = {o.name: _info(o) for o in self.session.get_outputs()}

    def __call__(self, **feeds: NDArray) -> dict[str, NDArray]:
        self._check(feeds)
        values = self.session.run(None, feeds)
        return dict(zip(self.outputs, values))

    def _check(self, feeds: dict[str, NDArray]) -> None:
        check_feeds(self.name, self.inputs, feeds)


def check_feeds(component: str, inputs: dict[str, TensorInfo], feeds: dict[str, NDArray]) -> None:
    """Names, dtypes, ranks and fixed sizes of a call's inputs, with an error that names the input."""
    missing = sorted(set(inputs) - set(feeds))
    unexpected = sorted(set(feeds) - set(inputs))
    if missing or unexpected:
        raise ValueError(f"{component}: inputs must be {sorted(inputs)}; missing {missing}, unexpected {unexpected}")
    for name, value in feeds.items():
        info = inputs[name]
        if value.dtype != info.dtype:
            raise ValueError(f"{component}: input {name!r} must be {info.dtype}, got {value.dtype}")
        if value.ndim != info.rank:
            raise ValueError(f"{component}: input {name!r} must have rank {info.rank} {info.shape}, got shape {value.shape}")
        for axis, (want, got) in enumerate(zip(info.shape, value.shape)):
            if isinstance(want, int) and want != got:
                raise ValueError(f"{component}: input {name!r} axis {axis} must be {want}, got shape {value.shape}")


def _info(arg) -> TensorInfo:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(f"graph tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None) for d in arg.shape)
    return TensorInfo(arg.name, dtype, shape)
