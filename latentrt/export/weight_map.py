"""Which ONNX initializer holds each diffusers weight: the map LoRA needs, found at export time by content.

The TorchScript exporter keeps a Conv's weight under its parameter name, but writes a Linear as MatMul with a
transposed copy named `onnx::MatMul_1234`, and the compact-weights rewrite stores exact-fp16 weights as
`<name>__fp16` behind a Cast. Guessing that at run time is fragile; matching by content at export is exact: every
Linear (2-D) and Conv (4-D) weight of the torch model is fingerprinted as it is and transposed, and every
initializer of the exported graph is looked up. A weight whose fingerprint is not unique (two equal tensors, such
as zero-initialised layers) is left out of the map rather than guessed.

The manifest stores, per component, `"weights": {diffusers name: [initializer, layout, dtype, shape, file,
offset]}` with layout "same" (Conv, Gemm with transB) or "transposed" (MatMul: the initializer is W.T), and where
the initializer's raw little-endian bytes are: `model.onnx_data` at the external-data offset, or inside
`model.onnx` itself (found by content, kept only when unique). The runtime reads and patches weights from that
alone, without the onnx package (the wall between export and runtime).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from latentrt.export.torch_models import load_component
from latentrt.runtime.lora import LORA_COMPONENTS


def _digest(values: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(values, dtype=np.float32).tobytes(), digest_size=16).digest()


def fingerprint(model) -> dict[bytes, tuple[str, str] | None]:
    """{digest: (parameter name, layout)} of the torch model's 2-D and 4-D weights; None for a digest seen twice."""
    prints: dict[bytes, tuple[str, str] | None] = {}

    def add(key: bytes, value: tuple[str, str]) -> None:
        prints[key] = None if key in prints else value

    for name, parameter in model.named_parameters():
        if not name.endswith(".weight") or parameter.ndim not in (2, 4):
            continue
        values = parameter.detach().float().cpu().numpy()
        add(_digest(values), (name, "same"))
        if values.ndim == 2 and values.shape[0] != 1 and values.shape[1] != 1:
            add(_digest(values.T), (name, "transposed"))
    return prints


def weight_map(onnx_model, prints: dict[bytes, tuple[str, str] | None]) -> dict[str, list[str]]:
    """{parameter name: [initializer name, layout, dtype]} for the initializers whose content is a fingerprinted
    weight (call before any rewrite that changes initializers' values or names; see `rename_compacted`)."""
    from onnx import numpy_helper

    found: dict[str, list[str]] = {}
    for init in onnx_model.graph.initializer:
        if len(init.dims) not in (2, 4):
            continue
        values = numpy_helper.to_array(init)
        match = prints.get(_digest(values))
        if match is not None and match[0] not in found:
            found[match[0]] = [init.name, match[1], str(values.dtype)]
    return found


def locate(folder: Path, found: dict[str, list[str]]) -> dict[str, list]:
    """Add the shape, file and byte offset of each mapped initializer in the saved component folder."""
    import onnx

    path = Path(folder) / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    data = path.read_bytes()
    by_name = {init.name: init for init in model.graph.initializer}
    located = {}
    for param, (name, layout, dtype) in found.items():
        init = by_name.get(name)
        if init is None:
            continue
        shape = [int(d) for d in init.dims]
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in init.external_data}
            located[param] = [name, layout, dtype, shape, info["location"], int(info.get("offset", 0))]
        elif init.raw_data:
            start = data.find(init.raw_data)
            if start >= 0 and data.find(init.raw_data, start + 1) < 0:
                located[param] = [name, layout, dtype, shape, "model.onnx", start]
    return located


def add_weight_maps(src: Path, folder: Path, components=LORA_COMPONENTS) -> dict[str, int]:
    """Write the `weights` maps into an exported folder's manifest from the diffusers folder it was exported from
    (for folders exported before the map existed, such as the shipped model's first export); {component: layers}."""
    import json

    import onnx

    manifest_path = Path(folder) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    counts = {}
    for name in components:
        if name not in manifest["components"]:
            continue
        prints = fingerprint(load_component(Path(src), name, projection=name == "text_encoder_2"))
        model = onnx.load(str(Path(folder) / name / "model.onnx"))
        manifest["components"][name]["weights"] = locate(Path(folder) / name, weight_map(model, prints))
        counts[name] = len(manifest["components"][name]["weights"])
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return counts


def rename_compacted(found: dict[str, list[str]], onnx_model) -> dict[str, list[str]]:
    """After the compact-weights rewrite: weights now stored as `<initializer>__fp16` are mapped there (float16)."""
    names = {init.name for init in onnx_model.graph.initializer}
    return {param: ([f"{init}__fp16", layout, "float16"] if f"{init}__fp16" in names and init not in names
                    else [init, layout, dtype])
            for param, (init, layout, dtype) in found.items()}
