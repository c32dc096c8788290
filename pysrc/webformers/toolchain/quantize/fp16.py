"""fp16: ``convert_float_to_float16(keep_io_types=True)`` (inputs and outputs stay float32)."""
from __future__ import annotations


def to_fp16(m):
    """``m`` in fp16 with float32 inputs and outputs (``keep_io_types``)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    return convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=True)
