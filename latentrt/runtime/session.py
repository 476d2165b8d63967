"""The one session interface (`inputs`, `outputs`, `__call__(**feeds) -> dict`) and its ONNX Runtime implementation.

Every backend (ONNX Runtime here, OpenVINO in `backends/openvino.py`) describes its graph's inputs as
`TensorInfo` and checks a call's feeds with `check_feeds`, so the errors are the same whichever runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from contextlib import contextmanager
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
# The provider option that captures a session's kernels in a CUDA graph, replayed at fixed buffer addresses
# (TensorRT's pybind layer takes only True/False for its booleans, the CUDA provider "1"/"0")
CUDA_GRAPH_OPTIONS = {"CUDAExecutionProvider": ("enable_cuda_graph", "1"),
                      "TensorrtExecutionProvider": ("trt_cuda_graph_enable", "True")}
# Where a provider keeps its inputs and outputs (OrtValue device names); any other provider: host memory
_DEVICES = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "ROCMExecutionProvider": "cuda",
            "DmlExecutionProvider": "dml"}
_ORT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}


class ModelLoadError(RuntimeError):
    """An ONNX file could not be loaded (corrupted, truncated, external data missing)."""


class NonFiniteOutputError(FloatingPointError):
    """A network's output holds NaN or inf (an fp16 overflow, most often): no image is made from it."""


# What makes each network overflow, and the fix (keyed by the network's name without a suffix: unet_shallow -> unet)
_NONFINITE_FIXES = {
    "unet": "fp16 attention overflows in some models (SD 2.x): use a folder exported with upcast attention (fp32 "
            "softmax), or an fp32 folder",
    "vae_decoder": "fp16 VAE decoders overflow (SD 1.5, SDXL): use a folder whose VAE decoder is fp32 (upcast, as its "
                   "config's force_upcast asks), or an fp32 folder",
}


def check_finite(component: str, values: NDArray, where: str = "") -> NDArray:
    """`values`, or NonFiniteOutputError naming the network and the fix (np.isfinite on latents: microseconds)."""
    if not np.isfinite(values).all():
        fix = _NONFINITE_FIXES.get(component.split("_shallow")[0], "")
        raise NonFiniteOutputError(f"{component} produced NaN or inf values{where}; no image was written. "
                                   + (f"{fix}. " if fix else "") + "In an fp32 folder, the model (or a LoRA) is broken")
    return values


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


def provider_options_for(providers: list[str], options: dict | None) -> dict:
    """InferenceSession's keyword for `options` given to the first provider of the chain ({} when none)."""
    if not options:
        return {}
    return {"provider_options": [{str(k): str(v) for k, v in options.items()}] + [{} for _ in providers[1:]]}


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
                 cache: Path | None = None, identity: dict[str, Any] | None = None, weights: dict | None = None,
                 provider_options: dict | None = None, io_binding: bool = False, cuda_graph: bool = False):
        self.name = name
        self.path = Path(path)
        self.session = None
        if cuda_graph:  # the UNet's kernels captured once, replayed: needs the fixed buffers of IO binding
            key, on = CUDA_GRAPH_OPTIONS[providers[0]]
            provider_options = {**(provider_options or {}), key: on}
        extra = provider_options_for(providers, provider_options)
        for _ in range(2 if cache is not None else 0):  # a corrupt entry is rebuilt once
            copy = optimized_copy(name, self.path, providers, cache, identity, extra)
            if copy is None:
                break
            try:
                self.session = ort.InferenceSession(str(copy / "model.onnx"), session_options(threads, optimize=False),
                                                    providers=providers, **extra)
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
            self.session = _load(name, source, options, providers, disabled, extra)
        self.providers = self.session.get_providers()
        logger.info("%s: running on %s", name, self.providers[0])
        if self.providers[0] != providers[0]:
            logger.warning("%s: asked for %s but got %s", name, providers[0], self.providers[0])
        self.inputs = {i.name: _info(i) for i in self.session.get_inputs()}
        self.outputs = {o.name: _info(o) for o in self.session.get_outputs()}
        device_id = int((provider_options or {}).get("device_id", 0))
        self.binding = IoBinding(self, _DEVICES.get(self.providers[0], "cpu"), device_id, static=cuda_graph) if io_binding else None

    def __call__(self, **feeds: NDArray) -> dict[str, NDArray]:
        self._check(feeds)
        values = self.session.run(None, feeds)
        return dict(zip(self.outputs, values))

    def _check(self, feeds: dict[str, NDArray]) -> None:
        check_feeds(self.name, self.inputs, feeds)


