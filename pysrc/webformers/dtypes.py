"""The dtype registry: the only place that knows dtype names, file suffixes, bits and device facts.

- ``DTYPES`` (name -> ``DType``), ``get_dtype(name)``, ``DEVICES``, ``check_device(device)``;
- ``DEFAULT_DEVICE_DTYPES``: the dtype a module gets per device when nothing names one
  (``default_dtype(device, available)``);
- ``device_support(dtype, device, features)``: does a dtype run natively on a device - its matmuls'
  kernels (``CPU_MATMUL_ON_WEBGPU``: the dtypes whose matmuls run on the CPU inside a WebGPU session),
  the WebGPU adapter features it needs (``FP16_FEATURE``) and what loads instead without them (fp16 ->
  fp32, q4f16 -> q4, ...);
- execution facts: ``DType.fp32_form_bytes`` (which dtypes have an fp32 execution form, see
  ``runtime.forms``, and the bytes per quantized weight it takes at load), ``has_fp32_form(dtype)``;
- file names: ``onnx_file(module, dtype)``, ``dtype_of_file(path, modules)``. They follow the
  transformers.js / onnx-community layout (``onnx/{module}{suffix}.onnx``) so that model repos move
  freely between webformers and transformers.js.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "DType", "DTYPES", "DEVICES", "get_dtype", "check_device", "onnx_file", "dtype_of_file",
    "FP16_FEATURE", "CPU_MATMUL_ON_WEBGPU", "DEFAULT_DEVICE_DTYPES", "default_dtype", "Support",
    "device_support", "has_fp32_form",
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
    #: the fp32 execution form (``runtime.forms``): bytes per quantized weight it takes while the session is
    #: created, beyond the file (4 for the fp32 weight + 4 for onnxruntime's packed copy; 16 for NF4, whose
    #: decode keeps its intermediates until folding ends). None: no fp32 form (the file's matmuls are fp32,
    #: fp16 or MatMulInteger already, or their codes are computed at load: q1).
    fp32_form_bytes: int | None = None


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
    DType("q4", "_q4", 4, "4-bit blockwise (MatMulNBits, block 32)", ops=("MatMulNBits",), fp32_form_bytes=8),
    DType("q4f16", "_q4f16", 4, "4-bit blockwise, fp16 activations", _F16, "q4", ops=("MatMulNBits",),
          fp32_form_bytes=8),
    DType("bnb4", "_bnb4", 4, "4-bit NormalFloat (MatMulBnb4, block 64)", ops=("MatMulBnb4",), fp32_form_bytes=16),
    DType("q2", "_q2", 2, "2-bit blockwise (MatMulNBits)", ops=("MatMulNBits",), fp32_form_bytes=8),
    DType("q2f16", "_q2f16", 2, "2-bit blockwise, fp16 activations", _F16, "q2", ops=("MatMulNBits",),
          fp32_form_bytes=8),
    DType("q1", "_q1", 1, "1-bit packed weights", ops=("MatMulNBits",)),
    DType("q1f16", "_q1f16", 1, "1-bit packed weights, fp16 activations", _F16, "q1", ops=("MatMulNBits",)),
    DType("qmix", "_qmix", 2, "bits per layer (1/2/4/8) chosen under a byte budget (MatMulNBits)",
          ops=("MatMulNBits",)),
]}

#: dtypes whose matmuls have no WebGPU kernel (they run on the CPU inside a WebGPU session).
CPU_MATMUL_ON_WEBGPU = frozenset(n for n, d in DTYPES.items() if "webgpu" not in d.native_on)

#: per device, the dtypes a module gets when nothing names one: the first the repo has (none of them:
#: "auto"). As transformers.js' DEFAULT_DEVICE_DTYPE_MAPPING: q8 on wasm, fp32 on WebGPU.
DEFAULT_DEVICE_DTYPES = MappingProxyType({"wasm": ("q8", "fp32"), "webgpu": ("fp32",)})


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


def default_dtype(device: str, available) -> str:
    """The default dtype on ``device`` ("wasm" or "webgpu") among the ``available`` ones, or "auto"."""
    for name in DEFAULT_DEVICE_DTYPES[device]:
        if name in available:
            return name
    return "auto"


@dataclass(frozen=True)
class Support:
    """How a dtype runs on a device (see ``device_support``)."""
    #: every op has a kernel on the device and the adapter has every feature the dtype needs
    native: bool
    #: the dtype's matmuls have no kernel on the device: they run on the CPU inside the device's session
    cpu_matmuls: bool
    #: WebGPU adapter features the dtype needs and the adapter lacks
    missing: frozenset
    #: what loads instead when features are missing: the first dtype along ``DType.fallback`` that the
    #: adapter can run (None: there is none)
    fallback: str | None


def device_support(dtype, device: str, features=()) -> Support:
    """How ``dtype`` runs on ``device`` ("wasm" or "webgpu"; WebGPU with an adapter that has ``features``)."""
    d = get_dtype(dtype)
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} here, got {device!r}")
    features = frozenset(features)
    missing = d.requires - features if device == "webgpu" else frozenset()
    fallback = None
    if missing:
        cur = d
        while cur.requires - features and cur.fallback is not None:
            cur = get_dtype(cur.fallback)
        fallback = None if cur.requires - features else cur.name
    cpu = device not in d.native_on
    return Support(native=not cpu and not missing, cpu_matmuls=cpu, missing=missing, fallback=fallback)


def has_fp32_form(dtype) -> bool:
    """Whether ``dtype``'s block-quantized matmuls have an fp32 execution form (see ``runtime.forms``)."""
    return get_dtype(dtype).fp32_form_bytes is not None


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
