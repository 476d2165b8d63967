"""Lossless weight compaction: store fp32 weights whose values are exact in fp16 as fp16.

Many published checkpoints are fp16 (and so is the shipped shapes model): loaded as fp32 for export,
every weight is still an fp16 value, so an fp32 ONNX file spends half its bytes on zero mantissa bits.
Each such initializer is stored as fp16 and followed by a Cast back to fp32 at the top of the graph:
the computation stays fp32 and bit-identical, and ONNX Runtime folds the Casts when it loads the graph.
Initializers that are not exact in fp16 are left alone, so the pass never changes a result.
"""

from __future__ import annotations

import numpy as np

MIN_ELEMENTS = 16  # scalars and tiny shape constants are not worth a Cast node


def store_exact_fp16(model) -> int:
    """Rewrite ``model`` (an onnx.ModelProto, in place); returns how many initializers went to fp16."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < MIN_ELEMENTS:
            continue
        half = values.astype(np.float16)
        # bitwise comparison: NaN payloads and signed zeros count too
        if not np.array_equal(half.astype(np.float32).view(np.uint32), values.view(np.uint32)):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [init.name], [name], name=f"{name}__to_fp32", to=TensorProto.FLOAT))
    if casts:
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return len(casts)
