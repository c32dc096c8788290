"""Torch ``Linear`` names ↔ the fp32 ONNX graph's MatMul weight initializers.

The exporter (:mod:`..export`, ``torch.onnx.export(dynamo=True)``) stores each decoder Linear's weight
transposed, as a [in, out] initializer with a generated name (``val_50``), read by one ``MatMul``. The
transposed weight is bit-identical to the torch one, so the mapping is made by content.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .layers import decoder_layers, linear_modules

__all__ = ["linear_initializers", "matmul_weights", "lm_head_weight"]


def matmul_weights(onnx_model) -> dict[str, tuple[int, int]]:
    """{initializer name: (K, N)} of every float [K, N] initializer a ``MatMul`` reads as its weight."""
    from onnx import TensorProto

    inits = {t.name: t for t in onnx_model.graph.initializer}
    out = {}
    for node in onnx_model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        t = inits[node.input[1]]
        if len(t.dims) == 2 and t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
            out[t.name] = (int(t.dims[0]), int(t.dims[1]))
    return out


def lm_head_weight(onnx_model) -> str:
    """The initializer the exported lm_head (``lm_head/gemm``, transB) reads: the tied embedding when tied."""
    for node in onnx_model.graph.node:
        if node.name == "lm_head/gemm":
            return node.input[1]
    raise ValueError("graph has no lm_head/gemm node (was it exported by webformers.toolchain.export?)")


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()


def linear_initializers(model, onnx_model) -> dict[str, str]:
    """{Linear name (``model.layers.0.self_attn.q_proj``): initializer name} for every decoder Linear of the
    torch ``model``, found by content in ``onnx_model`` (the fp32 export of that model)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in onnx_model.graph.initializer}
    by_digest: dict[str, list[str]] = {}
    for name, (k, n) in matmul_weights(onnx_model).items():
        by_digest.setdefault(_digest(numpy_helper.to_array(inits[name])), []).append(name)
    out, missing = {}, []
    for i, layer in enumerate(decoder_layers(model)):
        for lname, m in linear_modules(layer, f"model.layers.{i}."):
            hits = by_digest.get(_digest(m.weight.detach().float().numpy().T), [])
            if len(hits) != 1:
                missing.append(f"{lname} ({len(hits)} matching initializers)")
            else:
                out[lname] = hits[0]
    if missing:
        raise ValueError("cannot map torch Linear weights to the ONNX graph's MatMul initializers (is the ONNX "
                         "graph the fp32 export of this model?): " + ", ".join(missing[:5]))
    if len(set(out.values())) != len(out):
        raise ValueError("two torch Linear layers share one ONNX initializer; quantize them together")
    return out
