"""Execution forms: what runs, per module, as opposed to what was downloaded (the dtype; no I/O here).

The dtype picks the files (fetched, sha256-checked and cached as they are). When its session is created, a
module runs in one of these forms:

- ``"native"``: the file as it is (MatMulNBits / MatMulBnb4 kernels);
- ``"fp32"``: the block-quantized matmuls rewritten so that onnxruntime decodes their weights to fp32 once,
  at load (``webformers/assets/exec-form.js`` in the browser, ``runtime.exec_form`` on CPython): the same arithmetic as the
  native kernels' fp32 path, so the same greedy tokens, at fp32-file speed on WebAssembly (which has no
  block-quantized GEMM), for the memory of fp32 weights. Dtypes with an fp32 form:
  ``dtypes.has_fp32_form`` (q4, q4f16, q2, q2f16, bnb4); the model must import ONNX opset >= 21.

``execution="auto"`` (the default) picks per module: WebGPU -> native (it has the 4-bit kernels); CPython
(onnxruntime) -> native (the reference); wasm -> fp32 when the estimated peak of the whole load stays within
``max_memory``, else native. A module's estimated peak is its files' bytes, plus, in the fp32 form,
``DType.fp32_form_bytes`` (8, or 16 for bnb4) per quantized weight (``onnx_info.quantized_matmul_weights``);
modules are expanded in load order while the sum over the load fits. ``max_memory`` is bytes (an int) or a
string like ``"1.5GB"`` / ``"800MiB"``; the default, :data:`DEFAULT_MAX_MEMORY`, stays well inside
WebAssembly's 4 GiB heap. ``"native"`` / ``"fp32"`` force a form (``"fp32"`` leaves native the modules that
cannot have it: their dtype has no fp32 form, or their model imports an opset below 21).

- ``check_form_args(execution, max_memory)`` -> ``FormRequest`` (``check_execution``, ``parse_max_memory``):
  validate the arguments, before any I/O;
- ``FormRequest``: both, checked; ``request.fixed_form(dtype, device, backend)`` is the form when it does
  not depend on the file, else None; ``request.key(...)`` names the choice in a warm-start session key;
  ``request.chooses(backend)``: False for the default on CPython (every module native, nothing to report);
- ``choose_forms(modules, request, device=..., backend=...)`` -> {module: ``FormChoice``} (form, reason,
  estimated peak).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..dtypes import get_dtype, has_fp32_form

__all__ = ["EXECUTIONS", "DEFAULT_MAX_MEMORY", "FP32_FORM_OPSET", "FormRequest", "FormChoice", "ModuleFacts",
           "check_execution", "parse_max_memory", "check_form_args", "choose_forms", "format_bytes"]

#: the ``execution=`` choices
EXECUTIONS = ("auto", "native", "fp32")
#: the default ``max_memory``: 2.5 GB (SmolLM2-135M q4 in the fp32 form peaks at about 1.2 GB)
DEFAULT_MAX_MEMORY = 2_500_000_000
#: the backend that runs the stored file by default (the reference)
CPYTHON_BACKEND = "onnxruntime"

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def check_execution(execution) -> str:
    """``execution`` if it is one of :data:`EXECUTIONS`, else a ValueError listing them."""
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; valid choices: {', '.join(map(repr, EXECUTIONS))}")
    return execution


def parse_max_memory(max_memory) -> int:
    """Bytes for a ``max_memory`` argument: a positive int (bytes), a string with a unit (``"1.5GB"``,
    ``"800 MiB"``; units: B, kB, MB, GB, KiB, MiB, GiB), or None (:data:`DEFAULT_MAX_MEMORY`)."""
    if max_memory is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(max_memory, float) and max_memory.is_integer():
        max_memory = int(max_memory)
    if isinstance(max_memory, int) and not isinstance(max_memory, bool) and max_memory > 0:
        return max_memory
    if isinstance(max_memory, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", max_memory)
        if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"max_memory must be a positive number of bytes or a size like '1.5GB' or '800MiB' "
                     f"(units: B, kB, MB, GB, KiB, MiB, GiB), got {max_memory!r}")


def format_bytes(n: int) -> str:
    """``n`` bytes as MB below 1 GB, else GB (decimal units)."""
    return f"{n / 1e9:.2f} GB" if n >= 10**9 else f"{n / 1e6:.0f} MB"


@dataclass(frozen=True)
class FormRequest:
    """A checked ``execution`` / ``max_memory`` pair (see ``check_form_args``)."""
    execution: str = "auto"
    max_memory: int = DEFAULT_MAX_MEMORY

    def chooses(self, backend: str) -> bool:
        """Whether a form is chosen at all: not for ``execution="auto"`` on CPython, whose default is the
        stored file for every module."""
        return self.execution != "auto" or backend != CPYTHON_BACKEND

    def fixed_form(self, dtype: str, device: str, backend: str) -> str | None:
        """The form of a module of ``dtype`` when it does not depend on the file's contents, else None."""
        if not has_fp32_form(dtype) or self.execution == "native":
            return "native"
        if self.execution == "fp32":
            return "fp32"
        if backend == CPYTHON_BACKEND or device != "wasm":
            return "native"
        return None

    def key(self, dtype: str, device: str, backend: str, load_sha256: list[str]) -> str:
        """What names a module's form in its warm-start session key: the form when it is fixed, else the
        request and every file of the load (``load_sha256``: the choice is a function of them)."""
        form = self.fixed_form(dtype, device, backend)
        if form is not None:
            return form
        digest = hashlib.sha256(" ".join(load_sha256).encode()).hexdigest()[:16]
        return f"auto<={self.max_memory}:{digest}"


