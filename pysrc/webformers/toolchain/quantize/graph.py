"""Graph surgery the quantizers share: find nodes and initializers of a webformers-exported graph
(``lm_head/gemm``, the ``input_ids`` token Gather), swap nodes, keep the node list topologically sorted,
drop what no node reads."""
from __future__ import annotations

import numpy as np

MS = "com.microsoft"


def find_node(m, name):
    """The node called ``name``; raises when the graph has none."""
    for n in m.graph.node:
        if n.name == name:
            return n
    raise RuntimeError(f"node {name!r} not in graph (was the model exported by webformers?)")


def initializer(m, name):
    """The initializer called ``name``, or None."""
    for t in m.graph.initializer:
        if t.name == name:
            return t
    return None


def lm_head_weight(m) -> str:
    """Name of the weight the lm_head Gemm reads (the tied embedding, or ``lm_head.weight``)."""
    return find_node(m, "lm_head/gemm").input[1]


def token_gather(m, table: str):
    """The Gather that looks ``input_ids`` up in ``table``, or None (untied lm_head)."""
    for n in m.graph.node:
        if n.op_type == "Gather" and n.input[0] == table and n.input[1] == "input_ids":
            return n
    return None


def replace_nodes(m, remove_names, new_nodes):
    """Drop the nodes named in ``remove_names``, add ``new_nodes``, and re-sort."""
    keep = [n for n in m.graph.node if n.name not in remove_names]
    del m.graph.node[:]
    m.graph.node.extend(keep + list(new_nodes))
    toposort(m)


def toposort(m):
    """Order the nodes so each comes after the producers of its inputs; raises on a cycle or dangling input."""
    g = m.graph
    avail = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in avail for i in n.input):
                ordered.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle or a dangling input: " + ", ".join(n.name for n in rest[:5]))
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def drop_unused_initializers(m):
    """Remove the initializers no node and no graph output reads."""
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)


def ensure_ms_opset(m):
    """Import the ``com.microsoft`` domain (MatMulNBits, MatMulBnb4, ...) when the model lacks it."""
    if not any(o.domain == MS for o in m.opset_import):
        m.opset_import.append(__import__("onnx").helper.make_opsetid(MS, 1))


def weight_f32(t):
    """An initializer as a float32 numpy array."""
    from onnx import numpy_helper

    return numpy_helper.to_array(t).astype(np.float32)


def onnx_float(dtype):
    """The ONNX element type of numpy float16 / float32."""
    from onnx import TensorProto

    return TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
