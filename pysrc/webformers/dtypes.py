"""The dtype registry: the only place that knows dtype names, file suffixes, bits and device needs.

File names follow the transformers.js / onnx-community layout (``onnx/{module}{suffix}.onnx``) so
that model repos move freely between webformers and transformers.js.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DType", "DTYPES", "DEVICES", "get_dtype", "check_device", "onnx_file", "dtype_of_file",
    "FP16_FEATURE",
]

FP16_FEATURE = "shader-f16"

#: Execution providers webformers knows, in the order "auto" tries them.
DEVICES = ("webgpu", "wasm")


@dataclass(frozen=True)
class DType:
    name: str
    suffix: str
    #: bits per (quantized) weight, before scales; 32 for fp32.
    bits: float
    #: short description shown in pickers and errors.
    description: str
    #: adapter features a WebGPU device must have to run this dtype natively.
    requires: frozenset = field(default_factory=frozenset)
    #: what to use instead when a requirement is missing (None: no fallback).
    fallback: str | None = None
    #: devices whose execution provider runs every op of this dtype natively.
    native_on: tuple = DEVICES
    #: op types a file of this dtype typically carries (for documentation; the manifest has the truth).
    ops: tuple = ()

    def file_suffix(self) -> str:
        return self.suffix


_F16 = frozenset({FP16_FEATURE})

DTYPES: dict[str, DType] = {d.name: d for d in [
    DType("fp32", "", 32, "full precision"),
    DType("fp16", "_fp16", 16, "half precision", _F16, "fp32"),
    DType("q8", "_quantized", 8, "8-bit dynamic (MatMulInteger, uint8 weights)",
          native_on=("wasm",), ops=("MatMulInteger",)),
    DType("int8", "_int8", 8, "8-bit dynamic, signed per-channel weights",
          native_on=("wasm",), ops=("MatMulInteger",)),
    DType("uint8", "_uint8", 8, "8-bit dynamic, unsigned per-channel weights",
          native_on=("wasm",), ops=("MatMulInteger",)),
    DType("q4", "_q4", 4, "4-bit blockwise (MatMulNBits, block 32)", ops=("MatMulNBits",)),
    DType("q4f16", "_q4f16", 4, "4-bit blockwise, fp16 activations", _F16, "q4", ops=("MatMulNBits",)),
    DType("bnb4", "_bnb4", 4, "4-bit NormalFloat (MatMulBnb4, block 64)", ops=("MatMulBnb4",)),
    DType("q2", "_q2", 2, "2-bit blockwise (MatMulNBits)", ops=("MatMulNBits",)),
    DType("q2f16", "_q2f16", 2, "2-bit blockwise, fp16 activations", _F16, "q2", ops=("MatMulNBits",)),
    DType("q1", "_q1", 1, "1-bit packed weights", ops=("MatMulNBits",)),
    DType("q1f16", "_q1f16", 1, "1-bit packed weights, fp16 activations", _F16, "q1", ops=("MatMulNBits",)),
]}

#: dtypes whose matmuls have no WebGPU kernel (they run on the CPU inside a WebGPU session).
CPU_MATMUL_ON_WEBGPU = frozenset(n for n, d in DTYPES.items() if "webgpu" not in d.native_on)


def get_dtype(name) -> DType:
    """The registry entry for ``name``; a clear ``ValueError`` listing valid names otherwise."""
    if isinstance(name, DType):
        return name
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dtype {name!r}; valid dtypes: {', '.join(DTYPES)} (or 'auto')") from None


def check_device(device: str) -> str:
    if device not in DEVICES and device != "auto":
        raise ValueError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}, auto")
    return device


def onnx_file(module: str, dtype: str) -> str:
    """Repo-relative path of ``module`` in ``dtype``: ``onnx/model_q4.onnx``."""
    return f"onnx/{module}{get_dtype(dtype).suffix}.onnx"


def dtype_of_file(path: str, modules) -> tuple[str, str] | None:
    """(module, dtype) for a repo path like ``onnx/decoder_model_merged_q4f16.onnx``, else None."""
    name = path.rsplit("/", 1)[-1]
    if not name.endswith(".onnx"):
        return None
    stem = name[: -len(".onnx")]
    # longest suffix first, so "_q4f16" wins over "" and "_q4"
    for module in sorted(modules, key=len, reverse=True):
        if not stem.startswith(module):
            continue
        rest = stem[len(module):]
        for d in DTYPES.values():
            if rest == d.suffix:
                return module, d.name
    return None
