"""OpenVINO behind latentrt's session interface: the same ONNX files, compiled per static shape, bf16 where the CPU has it.

OpenVINO reads the folder's `model.onnx` as it is (com.microsoft.MultiHeadAttention included). Each network is
compiled for the exact input shapes of a call (static shapes run faster than dynamic ones) and the compiled
model is kept per shape in the process, within a bound: shapes compiled ahead with `compile` (a server's start) are
pinned, and those a call compiled on demand are kept up to `max_shapes`, the least recently used released past
it (its memory returns: about 80 MB per shape for the shipped model, a copy of the network's weights for a large
one).

With a cache folder (the default; none with `use_cache=False` or a LoRA, whose merged weights are the file's no
more), a network has an entry `<name>-<key>/` (see `latentrt.runtime.cache`): its graph as OpenVINO IR
(`model.xml`, `model.bin`, written once with `ov.save_model`, read again memory-mapped) and, per compiled shape,
a `compiled-<key>/` folder where OpenVINO's own model cache keeps the compiled model without its weights
(CACHE_MODE OPTIMIZE_SIZE: a few MB; on import the weights come from `model.bin`), so that the next process
imports it instead of running OpenVINO's graph transformations again. Weightless import needs the IR: from an
ONNX graph with inline weights OpenVINO 2026.4 writes a blob it cannot import. Entries and compiled folders are
built in a temporary folder and renamed into place, so a half-written one is never read; an IR whose files do
not match what its `source.json` recorded is rebuilt, and a blob OpenVINO cannot import is compiled and written
again by OpenVINO, each with a warning. Measured numbers: docs/backends.md, "Loading".
"""

from __future__ import annotations

import json
import locale
import logging
import shutil
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from latentrt.runtime.cache import cpu_signature, entry_key, publish_folder
from latentrt.runtime.session import ModelLoadError, TensorInfo, check_feeds

logger = logging.getLogger(__name__)

INSTALL_HINT = 'the openvino provider needs the openvino extra: pip install "latentrt[openvino]"'
DEVICE = "CPU"
# latentrt's precision names -> OpenVINO's inference precision hint
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
# OpenVINO's model cache without the weights: the blob holds the compiled graph, the weights are the source model's
CACHE_OPTIONS = {"CACHE_MODE": "OPTIMIZE_SIZE"}
# Shapes a network keeps compiled on demand (besides those pinned by `compile`): a server that sees many sizes stays
# flat, while one generation (a single shape per network) or a few sizes/batches in turn do not recompile.
DEFAULT_MAX_SHAPES = 8


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise ValueError(INSTALL_HINT) from exc
    return openvino


_CORE = None
_LOCALE: str | None = None  # the process's locale before OpenVINO first ran


def core():
    """One OpenVINO Core per process (it owns the plugins; creating one costs ~0.1 s)."""
    global _CORE, _LOCALE
    if _CORE is None:
        _LOCALE = locale.setlocale(locale.LC_ALL)
        _CORE = import_openvino().Core()
    return _CORE


@contextmanager
def keeping_locale():
    """Put the process's locale back after an OpenVINO compile or import. Measured: compiling several networks at
    once from the cache (threads) left the process in the "C" locale, so that Python's default text encoding became
    ASCII (OpenVINO sets and restores the locale around its work, and concurrent calls restore each other's "C").
    The last call to finish restores the locale the process had."""
    try:
        yield
    finally:
        if _LOCALE is not None and locale.setlocale(locale.LC_ALL) != _LOCALE:
            try:
                locale.setlocale(locale.LC_ALL, _LOCALE)
            except locale.Error:  # the process changed it to one this libc cannot set again: leave it
                pass


def version() -> str:
    return import_openvino().get_version()


def supports_bf16() -> bool:
    """OpenVINO's CPU plugin runs bf16 natively here (AMX or AVX512-BF16)."""
    return "BF16" in core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")


