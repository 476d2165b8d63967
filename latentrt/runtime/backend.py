"""Which backend runs the networks, at which precision: resolved once per pipeline, before anything loads.

    provider  "auto"      what `auto_choice` measured fastest for this folder on this kind of CPU (docs/backends.md,
                          "auto"): OpenVINO at bf16 for a full-size UNet on a CPU with bf16 (AMX, AVX512-BF16),
                          ONNX Runtime's CPU provider everywhere else (AVX2 or AVX-512 without bf16, small UNets
                          whose time is OpenVINO's compilation, no openvino extra)
              "openvino"  latentrt's OpenVINO backend (backends/openvino.py)
              anything else: an ONNX Runtime execution provider (session.PROVIDERS, or its full name)
    precision "auto"      the fastest precision the backend runs natively on this CPU: bf16 under OpenVINO
                          where its CPU plugin has bf16 (AMX or AVX512-BF16), fp32 everywhere else; an int8 folder
                          (`latentrt quantize`, `export --int8`) runs its int8 nodes as int8 either way
              "fp32"      parity with PyTorch (the exported graphs run as they are)
              "bf16"      OpenVINO only, and only on a CPU with bf16; anything else is an error, never a
                          silent fallback

OpenVINO compiles each network per input shape: shapes compiled ahead (`Pipeline.compile`, a server's start) are
kept; those calls compile on demand are kept up to `max_compiled_shapes` per network (default 8), the least recently
used released past it, so that a process that sees many sizes stays flat in memory. ONNX Runtime ignores it.

Caching (`cache_dir=`, `$LATENTRT_CACHE`, default `~/.cache/latentrt`; `use_cache=False` for none): ONNX Runtime's
CPU sessions always cache their optimized graph with prepacked weights there (session.optimized_copy: a load
of SD 1.5's UNet goes from 11 s to about 1 s); OpenVINO its graph as IR and each shape's compiled model without
weights (`compiled_model_cache`, backends/openvino.py).

A folder exported with `--precision fp16` (for GPUs) runs on the CPU too: ONNX Runtime's CPU provider inserts
Casts around each node it has no fp16 kernel for, and OpenVINO converts the graph to its inference precision;
neither is faster than the fp32 folder, so each load warns and says to use an fp32 folder on the CPU.

ONNX Runtime only (an error with the openvino provider, which is not ONNX Runtime; "auto" then means ONNX Runtime):

    io_binding        the UNet (and DeepCache's shallow UNet) runs on IO binding: its conditioning copied to the
                      provider's device once per generation, latents and outputs in buffers kept there, only the
                      latents the NumPy scheduler needs copied each step (session.IoBinding); same images
    cuda_graph        the UNet captured in a CUDA graph and replayed (cuda or tensorrt provider; implies io_binding;
                      one shape per pipeline)
    provider_options  {key: value} for the first provider of the chain (InferenceSession's provider_options), e.g.
                      TensorRT's trt_engine_cache_enable, trt_engine_cache_path, trt_fp16_enable

A folder whose networks were quantized (`latentrt quantize`) runs its int8 nodes as int8 at either precision;
`Backend.label` says so ("int8+fp32").
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentrt.runtime.auto_backend import auto_choice
from latentrt.runtime.cache import cache_root, files_identity
from latentrt.runtime.folder import ComponentFiles, ModelFolder
from latentrt.runtime.session import CUDA_GRAPH_OPTIONS, OnnxModel, resolve_providers

logger = logging.getLogger(__name__)

PROVIDER_CHOICES = "auto, cpu, openvino, cuda, tensorrt, rocm, directml, coreml"
PRECISIONS = ("auto", "fp32", "bf16")
BOUND_NETWORKS = ("unet", "unet_shallow")  # the networks the denoising loop calls: IO binding and CUDA graphs


def compiled_model_cache(cache_dir: str | Path | None, use_cache: bool) -> Path | None:
    """OpenVINO's cache folder (IR and weightless compiled models, backends/openvino.py), or None with use_cache=False."""
    return cache_root(cache_dir) / "openvino" if use_cache else None


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@dataclass(frozen=True)
class Backend:
    provider: str  # "openvino", or an ONNX Runtime provider ("cpu", "cuda", ...)
    precision: str  # "fp32" or "bf16": the precision of the float computations
    threads: int | None = None
    cache: Path | None = None  # the cache root (ONNX Runtime's optimized copies); None: no cache
    compiled_cache: Path | None = None  # OpenVINO's cache folder (IR, compiled models); None: none
    io_binding: bool = False  # ONNX Runtime's IO binding for BOUND_NETWORKS
    cuda_graph: bool = False  # BOUND_NETWORKS captured in a CUDA graph (with io_binding)
    provider_options: dict[str, Any] | None = None  # for the first ONNX Runtime provider of the chain
    max_compiled_shapes: int | None = None  # OpenVINO: on-demand compiled shapes kept per network (None: the default)
    reason: str = ""  # why: the auto rule's line when provider or precision was "auto", else "asked"

    def open(self, files: ComponentFiles, weights: dict | None = None):
        """The network's session; `weights` ({initializer: lora.StoredWeight}, LoRA-merged) replace the file's values."""
        if files.precision == "fp16" and self.provider in ("cpu", "openvino"):
            logger.warning("%s is an fp16 graph (export --precision fp16, made for GPUs): on the CPU it runs in fp32 "
                           "between fp16 casts, no faster than fp32 and fp16-rounded; for CPU use an fp32 folder "
                           "(latentrt export without --precision fp16)", files.model)
        if self.provider == "openvino":
            from latentrt.runtime.backends.openvino import OpenVinoModel

            return OpenVinoModel(files.name, files.model, self.precision, self.threads,
                                 None if weights else self.compiled_cache, files_identity(files.model, files.manifest),
                                 weights=weights, max_shapes=self.max_compiled_shapes)
        bound = files.name in BOUND_NETWORKS
        return OnnxModel(files.name, files.model, resolve_providers(self.provider), self.threads,
                         None if weights else self.cache, files_identity(files.model, files.manifest), weights=weights,
                         provider_options=self.provider_options, io_binding=self.io_binding and bound,
                         cuda_graph=self.cuda_graph and bound)

    def label(self, folder: ModelFolder) -> str:
        """The precision a generation ran at, as the PNG, `result.parameters` and the bench report give it."""
        if any(c.quantized for c in folder.components.values()):
            return f"int8+{self.precision}"
        if any(c.precision == "fp16" for c in folder.components.values()):  # `export --precision fp16`: the graphs' own precision
            return "fp16" if self.precision == "fp32" else f"fp16+{self.precision}"
        return self.precision


