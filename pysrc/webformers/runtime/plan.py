"""The dtype plan: which device, and which dtype per module (no I/O).

``select_dtypes(manifest, modules=None, dtype="auto", device="auto", adapter=..., strict=False,
max_bytes=None, report=None)`` returns a ``Plan`` (device, {module: dtype}, warnings, files, bytes) or
raises ``ValueError`` naming the problem and the valid choices. ``check_dtype_arg`` validates a ``dtype``
argument once, before any I/O, into a ``DtypeRequest`` that the layers below pass on unchecked.

Devices (``webformers.dtypes.DEVICES``): ``"webgpu"``, ``"wasm"`` or ``"auto"`` (WebGPU when the
``adapter`` has it, else wasm; a manifest's ``defaults["device"]`` of ``"wasm"`` keeps wasm).

Dtypes (``webformers.dtypes.DTYPES``):

- a name (``"q4"``) for every module, a mapping ``{module: dtype}`` (values may be ``"auto"``),
  ``"auto"``, or None (every module gets its default, as below);
- modules a mapping leaves out (or every module, for None) get the repo's stated default (the manifest's ``defaults["dtype"]``, from
  ``transformers.js_config``) when the repo has it, else the device default
  (``dtypes.DEFAULT_DEVICE_DTYPES``): on wasm ``q8`` when the repo has it, else ``fp32`` (as
  transformers.js does); on WebGPU ``fp32``; when the repo lacks the default, ``"auto"``;
- ``"auto"``: per module the best-quality dtype that runs natively on the device (no CPU-only matmuls
  under WebGPU, no fp16 without ``shader-f16``) and, with ``max_bytes``, keeps the total download of the
  loaded modules within budget. Quality comes from the repo's ``quantization_report.json``
  (``{"modules": {module: {dtype: {"kl", "top1", ...}}}}``: lowest KL, then highest top-1; a report that
  measured word error rate instead, ``{dtype: {"wer", ...}}`` with no ``kl`` (Whisper's), ranks by lowest
  WER, equal WERs by the smaller download); dtypes the report does not cover rank after measured ones, by
  bits (more bits first). ``quality_key`` is that ranking. A repo in the transformers.js layout (a
  manifest with ``defaults``: discovered, or written by ``webformers manifest``) whose report does not
  measure a module ranks that module's stated default first, else its device default among the native
  dtypes (q8 on wasm, fp32 on WebGPU), then by bits; ``max_bytes`` applies as always.

Capability fallback (``dtypes.device_support``): an fp16-family dtype on a WebGPU adapter without
``shader-f16`` is replaced by its ``DType.fallback`` (fp16 -> fp32, q4f16 -> q4, ...) with a warning naming the replacement and the reason;
``strict=True`` raises instead. q8/int8/uint8 under WebGPU come with a warning (their matmuls run on the
CPU inside the WebGPU session). An explicitly requested WebGPU without an adapter falls back to wasm with
a warning (``strict=True``: error).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..dtypes import DTYPES, check_device, default_dtype, device_support, get_dtype

__all__ = ["Plan", "DtypeRequest", "select_dtypes", "check_dtype_arg", "quality_key"]


@dataclass
class Plan:
    """What to load: the ``device``, ``dtypes`` ({module: dtype}), ``warnings`` (fallbacks taken),
    ``files`` ({module: repo files}) and ``bytes`` (their total)."""
    device: str
    dtypes: dict
    warnings: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    bytes: int = 0


def quality_key(report: dict | None, module: str, dtype: str):
    """Smaller is better: measured (KL, -top1) first (or, for a report measuring WER and no KL, (WER, 0)),
    then unmeasured by bits."""
    m = ((report or {}).get("modules") or {}).get(module) or {}
    r = m.get(dtype)
    if isinstance(r, Mapping):
        if isinstance(r.get("kl"), (int, float)) and math.isfinite(r["kl"]):
            return (0, float(r["kl"]), -float(r.get("top1") or 0.0))
        wer = r.get("wer")
        if "kl" not in r and isinstance(wer, (int, float)) and not isinstance(wer, bool) and math.isfinite(wer):
            return (0, float(wer), 0.0)
    return (1, -get_dtype(dtype).bits, 0.0)


def _capability_fallback(manifest, module: str, dtype: str, features: set, strict: bool):
    """(dtype to use, warning or None) for ``dtype`` on a WebGPU adapter with ``features``."""
    support = device_support(dtype, "webgpu", features)
    if not support.missing:
        return dtype, None
    need = ", ".join(sorted(support.missing))
    fallback = support.fallback
    if strict:
        raise ValueError(
            f"{module}: dtype {dtype!r} needs the WebGPU adapter feature {need}, which this adapter lacks "
            f"(strict=True); use {fallback!r} or device='wasm'" if fallback else
            f"{module}: dtype {dtype!r} needs the WebGPU adapter feature {need}, which this adapter lacks")
    if fallback is None:
        raise ValueError(f"{module}: dtype {dtype!r} needs {need}, which the WebGPU adapter lacks, and has "
                         f"no fallback dtype; use device='wasm'")
    if not manifest.has(module, fallback):
        raise ValueError(f"{module}: dtype {dtype!r} needs {need}, which the WebGPU adapter lacks, and its "
                         f"fallback {fallback!r} is not in the repo. " + manifest.missing_message(module, fallback))
    return fallback, (f"{module}: {dtype} replaced by {fallback}: the WebGPU adapter lacks {need} "
                      f"(needed for {dtype} arithmetic)")


@dataclass(frozen=True)
class DtypeRequest:
    """A checked ``dtype`` argument (see ``check_dtype_arg``): ``every`` names one dtype (or "auto") for
    every module; when it is None, ``per_module`` maps modules to a dtype or "auto" and the modules it
    leaves out get the device default."""
    every: str | None = None
    per_module: Mapping = field(default_factory=lambda: MappingProxyType({}))

    @property
    def may_be_auto(self) -> bool:
        """Whether some module may be chosen by quality (then the repo's quality report matters)."""
        return self.every is None or self.every == "auto"

    def as_arg(self):
        """The request as a plain ``dtype`` argument: a name, "auto" or a {module: dtype} dict."""
        return self.every if self.every is not None else dict(self.per_module)


def check_dtype_arg(dtype) -> DtypeRequest:
    """Validate a ``dtype`` argument, before any I/O: a name, "auto", None (every module gets the device
    default) or a {module: dtype} mapping whose values are names or "auto". A ``DtypeRequest`` was checked
    already and is returned as is, so passing it on does not check it again."""
    if isinstance(dtype, DtypeRequest):
        return dtype
    if dtype is None:
        return DtypeRequest()
    if isinstance(dtype, str):
        if dtype != "auto":
            get_dtype(dtype)
        return DtypeRequest(every=dtype)
    if isinstance(dtype, Mapping):
        for k, v in dtype.items():
            if v != "auto":
                try:
                    get_dtype(v)
                except ValueError as e:
                    raise ValueError(f"module {k!r}: {e}") from None
        return DtypeRequest(per_module=MappingProxyType(dict(dtype)))
    raise ValueError(f"dtype must be a dtype name, a {{module: dtype}} mapping or 'auto', got {dtype!r}; "
                     f"valid dtypes: {', '.join(DTYPES)}")


def select_dtypes(manifest, modules=None, *, dtype="auto", device="auto", adapter: dict | None = None,
                  strict: bool = False, max_bytes: int | None = None, report: dict | None = None) -> Plan:
    """Choose the device and each module's dtype (no I/O). Raises ``ValueError`` on bad input."""
    all_modules = manifest.modules
    if modules is None:
        modules = list(all_modules)
    elif isinstance(modules, str):
        modules = [modules]
    modules = list(modules)
    if not modules:
        raise ValueError(f"no modules to load; the repo's modules: {', '.join(all_modules)}")
    for m in modules:
        if m not in all_modules:
            raise ValueError(f"{manifest.repo} has no module {m!r}; its modules: {', '.join(all_modules)}")
    check_device(device)
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ValueError(f"max_bytes must be a positive int (bytes), got {max_bytes!r}")
    adapter = adapter or {}
    has_gpu = bool(adapter.get("webgpu"))
    features = set(adapter.get("features") or [])
    warnings: list[str] = []

    defaults = manifest.defaults
    if device == "auto":
        device = "webgpu" if has_gpu and (defaults or {}).get("device") != "wasm" else "wasm"
    elif device == "webgpu" and not has_gpu:
        if strict:
            raise ValueError("device='webgpu' but no WebGPU adapter is available (strict=True); "
                             "valid devices here: wasm")
        warnings.append("device webgpu replaced by wasm: no WebGPU adapter is available")
        device = "wasm"

    # requested dtype per module (None: every module gets the device default, like an empty mapping)
    request = check_dtype_arg(dtype)
    if request.every is not None:
        requested = {m: request.every for m in modules}
    else:
        bad = [k for k in request.per_module if k not in all_modules]
        if bad:
            raise ValueError(f"dtype mapping names unknown module(s) {', '.join(map(repr, bad))}; "
                             f"the repo's modules: {', '.join(all_modules)}")
        requested = {}
        for m in modules:
            if m in request.per_module:
                requested[m] = request.per_module[m]
                continue
            stated = _stated(defaults, m)
            if stated is not None and not manifest.has(m, stated):
                warnings.append(f"{m}: the repo's default dtype {stated!r} (transformers.js_config) is not in "
                                f"the repo; its dtypes: {', '.join(all_modules[m])}")
                stated = None
            requested[m] = stated or default_dtype(device, all_modules[m])

    chosen: dict[str, str] = {}
    for m, d in requested.items():
        if d == "auto":
            continue
        if not manifest.has(m, d):
            raise ValueError(manifest.missing_message(m, d))
        if device == "webgpu":
            d2, note = _capability_fallback(manifest, m, d, features, strict)
            if note:
                warnings.append(note)
            d = d2
            variant = manifest.variant(m, d)
            if variant.get("cpu_matmul_on_webgpu", device_support(d, device, features).cpu_matmuls):
                warnings.append(f"{m}: {d} matmuls (MatMulInteger) have no WebGPU kernel: they run on the CPU "
                                f"inside the WebGPU session (slow); q4 runs natively")
        chosen[m] = d

    auto = [m for m, d in requested.items() if d == "auto"]
    fixed_bytes = sum(manifest.variant(m, d)["bytes"] for m, d in chosen.items())
    if max_bytes is not None and fixed_bytes > max_bytes:
        raise ValueError(f"the explicitly chosen dtypes ({', '.join(f'{m}: {d}' for m, d in chosen.items())}) "
                         f"need {fixed_bytes} bytes, over max_bytes={max_bytes}")
    if auto:
        cands, prefer = {}, {}
        measured = (report or {}).get("modules") or {}
        for m in auto:
            have = list(all_modules[m])
            native = [d for d in have if device_support(d, device, features).native]
            if not native:
                raise ValueError(f"{m}: none of the repo's dtypes ({', '.join(have)}) runs natively on {device}; "
                                 f"name a dtype explicitly")
            if defaults is not None and not measured.get(m):
                stated = _stated(defaults, m)
                prefer[m] = stated if stated in native else default_dtype(device, native)
            cands[m] = sorted(native, key=lambda d: (_rank(report, prefer, m, d), manifest.variant(m, d)["bytes"]))
        if max_bytes is None:
            for m in auto:
                chosen[m] = cands[m][0]
        else:
            budget = max_bytes - fixed_bytes
            best = _best_within(manifest, report, prefer, cands, budget)
            if best is None:
                smallest = {m: min(cands[m], key=lambda d: manifest.variant(m, d)["bytes"]) for m in auto}
                need = sum(manifest.variant(m, d)["bytes"] for m, d in smallest.items()) + fixed_bytes
                raise ValueError(
                    f"no dtype choice fits max_bytes={max_bytes}: the smallest is {need} bytes ("
                    + ", ".join(f"{m}: {d} {manifest.variant(m, d)['bytes']}" for m, d in smallest.items()) + ")")
            chosen.update(best)
    chosen = {m: chosen[m] for m in modules}
    files = {m: list(manifest.variant(m, d)["files"]) for m, d in chosen.items()}
    total = sum(manifest.variant(m, d)["bytes"] for m, d in chosen.items())
    return Plan(device=device, dtypes=chosen, warnings=warnings, files=files, bytes=total)


def _stated(defaults: dict | None, module: str) -> str | None:
    """The dtype the repo's ``defaults`` name for ``module`` (a name for every module or a mapping), or None."""
    d = (defaults or {}).get("dtype")
    return d.get(module) if isinstance(d, Mapping) else d


def _rank(report, prefer: dict, module: str, dtype: str):
    """Smaller is better: the module's preferred dtype (``prefer``) first, then ``quality_key``."""
    return (0 if prefer.get(module, dtype) == dtype else 1, *quality_key(report, module, dtype))


def _best_within(manifest, report, prefer: dict, cands: dict, budget: int) -> dict | None:
    """The best combination of per-module candidates whose bytes fit ``budget``.

    Compares combinations by (number of choices that are not the module's preferred dtype, number of
    unmeasured choices, sum of KL, -sum of top-1 / -bits, bytes). Candidates that are both larger and worse
    than another candidate of the same module are dropped first.
    """
    pruned = {}
    for m, ds in cands.items():
        keep, smallest = [], None
        for d in ds:  # best quality first
            b = manifest.variant(m, d)["bytes"]
            if smallest is None or b < smallest:
                keep.append(d)
                smallest = b
        pruned[m] = keep
    mods = list(pruned)
    best, best_key = None, None
    for combo in itertools.product(*(pruned[m] for m in mods)):
        size = sum(manifest.variant(m, d)["bytes"] for m, d in zip(mods, combo))
        if size > budget:
            continue
        keys = [_rank(report, prefer, m, d) for m, d in zip(mods, combo)]
        key = (*(sum(k[i] for k in keys) for i in range(4)), size)
        if best_key is None or key < best_key:
            best, best_key = dict(zip(mods, combo)), key
    return best