class IoBinding:
    """One session's IO binding (ORT's `io_binding()`): its inputs and outputs in OrtValues on the session's device,
    kept between runs, so that a run copies only the inputs given to it (each step's latents and timestep) and one
    network's device output (DeepCache's feature) feeds another network without a trip through the host.

    An input of the same shape and dtype as its buffer is copied into it in place; another one gets a new buffer,
    and the outputs are then allocated on the device by the next run and kept, as they are, for the runs after it.
    `static` (CUDA graphs replay their kernels at the addresses they were captured with): after the first run, an
    input that would need a new buffer is an error.
    """

    def __init__(self, model: "OnnxModel", device: str, device_id: int = 0, static: bool = False):
        self.model, self.device, self.static = model, (device, device_id), static
        self.binding = model.session.io_binding()
        self.lock = threading.Lock()  # one generation at a time owns the buffers
        self.inputs: dict[str, ort.OrtValue] = {}
        self.owned: set[str] = set()  # inputs in buffers of this binding's own (not another network's outputs)
        self.outputs: list[ort.OrtValue] | None = None  # None: allocated by the next run

    def feed(self, feeds: dict[str, Any]) -> None:
        """Bind NumPy arrays (copied to the device) and OrtValues (bound as they are) to the inputs they name."""
        for name, value in feeds.items():
            held = self.inputs.get(name)
            if isinstance(value, ort.OrtValue):
                if held is not None and held.data_ptr() == value.data_ptr():
                    continue
            elif name in self.owned and _dtype_shape(held) == (value.dtype, value.shape):
                held.update_inplace(np.ascontiguousarray(value))
                continue
            if self.static and self.outputs is not None:
                raise ValueError(
                    f"{self.model.name}: cuda_graph captured this network at {name} {_dtype_shape(held)[1]}, and this call "
                    f"gives {_dtype_shape(value)[1]}: a CUDA graph runs "
                    "one shape (size, batch, guidance on or off); use another Pipeline for another shape"
                )
            self.owned.discard(name)
            if not isinstance(value, ort.OrtValue):  # a buffer of its own: from_numpy on the CPU would alias the array
                array, value = value, ort.OrtValue.ortvalue_from_shape_and_type(value.shape, value.dtype, *self.device)
                value.update_inplace(np.ascontiguousarray(array))
                self.owned.add(name)
            self.binding.bind_ortvalue_input(name, value)
            self.inputs[name] = value
            self.outputs = None

    def run(self, **feeds: Any) -> dict[str, ort.OrtValue]:
        """Run on the bound inputs, `feeds` bound first; the outputs stay on the device (`to_host` copies one)."""
        check_feeds(self.model.name, self.model.inputs, {**self.inputs, **feeds})
        self.feed(feeds)
        if self.outputs is None:
            for name in self.model.outputs:
                self.binding.bind_output(name, *self.device)
        self.model.session.run_with_iobinding(self.binding)
        if self.outputs is None:  # the buffers ORT allocated are this shape's from now on (fixed addresses)
            self.outputs = self.binding.get_outputs()
            for name, value in zip(self.model.outputs, self.outputs):
                self.binding.bind_ortvalue_output(name, value)
        return dict(zip(self.model.outputs, self.outputs))


@contextmanager
def constant_feeds(model, constants: dict[str, Any]):
    """Calls of `model` that all take `constants` (one generation's conditioning): yields run(**feeds) -> {output: value}.

    With IO binding (`model.binding`) the constants are copied to the device once, here, the generation holds the
    buffers until it leaves, and the values are the device's OrtValues (`to_host` copies one to NumPy); otherwise
    each call passes the constants with its feeds and gets NumPy arrays.
    """
    binding = getattr(model, "binding", None)  # OpenVINO's models have none
    if binding is None:
        yield lambda **feeds: model(**constants, **feeds)
        return
    with binding.lock:
        binding.feed(constants)
        yield binding.run


def to_host(value: Any) -> NDArray:
    """An output as a NumPy array of its own (a CPU OrtValue's numpy() is a view of a buffer the next run overwrites)."""
    return np.array(value.numpy()) if isinstance(value, ort.OrtValue) else value


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
        dtype, shape = _dtype_shape(value)
        if dtype != info.dtype:
            raise ValueError(f"{component}: input {name!r} must be {info.dtype}, got {dtype}")
        if len(shape) != info.rank:
            raise ValueError(f"{component}: input {name!r} must have rank {info.rank} {info.shape}, got shape {shape}")
        for axis, (want, got) in enumerate(zip(info.shape, shape)):
            if isinstance(want, int) and want != got:
                raise ValueError(f"{component}: input {name!r} axis {axis} must be {want}, got shape {shape}")


def _dtype_shape(value: Any) -> tuple[np.dtype, tuple[int, ...]]:
    """A NumPy array's or an OrtValue's (IO binding's device buffers) dtype and shape."""
    if isinstance(value, ort.OrtValue):
        return _ORT_DTYPES.get(value.data_type(), value.data_type()), tuple(value.shape())
    return value.dtype, value.shape


def _load(name: str, path: Path | bytes, options: ort.SessionOptions, providers: list[str],
          disabled_optimizers: list[str] | None = None, extra: dict | None = None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=providers,
                                    disabled_optimizers=disabled_optimizers, **(extra or {}))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelLoadError(
            f"{name}: {'its LoRA-patched graph' if isinstance(path, bytes) else path} could not be loaded ({_reason(exc)}). "
            "The file is corrupted or truncated, "
            "or its model.onnx_data is missing: re-export the folder with `latentrt export`"
        ) from exc


def _reason(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def optimized_copy(name: str, path: Path, providers: list[str], cache: Path, identity: dict[str, Any] | None,
                   extra: dict | None = None) -> Path | None:
    """The cache entry holding this component's optimized graph for these providers on this CPU: found, or made now.

    None when it cannot be made (a read-only or full cache folder, another provider than the CPU): the caller
    loads the model itself, and the generation goes on.
    """
    if providers[0] != "CPUExecutionProvider":  # prepacked weights and ORT's CPU layouts are this provider's own
        return None
    key = entry_key(component=name, files=identity or {}, onnxruntime=ort.__version__, providers=providers,
                    level="all", prepacked=True, cpu=cpu_signature(), **(extra or {}))  # no provider options: the keys of before
    entry = cache / "onnxruntime" / f"{name}-{key}"
    if (entry / "model.onnx").is_file():
        return entry

    def build(folder: Path) -> None:
        options = session_options()
        options.optimized_model_filepath = str(folder / "model.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx_data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        ort.InferenceSession(str(path), options, providers=providers, **(extra or {}))  # writes the optimized copy as it loads
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