def parse_provider_options(texts: list[str] | None) -> dict[str, str] | None:
    """["trt_fp16_enable=True", "device_id=1"] (the CLI's repeated --provider-option) -> {key: value}; None for none."""
    options = {}
    for text in texts or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--provider-option takes KEY=VALUE (for example trt_fp16_enable=True), got {text!r}")
        options[key.strip()] = value.strip()
    return options or None


def resolve_backend(provider: str = "auto", precision: str = "auto", threads: int | None = None,
                    cache_dir: str | Path | None = None, use_cache: bool = True, io_binding: bool = False,
                    cuda_graph: bool = False, provider_options: dict[str, Any] | None = None,
                    max_compiled_shapes: int | None = None, folder: ModelFolder | None = None) -> Backend:
    """The backend for these choices; "auto" follows `auto_backend.auto_choice` for `folder` (None: a full-size fp32
    folder) on this CPU. Explicit choices are taken as they are, or refused with the reason."""
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if max_compiled_shapes is not None and (isinstance(max_compiled_shapes, bool) or not isinstance(max_compiled_shapes, int)
                                            or max_compiled_shapes < 1):
        raise ValueError(f"max_compiled_shapes must be a positive integer (compiled shapes kept per network), got {max_compiled_shapes!r}")
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"provider must be a name ({PROVIDER_CHOICES}), got {provider!r}")
    if provider_options is not None and not (isinstance(provider_options, dict) and all(isinstance(k, str) for k in provider_options)):
        raise ValueError(f"provider_options must be a dict of option names to values, got {provider_options!r}")
    onnxruntime_options = [name for name, asked in (("io_binding", io_binding), ("cuda_graph", cuda_graph),
                                                    ("provider_options", provider_options)) if asked]
    precision, provider = precision.lower(), (provider.lower() if provider.lower() in ("auto", "openvino") else provider)
    reason = "asked"
    if provider == "auto":
        provider, reason = _auto_provider(folder, precision, onnxruntime_options)
    if provider == "openvino" and onnxruntime_options:
        raise ValueError(
            f"{' and '.join(onnxruntime_options)} configure ONNX Runtime, and the openvino provider is latentrt's OpenVINO "
            "backend, not ONNX Runtime: use an ONNX Runtime provider (cpu, cuda, tensorrt, ...) or leave them out"
        )
    if provider == "openvino":
        from latentrt.runtime.backends.openvino import supports_bf16

        if precision == "auto":
            precision = "bf16" if supports_bf16() else "fp32"
            reason = reason if reason != "asked" else f"OpenVINO asked; precision auto: {precision}"
        elif precision == "bf16" and not supports_bf16():
            raise ValueError(
                "precision bf16 needs a CPU with bf16 instructions (AMX or AVX512-BF16), and OpenVINO finds none "
                "on this one: use precision fp32 (or auto)"
            )
        return Backend("openvino", precision, threads, None, compiled_model_cache(cache_dir, use_cache),
                       max_compiled_shapes=max_compiled_shapes, reason=reason)
    chain = resolve_providers(provider)  # an unknown or unavailable provider is an error here, before any loading
    if precision == "bf16":
        raise ValueError(
            f"ONNX Runtime has no bf16 kernels for the {provider!r} provider: use --provider openvino "
            '(pip install "latentrt[openvino]") for bf16, or precision fp32'
        )
    if cuda_graph and chain[0] not in CUDA_GRAPH_OPTIONS:
        raise ValueError(
            f"cuda_graph needs the cuda or tensorrt provider (onnxruntime-gpu on an NVIDIA GPU), not {provider!r} "
            f"({chain[0]}): leave cuda_graph out, or use --provider cuda"
        )
    return Backend(provider, "fp32", threads, cache_root(cache_dir) if use_cache else None,
                   io_binding=bool(io_binding or cuda_graph), cuda_graph=bool(cuda_graph),
                   provider_options=dict(provider_options) if provider_options else None, reason=reason)


def _auto_provider(folder: ModelFolder | None, precision: str, onnxruntime_options: list[str]) -> tuple[str, str]:
    """(provider, why) for provider "auto" at this precision."""
    if onnxruntime_options:  # ONNX Runtime's own options ask for ONNX Runtime
        return "cpu", f"ONNX Runtime: {' and '.join(onnxruntime_options)} asked"
    if precision == "bf16":  # only OpenVINO runs bf16 (an error below on a CPU without it)
        return ("openvino", "OpenVINO: bf16 asked") if openvino_installed() else ("cpu", "bf16 asked")
    def bf16() -> bool:  # imports OpenVINO: asked only where the rule needs it
        from latentrt.runtime.backends.openvino import supports_bf16

        return supports_bf16()

    choice = auto_choice(folder, openvino_installed(), bf16)
    if precision == "fp32" and choice.provider == "openvino":  # fp32 asked where the rule picked OpenVINO bf16
        return "openvino", choice.reason.replace("OpenVINO bf16", "OpenVINO (fp32 asked)", 1)
    return choice.provider, choice.reason
