"""Which backend runs the networks, at which precision: resolved once per pipeline, before anything loads.

    provider  "auto"      OpenVINO when the openvino extra is installed, else ONNX Runtime's CPU provider
              "openvino"  latentrt's OpenVINO backend (backends/openvino.py)
              anything else: an ONNX Runtime execution provider (session.PROVIDERS, or its full name)
    precision "auto"      the fastest precision the backend runs natively on this CPU: bf16 under OpenVINO
                          where its CPU plugin has bf16 (AMX or AVX512-BF16), fp32 everywhere else
              "fp32"      parity with PyTorch (the exported graphs run as they are)
              "bf16"      OpenVINO only, and only on a CPU with bf16; anything else is an error, never a
                          silent fallback

Caching (`cache_dir=`, `$LATENTRT_CACHE`, default `~/.cache/latentrt`; `use_cache=False` for none): ONNX Runtime's
CPU sessions always cache their optimized graph with prepacked weights there (session.optimized_copy: a load
of SD 1.5's UNet goes from 11 s to about 1 s); OpenVINO's compiled models only when a folder is named
explicitly (`compiled_model_cache`: measured slower than compiling on CPU).

A folder exported with `--precision fp16` (for GPUs) runs on the CPU too: ONNX Runtime's CPU provider inserts
Casts around each node it has no fp16 kernel for, and OpenVINO converts the graph to its inference precision;
neither is faster than the fp32 folder, so each load warns and says to use an fp32 folder on the CPU.

A folder whose networks were quantized (`latentrt quantize`) runs its int8 nodes as int8 at either precision;
`Backend.label` says so ("int8+fp32").
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from latentrt.runtime.cache import cache_root, files_identity
from latentrt.runtime.folder import ComponentFiles, ModelFolder
from latentrt.runtime.session import OnnxModel, resolve_providers

logger = logging.getLogger(__name__)

PROVIDER_CHOICES = "auto, cpu, openvino, cuda, tensorrt, rocm, directml, coreml"
PRECISIONS = ("auto", "fp32", "bf16")


def compiled_model_cache(cache_dir: str | Path | None, use_cache: bool) -> Path | None:
    """OpenVINO's compiled-model folder, or None: opt-in, with `cache_dir=` or $LATENTRT_CACHE.

    Not on by default because it does not pay on CPU: measured on SD 1.5's UNet (OpenVINO 2026.4, 2 vCPUs),
    importing its 3.4 GB compiled blob took 10-15 s where compiling it from model.onnx took 4-9 s (the CPU
    plugin re-packs the weights either way, and its blob stores them at fp32), at 3.9 GB of disk per shape.
    """
    if not use_cache or (cache_dir is None and not os.environ.get("LATENTRT_CACHE")):
        return None
    return cache_root(cache_dir) / "openvino"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@dataclass(frozen=True)
class Backend:
    provider: str  # "openvino", or an ONNX Runtime provider ("cpu", "cuda", ...)
    precision: str  # "fp32" or "bf16": the precision of the float computations
    threads: int | None = None
    cache: Path | None = None  # the cache root (ONNX Runtime's optimized copies); None: no cache
    compiled_cache: Path | None = None  # OpenVINO's compiled-model folder; None: none (opt-in)

    def open(self, files: ComponentFiles, weights: dict | None = None):
        """The network's session; `weights` ({initializer: lora.StoredWeight}, LoRA-merged) replace the file's values."""
        if (files.manifest or {}).get("precision") == "fp16" and self.provider in ("cpu", "openvino"):
            logger.warning("%s is an fp16 graph (export --precision fp16, made for GPUs): on the CPU it runs in fp32 "
                           "between fp16 casts, no faster than fp32 and fp16-rounded; for CPU use an fp32 folder "
                           "(latentrt export without --precision fp16)", files.model)
        if self.provider == "openvino":
            from latentrt.runtime.backends.openvino import OpenVinoModel

            return OpenVinoModel(files.name, files.model, self.precision, self.threads,
                                 None if weights else self.compiled_cache, files_identity(files.model, files.manifest),
                                 weights=weights)
        return OnnxModel(files.name, files.model, resolve_providers(self.provider), self.threads,
                         None if weights else self.cache, files_identity(files.model, files.manifest), weights=weights)

    def label(self, folder: ModelFolder) -> str:
        """The precision a generation ran at, as the PNG, `result.parameters` and the bench report give it."""
        precisions = {str((c.manifest or {}).get("precision", "")) for c in folder.components.values()}
        if any(p.startswith("int8") for p in precisions):
            return f"int8+{self.precision}"
        if "fp16" in precisions:  # `export --precision fp16`: the graphs' own precision
            return "fp16" if self.precision == "fp32" else f"fp16+{self.precision}"
        return self.precision


def resolve_backend(provider: str = "auto", precision: str = "auto", threads: int | None = None,
                    cache_dir: str | Path | None = None, use_cache: bool = True) -> Backend:
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"provider must be a name ({PROVIDER_CHOICES}), got {provider!r}")
    precision, provider = precision.lower(), (provider.lower() if provider.lower() in ("auto", "openvino") else provider)
    if provider == "auto":
        provider = "openvino" if openvino_installed() else "cpu"
    if provider == "openvino":
        from latentrt.runtime.backends.openvino import supports_bf16

        if precision == "auto":
            precision = "bf16" if supports_bf16() else "fp32"
        elif precision == "bf16" and not supports_bf16():
            raise ValueError(
                "precision bf16 needs a CPU with bf16 instructions (AMX or AVX512-BF16), and OpenVINO finds none "
                "on this one: use precision fp32 (or auto)"
            )
        return Backend("openvino", precision, threads, None, compiled_model_cache(cache_dir, use_cache))
    resolve_providers(provider)  # an unknown or unavailable provider is an error here, before any loading
    if precision == "bf16":
        raise ValueError(
            f"ONNX Runtime has no bf16 kernels for the {provider!r} provider: use --provider openvino "
            '(pip install "latentrt[openvino]") for bf16, or precision fp32'
        )
    return Backend(provider, "fp32", threads, cache_root(cache_dir) if use_cache else None)