class OpenVinoModel:
    """One network on OpenVINO's CPU plugin, called with keyword arrays like `session.OnnxModel`."""

    def __init__(self, name: str, path: Path, precision: str, threads: int | None = None,
                 cache: Path | None = None, identity: dict[str, Any] | None = None, weights: dict | None = None,
                 max_shapes: int | None = None):
        self.name = name
        self.max_shapes = DEFAULT_MAX_SHAPES if max_shapes is None else max_shapes  # checked by resolve_backend
        # LoRA-merged initializers ({name: lora.StoredWeight}): they replace the file's constants at each read
        self.weights = {name: w.values for name, w in (weights or {}).items()}
        self.path = Path(path)
        self.precision = precision
        self.providers = ["openvino"]
        self.cache = cache
        self.identity = identity or {}
        self.ir: Path | None = None  # the cache entry whose IR the graph was read from (None: read from model.onnx)
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.model = self._read()  # dropped by each compilation, read again for a new shape
        self.inputs = {port.get_any_name(): _info(port) for port in self.model.inputs}
        self.outputs = {port.get_any_name(): _info(port) for port in self.model.outputs}
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()  # least recently used first
        self._pinned: set[tuple] = set()  # compiled by `compile`: never released
        self._idle: dict[tuple, list] = {}  # idle infer requests per compiled model (they keep their buffers)
        self._lock = threading.Lock()  # one compilation per shape, one thread per request
        logger.info("%s: OpenVINO %s, %s", name, version(), precision)

    def _read(self) -> Any:
        if self.cache is not None and not self.weights:
            model = self._read_ir()
            if model is not None:
                return model
        model = self._read_onnx()
        if self.weights:
            _replace_constants(model, self.weights, self.name)
        return model

    def _read_ir(self) -> Any | None:
        """The graph from the cache's IR (written now from model.onnx when missing), or None: read model.onnx."""
        entry = self.cache / f"{self.name}-{self._ir_key()}"
        for attempt in range(2):  # a damaged entry is rebuilt once
            if not (entry / "model.xml").is_file():
                try:
                    publish_folder(entry, self._write_ir)
                except OSError as exc:  # read-only or full cache: the generation goes on without it
                    logger.warning("%s: could not write the OpenVINO IR to %s (%s)", self.name, entry.parent, exc)
                    return None
            try:
                _check_ir(entry)
                model = core().read_model(str(entry / "model.xml"))  # model.bin memory-mapped (ENABLE_MMAP)
                self.ir = entry
                logger.info("%s: read the OpenVINO IR in %s", self.name, entry)
                return model
            except (RuntimeError, OSError, ValueError) as exc:
                logger.warning("%s: the cached OpenVINO IR %s cannot be used (%s); %s", self.name, entry,
                               _reason(exc), "rebuilding it" if attempt == 0 else "reading model.onnx")
                shutil.rmtree(entry, ignore_errors=True)
        return None

    def _read_onnx(self) -> Any:
        try:
            return core().read_model(str(self.path))
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{self.name}: {self.path} could not be loaded (OpenVINO: {_reason(exc, 300)}). The file is corrupted or "
                "truncated, or its model.onnx_data is missing: re-export the folder with `latentrt export`"
            ) from exc

    def _write_ir(self, folder: Path) -> None:
        model = self._read_onnx()
        import_openvino().save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
        sizes = {name: (folder / name).stat().st_size for name in ("model.xml", "model.bin")}
        (folder / "source.json").write_text(json.dumps({"model": str(self.path.resolve()), "openvino": version(), "bytes": sizes}))

    def _ir_key(self) -> str:
        # the IR is OpenVINO's reading of the ONNX graph: it depends on the files and OpenVINO, not on the CPU
        return entry_key(component=self.name, files=self.identity, openvino=version(), kind="ir")

    def __call__(self, **feeds: NDArray) -> dict[str, NDArray]:
        check_feeds(self.name, self.inputs, feeds)
        compiled, idle = self._compiled_model({name: value.shape for name, value in feeds.items()}, pin=False)
        with self._lock:  # a request must not be shared between threads: take an idle one, or a new one
            request = idle.pop() if idle else compiled.create_infer_request()
        try:
            result = request.infer(feeds)  # outputs copied out of the request (share_outputs=False)
            return {name: result[port] for name, port in zip(self.outputs, compiled.outputs)}
        finally:
            with self._lock:
                idle.append(request)

    def compiled_for(self, name: str, shape: tuple[int, ...]) -> bool:
        """Whether a model compiled in this process takes input `name` at `shape` (the memory guard: no new copy)."""
        with self._lock:
            return any((name, tuple(shape)) in key for key in self._compiled)

    @property
    def compiled_shapes(self) -> int:
        """How many compiled models this network holds (pinned ones included)."""
        with self._lock:
            return len(self._compiled)

    def compile(self, shapes: dict[str, tuple[int, ...]]) -> Any:
        """The compiled model for these input shapes (from this process, the disk cache, or compiled now), pinned:
        kept for the life of the network, outside the `max_shapes` bound of the shapes calls compile on demand."""
        return self._compiled_model(shapes, pin=True)[0]

    def _compiled_model(self, shapes: dict[str, tuple[int, ...]], pin: bool) -> tuple[Any, list]:
        """The compiled model and its list of idle infer requests (a call that outlives an eviction keeps both)."""
        key = tuple(sorted((name, tuple(int(d) for d in shape)) for name, shape in shapes.items()))
        with self._lock:
            if key not in self._compiled:
                if not pin:  # released before compiling: the new copy takes the old one's memory
                    self._evict(keep=self.max_shapes - 1)
                with keeping_locale():
                    self._compiled[key] = self._load_or_compile(dict(key))
            self._compiled.move_to_end(key)
            if pin:
                self._pinned.add(key)
            return self._compiled[key], self._idle.setdefault(key, [])

    def _evict(self, keep: int) -> None:
        """Release the least recently used unpinned compiled models past `keep` (with the lock held). A call still
        running on one keeps it alive until it returns; its infer requests are dropped with it."""
        unpinned = [key for key in self._compiled if key not in self._pinned]
        for key in unpinned[:max(0, len(unpinned) - keep)]:
            del self._compiled[key]
            self._idle.pop(key, None)  # idle infer requests hold the compiled model
            logger.info("%s: released the compiled model for %s (max_compiled_shapes=%d)", self.name, dict(key), self.max_shapes)

    def _load_or_compile(self, shapes: dict[str, tuple[int, ...]]) -> Any:
        ov = import_openvino()
        model, self.model = (self.model if self.model is not None else self._read()), None
        model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
        folder = self._compiled_folder(shapes)
        try:
            if folder is None:
                return core().compile_model(model, DEVICE, self.config)
            if folder.is_dir():
                return self._import(model, folder, shapes)
            return self._compile_into(model, folder)
        finally:
            # The source graph is not kept: its weights (memory-mapped from model.onnx_data or model.bin, all
            # touched by the compilation) would stay resident beside the compiled copy: 3.4 GB for SD 1.5's UNet.
            del model

    def _cache_config(self, folder: Path) -> dict[str, Any]:
        return {**self.config, **CACHE_OPTIONS, "CACHE_DIR": str(folder), "WEIGHTS_PATH": str(self.ir / "model.bin")}

    def _import(self, model: Any, folder: Path, shapes: dict[str, tuple[int, ...]]) -> Any:
        """The compiled model from its folder; OpenVINO compiles (and rewrites the blob) when it cannot import it."""
        before = _blob_stamps(folder)
        try:
            compiled = core().compile_model(model, DEVICE, self._cache_config(folder))
        except RuntimeError as exc:  # an entry OpenVINO cannot even fall back from
            logger.warning("%s: the cached compiled model %s cannot be used (%s); compiling without the cache",
                           self.name, folder, _reason(exc))
            shutil.rmtree(folder, ignore_errors=True)
            return core().compile_model(model, DEVICE, self.config)
        if before and _blob_stamps(folder) == before:
            logger.info("%s: compiled model for %s imported from %s", self.name, shapes, folder)
        else:
            logger.warning("%s: the cached compiled model %s cannot be used (corrupt or truncated); compiled it again "
                           "and rewrote it", self.name, folder)
        return compiled

    def _compile_into(self, model: Any, folder: Path) -> Any:
        """Compile, OpenVINO writing its blob into a temporary folder that is then renamed to `folder`."""
        compiled = None

        def build(tmp: Path) -> None:
            nonlocal compiled
            compiled = core().compile_model(model, DEVICE, self._cache_config(tmp))
            if not _blob_stamps(tmp):
                raise OSError(f"OpenVINO wrote no compiled model to {tmp}")

        try:
            publish_folder(folder, build)
        except OSError as exc:  # a read-only or full cache must not stop a generation
            logger.warning("%s: could not write the compiled model to %s (%s)", self.name, folder.parent, exc)
        return compiled if compiled is not None else core().compile_model(model, DEVICE, self.config)

    def _compiled_folder(self, shapes: dict[str, tuple[int, ...]]) -> Path | None:
        """Where this shape's compiled model is cached: inside the IR's entry (None: no IR, no compiled cache)."""
        if self.ir is None:
            return None
        key = entry_key(shapes=shapes, config=self.config, cache=CACHE_OPTIONS, openvino=version(), cpu=cpu_signature())
        return self.ir / f"compiled-{key}"


