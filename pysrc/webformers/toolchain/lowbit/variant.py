"""Low-bit dtype variants of an fp32 decoder graph, from quantized layer weights.

:data:`RECIPES` gives each low-bit dtype its layer bits, tied-table bits and activation type. The layer weights
come from plain rounding on fitted grids (:func:`rtn_weights`), GPTQ (:func:`.calibrate.gptq_model`) or QAT
(:func:`.qat.qat`), keyed by ONNX initializer name (:func:`by_initializer`).
"""
from __future__ import annotations

import copy

import numpy as np

from ..quantize.fp16 import to_fp16
from ..quantize.portable import portable_block_gather
from .graph import write_matmuls, write_tied_table
from .grid import BLOCKS, QuantizedWeight, check_bits, rtn
from .mapping import matmul_weights

#: dtype → (layer bits, tied-table bits, activation type). The table stays at 4 bits for q1 too: a 1-bit table
#: (``build_variant(..., table_bits=1)``, the full Bonsai layout) suits models trained at 1 bit, not rounded ones
#: (SmolLM2-135M with only its table at 1 bit: KL 10.6 against fp32; at 4 bits: 0.11).
RECIPES = {
    "q2": (2, 4, np.float32),
    "q2f16": (2, 4, np.float16),
    "q1": (1, 4, np.float32),
    "q1f16": (1, 4, np.float16),
}


def recipe(dtype: str):
    try:
        return RECIPES[dtype]
    except KeyError:
        raise ValueError(f"no low-bit recipe for dtype {dtype!r}; recipes: {', '.join(RECIPES)}") from None


def by_initializer(weights: dict[str, QuantizedWeight], mapping: dict[str, str]) -> dict[str, QuantizedWeight]:
    """Re-key {Linear name: weight} by ONNX initializer through ``mapping`` (:func:`.mapping.linear_initializers`)."""
    missing = [n for n in weights if n not in mapping]
    if missing:
        raise ValueError(f"no ONNX initializer known for {missing[:5]}")
    return {mapping[n]: q for n, q in weights.items()}


def quantizable(fp32_model, bits: int) -> dict[str, tuple[int, int]]:
    """{initializer: (K, N)} of the MatMul weights that can take ``bits`` (K a multiple of the block, and of 8
    for 1 bit)."""
    bits = check_bits(bits)
    need = 8 if bits == 1 else BLOCKS[bits]
    return {n: s for n, s in matmul_weights(fp32_model).items() if s[0] % need == 0}


def rtn_weights(fp32_model, bits, *, search: bool = True) -> dict[str, QuantizedWeight]:
    """Round-to-nearest on fitted grids for the graph's MatMul weights: ``bits`` one width, or
    {initializer: bits} (others stay as they are)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in fp32_model.graph.initializer}
    plan = bits if isinstance(bits, dict) else {n: bits for n in quantizable(fp32_model, bits)}
    return {n: rtn(numpy_helper.to_array(inits[n]).astype(np.float32), b, search=search)
            for n, b in plan.items() if b is not None and b < 16}


def build_variant(fp32_model, weights: dict[str, QuantizedWeight], *, table_bits: int | None,
                  act=np.float32):
    """A new ModelProto: ``weights`` written into ``fp32_model``'s MatMuls, the tied table quantized to
    ``table_bits`` (None: left as it is), fp16 activations when ``act`` is ``np.float16``; shared-table lookups
    in standard ops (:func:`..quantize.portable.portable_block_gather`) so the file runs on onnxruntime-web's WASM too."""
    m = copy.deepcopy(fp32_model)
    if act == np.float16:
        m = to_fp16(m)
    elif act != np.float32:
        raise ValueError(f"activation type {act!r}: valid np.float32, np.float16")
    write_matmuls(m, weights, act)
    if table_bits is not None:
        write_tied_table(m, table_bits, act)
    portable_block_gather(m)
    return m


def lowbit_variant(fp32_model, dtype: str, weights: dict[str, QuantizedWeight] | None = None):
    """The ``dtype`` variant (:data:`RECIPES`) of ``fp32_model``; ``weights`` default to :func:`rtn_weights`."""
    bits, table_bits, act = recipe(dtype)
    if weights is None:
        weights = rtn_weights(fp32_model, bits)
    return build_variant(fp32_model, weights, table_bits=table_bits, act=act)
