"""The one session interface (`inputs`, `outputs`, `__call__(**feeds) -> dict`) and its ONNX Runtime implementation.

Every backend (ONNX Runtime here, OpenVINO in `backends/openvino.py`) describes its graph's inputs as
`TensorInfo` and checks a call's feeds with `check_feeds`, so the errors are the same whichever runs.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from latentrt.runtime.cache import cpu_signature, entry_key, publish_folder

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


def session_options(threads: int | None = None, optimize: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxModel:
    """An ONNX Runtime session for one component, called with keyword arrays.

    With a `cache` folder (CPU provider only), the first load saves ONNX Runtime's optimized graph with its
    weights and prepacked weights in an external data file (`optimized_copy`); every load then opens that copy
    with graph optimization off, its weights memory-mapped. Measured on SD 1.5's UNet (2 vCPUs): 11 s to create
    the session from model.onnx, 0.7-1.2 s from the cached copy, same outputs.
    """

    def __init__(self, name: str, path: Path, providers: list[str], threads: int | None = None,
                 cache: Path | None = None, identity: dict[str, Any] | None = None, weights: dict | None = None):
        self.name = name
        self.path = Path(path)
        self.session = None
        for _ in range(2 if cache is not None else 0):  # a corrupt entry is rebuilt once
            copy = optimized_copy(name, self.path, providers, cache, identity)
            if copy is None:
                break
            try:
                self.session = ort.InferenceSession(str(copy / "model.onnx"), session_options(threads, optimize=False), providers=providers)
                logger.info("%s: loaded the optimized copy in %s", name, copy)
                break
            except Exception as exc:  # truncated or corrupted
                logger.warning("%s: the cached optimized model %s cannot be loaded (%s); rebuilding it",
                               name, copy, _reason(exc))
                shutil.rmtree(copy, ignore_errors=True)
        if self.session is None:
            options = session_options(threads)
            source, disabled = self.path, None
            if weights:
                self._weights, source, disabled = _override(options, weights, self.path)
            self.session = _load(name, source, options, providers, disabled)
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


def _override(options: ort.SessionOptions, weights: dict, path: Path):
    """LoRA-merged initializers ({name: lora.StoredWeight}) in place of the file's (the load cache's optimized copy
    is not used): (OrtValues that must live as long as the session, the model to load (a path, or bytes),
    optimizers to disable).

    Initializers the file keeps in its external data go through add_external_initializers (full optimization).
    A file with inline weights only (small models) is patched in memory at the weights' byte offsets and loaded
    from bytes: ONNX Runtime 1.32 ignores add_initializer for Conv weights at its layout optimization level, and
    constant-folds a Cast of an fp16-stored weight (--compact-weights) from the file's values. Inline weights in
    a graph that also has external data fall back to add_initializer at the extended level without constant
    folding."""
    external = [name for name, w in weights.items() if w.external]
    inline = [name for name in weights if name not in external]
    values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[name].values)) for name in external}
    if external:
        options.add_external_initializers(external, [values[name] for name in external])
    if not inline:
        return list(values.values()), path, None
    if not external and not (Path(path).parent / "model.onnx_data").exists():
        data = bytearray(Path(path).read_bytes())
        for name in inline:
            raw = weights[name].values.astype(weights[name].values.dtype.newbyteorder("<")).tobytes()  # ONNX raw_data
            data[weights[name].offset:weights[name].offset + len(raw)] = raw
        return list(values.values()), bytes(data), None
    for name in inline:
        values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[name].values))
        options.add_initializer(name, values[name])
    options.graph_optimization_level = min(options.graph_optimization_level, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, key=int)
    return list(values.values()), path, ["ConstantFolding"]


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


def _load(name: str, path: Path | bytes, options: ort.SessionOptions, providers: list[str],
          disabled_optimizers: list[str] | None = None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=providers,
                                    disabled_optimizers=disabled_optimizers)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelLoadError(
            f"{name}: {'its LoRA-patched graph' if isinstance(path, bytes) else path} could not be loaded ({_reason(exc)}). "
            "The file is corrupted or truncated, "
            "or its model.onnx_data is missing: re-export the folder with `latentrt export`"
        ) from exc


def _reason(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def optimized_copy(name: str, path: Path, providers: list[str], cache: Path, identity: dict[str, Any] | None) -> Path | None:
    """The cache entry holding this component's optimized graph for these providers on this CPU: found, or made now.

    None when it cannot be made (a read-only or full cache folder, another provider than the CPU): the caller
    loads the model itself, and the generation goes on.
    """
    if providers[0] != "CPUExecutionProvider":  # prepacked weights and ORT's CPU layouts are this provider's own
        return None
    key = entry_key(component=name, files=identity or {}, onnxruntime=ort.__version__, providers=providers,
                    level="all", prepacked=True, cpu=cpu_signature())
    entry = cache / "onnxruntime" / f"{name}-{key}"
    if (entry / "model.onnx").is_file():
        return entry

    def build(folder: Path) -> None:
        options = session_options()
        options.optimized_model_filepath = str(folder / "model.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx_data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        ort.InferenceSession(str(path), options, providers=providers)  # writes the optimized copy as it loads
        if not (folder / "model.onnx").is_file():
            raise OSError(f"onnxruntime wrote no optimized model to {folder}")
        (folder / "source.json").write_text(json.dumps({"model": str(path.resolve()), "onnxruntime": ort.__version__}))

    try:
        publish_folder(entry, build)
    except Exception as exc:  # read-only or full folder, onnxruntime failing to write, or a bad source model
        # (a bad source model fails again in the caller's own load, with the error that says so)
        logger.warning("%s: could not write the optimized model to the cache %s (%s); loading without it",
                       name, entry.parent, _reason(exc))
        return None
    logger.info("%s: optimized model cached in %s", name, entry)
    return entry


def _info(arg) -> TensorInfo:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(f"graph tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None) for d in arg.shape)
    return TensorInfo(arg.name, dtype, shape)