def check_form_args(execution="auto", max_memory=None) -> FormRequest:
    """Validate ``execution`` and ``max_memory`` once, before any I/O (a FormRequest passes as it is)."""
    if isinstance(execution, FormRequest):
        return execution
    return FormRequest(check_execution(execution), parse_max_memory(max_memory))


#: the ONNX opset the fp32 form needs (blocked DequantizeLinear, uint4)
FP32_FORM_OPSET = 21


@dataclass(frozen=True)
class ModuleFacts:
    """What the choice needs of one module: its dtype, its files' bytes, and (when the choice depends on
    them) the quantized weights of its main file (None: not counted) and the ONNX opset it imports."""
    module: str
    dtype: str
    file_bytes: int
    weights: int | None = None
    opset: int | None = None


@dataclass(frozen=True)
class FormChoice:
    """The form a module runs in, why, and its estimated peak memory while its session is created."""
    form: str
    reason: str
    est_peak_bytes: int

    def as_dict(self) -> dict:
        return {"form": self.form, "reason": self.reason, "est_peak_bytes": self.est_peak_bytes}


def _fp32_peak(m: ModuleFacts) -> int:
    return m.file_bytes + get_dtype(m.dtype).fp32_form_bytes * (m.weights or 0)


def _why_no_fp32_form(m: ModuleFacts) -> str | None:
    """Why ``m`` cannot run in the fp32 form, as far as its facts tell (None: it can)."""
    if not has_fp32_form(m.dtype):
        return f"{m.dtype} has no fp32 form"
    if m.weights == 0:
        return "no block-quantized matmul with a constant weight"
    if m.opset is not None and m.opset < FP32_FORM_OPSET:
        return f"the model imports ONNX opset {m.opset}; the fp32 form needs >= {FP32_FORM_OPSET}"
    return None


def choose_forms(modules: list[ModuleFacts], request: FormRequest, *, device: str, backend: str,
                 fixed: dict[str, FormChoice] | None = None) -> dict[str, FormChoice]:
    """{module: FormChoice} for ``modules`` (in load order) on ``device`` ("wasm" / "webgpu") of ``backend``
    (``runtime.backend.backend_name``). ``fixed`` holds choices already made (warm-started sessions, as
    recorded when they were created): kept as they are, and counted in the load's estimated peak."""
    fixed = fixed or {}
    out: dict[str, FormChoice] = {}
    # every module takes at least its files; fp32 forms add their expansion while the sum fits
    total = sum(fixed[m.module].est_peak_bytes if m.module in fixed else m.file_bytes for m in modules)
    budget = format_bytes(request.max_memory)
    for m in modules:
        if m.module in fixed:
            out[m.module] = fixed[m.module]
            continue
        why_not = _why_no_fp32_form(m)
        if why_not is not None:
            out[m.module] = FormChoice("native", f"native: {why_not}", m.file_bytes)
        elif request.execution != "auto":
            form = request.execution
            out[m.module] = FormChoice(form, f"{form}: execution={form!r}",
                                       _fp32_peak(m) if form == "fp32" else m.file_bytes)
        elif backend == CPYTHON_BACKEND:
            out[m.module] = FormChoice("native", "native: CPython onnxruntime runs the stored file (the reference)",
                                       m.file_bytes)
        elif device != "wasm":
            out[m.module] = FormChoice("native", f"native: {device} has kernels for the quantized matmuls",
                                       m.file_bytes)
        else:
            peak = _fp32_peak(m)
            after = total - m.file_bytes + peak
            if after <= request.max_memory:
                total = after
                out[m.module] = FormChoice("fp32", f"fp32: wasm, the load's est. peak {format_bytes(after)} "
                                                   f"<= max_memory {budget}", peak)
            else:
                out[m.module] = FormChoice("native", f"native: wasm, the fp32 form's est. peak "
                                                     f"{format_bytes(after)} > max_memory {budget}", m.file_bytes)
    return out
