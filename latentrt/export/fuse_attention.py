"""Fuse the UNet's exported attention into ONNX Runtime's MultiHeadAttention (com.microsoft).

The TorchScript exporter writes scaled_dot_product_attention as plain ops:

    q = Transpose(Reshape(q_proj), [0,2,1,3]) * sqrt(scale)        # (B, H, S, d)
    k = Transpose(Reshape(k_proj), [0,2,3,1]) * sqrt(scale)        # (B, H, d, T)
    v = Transpose(Reshape(v_proj), [0,2,1,3])                      # (B, H, T, d)
    out = Reshape(Transpose(MatMul(Softmax(MatMul(q, k)), v), [0,2,1,3]))   # (B, S, H*d)

which materialises the (B, H, S, T) score matrix twice (scores and probabilities): 2 x 1 GB per
self-attention at 512x512 (S = T = 4096, H = 8, CFG batch 2). ONNX Runtime's MultiHeadAttention takes
q_proj, k_proj and v_proj directly; on CPU it runs a tiled (flash) attention that never holds the
whole matrix. The scale is the same 1/sqrt(d) (diffusers' default, MultiHeadAttention's default).

The match is strict: anything that differs from the pattern above (a mask, another scale, a bias, a
head count that is not a constant) is left as it is. The exporter validates the result against
PyTorch like any other graph.
"""

from __future__ import annotations

import numpy as np

DOMAIN = "com.microsoft"


class _Graph:
    def __init__(self, graph):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.initializers = {t.name: t for t in graph.initializer}

    def parent(self, node, index: int, op_type: str):
        p = self.producer.get(node.input[index]) if index < len(node.input) else None
        return p if p is not None and p.op_type == op_type else None

    def only_child(self, node, op_type: str):
        children = self.consumers.get(node.output[0], [])
        return children[0] if len(children) == 1 and children[0].op_type == op_type else None

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None


def _perm(node) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _heads_projection(g: _Graph, transpose, perm: list[int]):
    """Transpose(Reshape(x, [B, -1, H, d]), perm) -> (x, H), or None."""
    if transpose is None or _perm(transpose) != perm:
        return None
    reshape = g.parent(transpose, 0, "Reshape")
    if reshape is None:
        return None
    concat = g.parent(reshape, 1, "Concat")
    if concat is None or len(concat.input) != 4:
        return None
    heads = g.constant(concat.input[2])
    if heads is None or heads.size != 1 or int(heads.reshape(-1)[0]) <= 0:
        return None
    return reshape.input[0], int(heads.reshape(-1)[0])


def _scaled(g: _Graph, scores, index: int):
    """The Transpose feeding score MatMul input ``index`` through Mul(transpose, Sqrt(...)), or None.

    SDPA's default scale 1/sqrt(d) is exported as a Sqrt computed from the head size on each side;
    an explicit scale (any other value) is a constant instead, and is left unfused."""
    mul = g.parent(scores, index, "Mul")
    if mul is None:
        return None
    factors = [g.producer.get(x) for x in mul.input]
    if not any(f is not None and f.op_type == "Sqrt" for f in factors):
        return None
    return next((f for f in factors if f is not None and f.op_type == "Transpose"), None)


def fuse_attention(model) -> int:
    """Rewrite ``model`` (an onnx.ModelProto, in place); returns how many attentions were fused."""
    from onnx import helper

    g = _Graph(model.graph)
    fused = {}  # output name of the merging Reshape -> the MultiHeadAttention node that replaces it
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
        scores = g.parent(softmax, 0, "MatMul")
        mix = g.only_child(softmax, "MatMul")
        if axis not in (-1, 3) or scores is None or mix is None or mix.input[0] != softmax.output[0]:
            continue
        q = _heads_projection(g, _scaled(g, scores, 0), [0, 2, 1, 3])
        k = _heads_projection(g, _scaled(g, scores, 1), [0, 2, 3, 1])
        v = _heads_projection(g, g.parent(mix, 1, "Transpose"), [0, 2, 1, 3])
        back = g.only_child(mix, "Transpose")
        merge = g.only_child(back, "Reshape") if back is not None and _perm(back) == [0, 2, 1, 3] else None
        if None in (q, k, v, merge) or not q[1] == k[1] == v[1]:
            continue
        fused[merge.output[0]] = helper.make_node(
            "MultiHeadAttention", [q[0], k[0], v[0]], [merge.output[0]], name=f"{softmax.name}/MultiHeadAttention",
            domain=DOMAIN, num_heads=q[1],
        )
    if not fused:
        return 0
    # in the Reshape's place: its inputs' producers all come earlier, so the order stays topological
    nodes = [fused.get(n.output[0], n) if n.op_type == "Reshape" else n for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _remove_dead_nodes(model.graph)  # the unfused chain
    if not any(op.domain == DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return len(fused)


def _remove_dead_nodes(graph) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = {i for n in graph.node for i in n.input}
    dead = [t for t in graph.initializer if t.name not in used]
    for t in dead:
        graph.initializer.remove(t)
