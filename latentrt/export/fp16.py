"""fp16 export: a validated fp32 graph converted to fp16, with fp32 islands where fp16 loses or overflows.

`latentrt export --precision fp16` exports and validates each component in fp32 as usual, then converts the
graph with onnxruntime's `convert_float_to_float16(keep_io_types=True)`: the graph's inputs and outputs stay
float32 (Casts inside the graph), so the runtime feeds an fp16 folder exactly like an fp32 one.

What stays fp32, and why (measured on the tiny models, tests/test_export_fp16.py):
- Softmax (every one left in the graph: CLIP's attention, and the UNet's under --plain-attention). fp16 exp()
  overflows past 11; the inputs are cast to fp32 and back around it.
- The timestep's sinusoidal embedding (everything that feeds a Sin or Cos, from the `timestep` input on).
  t * frequency is ~1000 rad at t = 1000, where fp16's spacing is 0.5 rad; rounding a timestep such as 981.3
  to fp16 moved the tiny UNet's output by 5% of its range. diffusers computes this in fp32 too.
- With `upcast_attention` (SD 2.x): the attention score path, which is where SD 2.1 overflows fp16
  (q·k past 65504). Fused attention: the MultiHeadAttention node runs in fp32; plain attention: the score
  MatMul and the Softmax do.
- Not normalisations: keeping GroupNorm (InstanceNormalization) and LayerNormalization in fp32 changed the
  tiny UNet's error by < 1%, and ONNX Runtime's fp16 norm kernels accumulate in fp32 anyway.

The converter also puts an fp32 -> fp16 -> fp32 Cast pair between two kept-fp32 nodes (and after the cast of
a float32 graph input), which would round every island's values to fp16 after all: `_skip_round_trips`
wires those consumers to the fp32 value itself.

A VAE whose config says `force_upcast` (SD 1.5's, SD 2.1's and SDXL's do: their decoders overflow fp16 at
512x512 and up) is not converted: its vae_decoder and vae_encoder stay fp32, as diffusers upcasts them.
"""

from __future__ import annotations

import logging

from latentrt.export import specs

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
ISLAND_OPS = ("Softmax",)  # op types always kept fp32
FP16_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "unet_shallow")  # the VAE follows force_upcast
VAE_COMPONENTS = tuple(spec.name for spec in specs.VAE_COMPONENTS)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown export precision {precision!r}: choose fp32 (the default) or fp16")
    return precision


def converts(component: str, vae_force_upcast: bool) -> bool:
    """Whether an fp16 export stores this component in fp16 (the VAE only when its config allows it)."""
    return component in FP16_COMPONENTS or (component in VAE_COMPONENTS and not vae_force_upcast)


def convert_to_fp16(model, upcast_attention: bool = False) -> dict:
    """Convert ``model`` (an onnx.ModelProto with its weights, any size) to fp16 in place, float32 IO kept.

    Returns what the manifest records: how many nodes each island keeps in fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    islands = fp32_islands(model.graph, upcast_attention)
    _annotate_types(model)  # the converter's own shape inference serializes the model (2 GB limit) and stops at
    # com.microsoft ops; without a type for every tensor it would leave an island's inputs in fp16
    blocked = [name for names in islands.values() for name in names]
    convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True, op_block_list=[],
                             node_block_list=blocked)
    _skip_round_trips(model.graph, set(blocked))
    return {island: len(names) for island, names in islands.items()}


def fp32_islands(graph, upcast_attention: bool) -> dict[str, list[str]]:
    """{island: names of the nodes it keeps in fp32} (see the module docstring)."""
    producer = {out: node for node in graph.node for out in node.output}
    islands = {
        "softmax": [n.name for n in graph.node if n.op_type in ISLAND_OPS],
        "time_embedding": sorted(_ancestors(producer, [n for n in graph.node if n.op_type in ("Sin", "Cos")])),
    }
    if upcast_attention:
        scores = [producer[n.input[0]].name for n in graph.node
                  if n.op_type == "Softmax" and n.input[0] in producer and producer[n.input[0]].op_type == "MatMul"]
        fused = [n.name for n in graph.node if n.op_type == "MultiHeadAttention"]
        islands["attention_scores"] = scores + fused
    return islands


def _ancestors(producer: dict, nodes: list) -> set[str]:
    seen: set[str] = set()
    while nodes:
        node = nodes.pop()
        if node.name not in seen:
            seen.add(node.name)
            nodes += [producer[i] for i in node.input if i in producer]
    return seen


def _annotate_types(model) -> None:
    """Write every tensor's element type into ``model.graph.value_info`` (types only: ONNX Runtime infers shapes).

    onnx's shape inference runs on a copy without the weights (each large initializer becomes a graph input of
    its type and shape), with com.microsoft MultiHeadAttention stood in for by an Identity of its query
    (same element type), so a > 2 GB UNet and a fused-attention graph are typed alike."""
    import onnx
    from onnx import helper

    graph = model.graph
    large = [t for t in graph.initializer if len(t.raw_data) > 1024 or t.data_location == onnx.TensorProto.EXTERNAL]
    large_names = {t.name for t in large}
    nodes = [helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name)
             if n.op_type == "MultiHeadAttention" else n for n in graph.node]
    skeleton = helper.make_graph(
        nodes, graph.name,
        list(graph.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large],
        list(graph.output),
        initializer=[t for t in graph.initializer if t.name not in large_names],
    )
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    inferred = onnx.shape_inference.infer_shapes(helper.make_model(skeleton, opset_imports=opsets, ir_version=model.ir_version))
    del graph.value_info[:]
    for info in inferred.graph.value_info:
        graph.value_info.append(helper.make_tensor_value_info(info.name, info.type.tensor_type.elem_type, None))


def _skip_round_trips(graph, blocked: set[str]) -> int:
    """Feed Cast(to fp32)(Cast(to fp16)(x)) with x itself when x is fp32 (a kept node's output or a float32 graph
    input), so that values passing between fp32 nodes are not rounded to fp16; the unused Casts are removed."""
    from onnx import TensorProto

    producer = {out: node for node in graph.node for out in node.output}
    fp32_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    outputs = {o.name for o in graph.output}
    replaced = {}  # the round trip's output -> the fp32 value it started from
    for node in graph.node:
        inner = producer.get(node.input[0]) if cast_to(node) == TensorProto.FLOAT else None
        if inner is None or cast_to(inner) != TensorProto.FLOAT16:
            continue
        source = inner.input[0]
        if source in fp32_inputs or (source in producer and producer[source].name in blocked):
            if node.output[0] in outputs:
                node.input[0] = source  # a Cast fp32 -> fp32 (the graph's output keeps its name)
            else:
                replaced[node.output[0]] = source
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replaced:
                node.input[i] = replaced[name]
    # the Casts nothing reads now (the converter appends nodes out of order: no topological walk here)
    used = {i for node in graph.node for i in node.input} | outputs
    while unused := [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]:
        for node in unused:
            graph.node.remove(node)
        used = {i for node in graph.node for i in node.input} | outputs
    return len(replaced)
