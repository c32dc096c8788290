"""fp32 ONNX → every dtype variant of the registry (``webformers.dtypes``) the toolchain builds, one file
per method:

- fp16 (:mod:`.fp16`): ``convert_float_to_float16(keep_io_types=True)``;
- q8 / uint8 / int8 (:mod:`.dynamic8`): every layer matmul and the tied lm_head → ``MatMulInteger`` with
  per-token activation scales (standard ops); q8 has per-tensor uint8 weights (the transformers.js
  ``_quantized`` file), uint8 per-channel uint8, int8 per-channel int8. The tied table is stored once, as the
  lm_head's 8-bit codes. Modules without an lm_head (Whisper's encoder) use onnxruntime's
  ``quantize_dynamic`` instead (:func:`make_layer_variant`);
- q4 / q4f16 / q2 (:mod:`.nbits`): layer matmuls → ``MatMulNBits`` (block 32) with min/max blocks and *float*
  zero points, whose scale / zero point are double-quantized to 8-bit codes (4.5 bits per weight for q4; a
  GGUF Q4_1 weight keeps its grid). ``MatMulNBitsQuantizer``'s integer zero points force each block's range
  to contain 0, which re-rounds every Q4_1 weight: top-1 agreement on SmolLM2 dropped to ~0.70 that way,
  versus ~0.98 with the exact grid. The **tied embedding** is quantized once (8-bit symmetric blocks — the
  Q8_0 grid — for q4/q4f16, 4-bit for q2) and shared by the lm_head (``MatMulNBits``, weight
  [V, K/32, 32*bits/8]) and the lookup (``GatherBlockQuantized``, then rewritten in standard ops by
  :mod:`.portable`). q4f16 converts to fp16 first, then quantizes with fp16 scales;
- bnb4 (:mod:`.bnb4`): ``MatMulBnb4Quantizer`` (NF4, block 64) for the layer matmuls; the tied table is
  NF4-quantized once, shared by an lm_head ``MatMulBnb4`` and a lookup decoded with standard ops.

:mod:`.graph` holds the graph surgery they share.

    make_variant(fp32_model, dtype, in_place=False) -> ModelProto  # a decoder with the tied lm_head of toolchain.export
    make_layer_variant(fp32_model, dtype) -> ModelProto            # only the layer matmuls (a module without lm_head)
"""
from __future__ import annotations

import copy
import logging

import numpy as np

from ...dtypes import get_dtype
from .bnb4 import bnb4_layers, tied_bnb4
from .dynamic8 import dynamic_rows, quantize_dynamic_layers
from .fp16 import to_fp16
from .nbits import nbits_layers, tied_table
from .portable import portable_block_gather

#: the dtypes this toolchain builds, in build order.
SUPPORTED = ("fp32", "fp16", "q8", "int8", "uint8", "q4", "q4f16", "bnb4", "q2")


def check_dtypes(names) -> list[str]:
    """``names`` without repeats, after checking each is a registry dtype the toolchain builds."""
    out = []
    for n in names:
        get_dtype(n)  # unknown names: ValueError listing the registry
        if n not in SUPPORTED:
            raise ValueError(f"the toolchain cannot build dtype {n!r}; it builds: {', '.join(SUPPORTED)}")
        if n not in out:
            out.append(n)
    return out


def _quiet():
    for name in ("onnxruntime", "onnxruntime.quantization", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_variant(fp32_model, dtype: str, *, in_place: bool = False):
    """A new ``onnx.ModelProto`` of ``dtype`` built from the fp32 decoder (which is left untouched).

    ``in_place=True`` skips the copy: the variant is built in ``fp32_model`` itself, for a caller that no
    longer needs the fp32 model (a 1B-parameter model: 4.3 GB less at the peak). ``fp32_model`` is then
    consumed (use only the returned model); the returned bytes are the same either way.

    Shared-table lookups are expressed with standard ops (:mod:`.portable`): onnxruntime-web's WASM
    kernels have no GatherBlockQuantized."""
    check_dtypes([dtype])
    _quiet()
    m = fp32_model if in_place else copy.deepcopy(fp32_model)
    if dtype == "fp16":
        m = to_fp16(m)
    elif dtype in ("q8", "uint8", "int8"):
        m = dynamic_rows(m, signed=dtype == "int8", per_channel=dtype != "q8")
    elif dtype in ("q4", "q4f16", "q2"):
        act = np.float16 if dtype == "q4f16" else np.float32
        if dtype == "q4f16":
            m = to_fp16(m)
        # q4: 8-bit shared table (Q8_0 grid) + 4.5-bit layers; q2: 4-bit table + 2.5-bit layers
        tied_table(m, 8 if dtype != "q2" else 4, act)
        m = nbits_layers(m, 4 if dtype != "q2" else 2, act)
    elif dtype == "bnb4":
        tied_bnb4(m)
        m = bnb4_layers(m)
    portable_block_gather(m)
    return m


def make_layer_variant(fp32_model, dtype: str):
    """A new ``onnx.ModelProto`` of ``dtype`` with only the layer matmuls quantized, for a module without an
    lm_head (Whisper's encoder); the fp32 model is left untouched."""
    check_dtypes([dtype])
    _quiet()
    m = copy.deepcopy(fp32_model)
    if dtype == "fp16":
        return to_fp16(m)
    if dtype in ("q8", "uint8", "int8"):
        return quantize_dynamic_layers(m, "QInt8" if dtype == "int8" else "QUInt8", per_channel=dtype != "q8")
    if dtype in ("q4", "q4f16", "q2"):
        m = nbits_layers(m, 2 if dtype == "q2" else 4)
        return to_fp16(m) if dtype == "q4f16" else m
    if dtype == "bnb4":
        return bnb4_layers(m)
    return m