def _check_ir(entry: Path) -> None:
    """An IR entry's files have the sizes its source.json recorded (a truncated model.bin would be mapped as it is)."""
    recorded = json.loads((entry / "source.json").read_text())["bytes"]
    for name, size in recorded.items():
        if (entry / name).stat().st_size != size:
            raise ValueError(f"{name} is {(entry / name).stat().st_size} bytes, {size} were written")


def _blob_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """{blob: (size, mtime)} of the compiled models OpenVINO keeps in a cache folder (how a rewrite is seen)."""
    try:
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.blob")}
    except OSError:
        return {}


def _reason(exc: Exception, limit: int = 200) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:limit]


def _info(port) -> TensorInfo:
    try:
        dtype = np.dtype(port.get_element_type().to_dtype())
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"graph tensor {port.get_any_name()!r} has unsupported type {port.get_element_type()}") from exc
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorInfo(port.get_any_name(), dtype, shape)


def _replace_constants(model, weights: dict[str, Any], name: str) -> None:
    """Swap the Constant nodes OpenVINO made of the named initializers for the given arrays (same shape and type)."""
    from openvino import op

    pending = dict(weights)
    for node in model.get_ops():
        if node.get_type_name() == "Constant" and node.get_friendly_name() in pending:
            value = pending.pop(node.get_friendly_name())
            replacement = op.Constant(np.ascontiguousarray(value))
            replacement.set_friendly_name(node.get_friendly_name())
            node.output(0).replace(replacement.output(0))
    if pending:
        raise ModelLoadError(f"{name}: OpenVINO's graph has no constant named {next(iter(pending))!r} to apply a LoRA to "
                             f"({len(pending)} of {len(weights)} missing); use provider='cpu' for LoRAs on this folder")
