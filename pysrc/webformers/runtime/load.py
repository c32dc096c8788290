"""Session loading: choose a device and a dtype per module, fetch the files, create the sessions.

``await load_sessions(repo, modules=None, dtype="auto", device="auto", ...)`` returns a ``Loaded``.

Devices (``webformers.dtypes.DEVICES``): ``"webgpu"``, ``"wasm"`` or ``"auto"`` (WebGPU when the adapter
reported by ``backend.adapter_info()`` exists, else wasm). On CPython every device runs on the CPU
session, but the same selection and fallback logic runs; pass ``adapter=`` (or set ``ADAPTER_OVERRIDE``)
to make it believe in an adapter, e.g. ``{"webgpu": True, "features": []}`` for SwiftShader.

Dtypes (``webformers.dtypes.DTYPES``):

- a name (``"q4"``) for every module, a mapping ``{module: dtype}`` (values may be ``"auto"``),
  ``"auto"``, or None (every module gets the device default);
- modules a mapping leaves out get the device default: on wasm ``q8`` when the repo has it, else
  ``fp32`` (as transformers.js does); on WebGPU ``fp32``; when the repo lacks the default, ``"auto"``;
- ``"auto"``: per module the best-quality dtype that runs natively on the device (no CPU-only matmuls
  under WebGPU, no fp16 without ``shader-f16``) and, with ``max_bytes``, keeps the total download of the
  loaded modules within budget. Quality comes from the repo's ``quantization_report.json``
  (``{"modules": {module: {dtype: {"kl", "top1", ...}}}}``: lowest KL, then highest top-1; a report that
  measured word error rate instead, ``{dtype: {"wer", ...}}`` with no ``kl`` (Whisper's), ranks by lowest
  WER, equal WERs by the smaller download); dtypes the report does not cover rank after measured ones, by
  bits (more bits first).

Capability fallback: an fp16-family dtype on a WebGPU adapter without ``shader-f16`` is replaced by its
``DType.fallback`` (fp16 -> fp32, q4f16 -> q4, ...) with a warning naming the replacement and the reason;
``strict=True`` raises instead. q8/int8/uint8 under WebGPU load with a warning (their matmuls run on the
CPU inside the WebGPU session). An explicitly requested WebGPU without an adapter falls back to wasm with
a warning (``strict=True``: error).

Sessions get external data (``*.onnx_data`` files of the variant) and, under WebGPU, keep their
``present*`` outputs (the KV cache) on the GPU unless ``keep_on_device`` names other outputs per module.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import backend
from .. import platform
from ..dtypes import CPU_MATMUL_ON_WEBGPU, DTYPES, check_device, get_dtype
from ..store import REPORT_PATH, LoadEvents, ModelRepo

__all__ = ["Loaded", "Plan", "load_sessions", "select_dtypes", "default_dtype", "onnx_output_names",
           "ADAPTER_OVERRIDE"]

#: When set (a dict like ``adapter_info()`` returns), used instead of ``backend.adapter_info()``.
ADAPTER_OVERRIDE: dict | None = None


@dataclass
class Plan:
    device: str
    dtypes: dict
    warnings: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    bytes: int = 0


@dataclass
class Loaded:
    sessions: dict
    dtypes: dict
    device: str
    warnings: list
    files: list
    adapter: dict = field(default_factory=dict)
    bytes: int = 0
    #: wall-clock ms: "files" (fetch or cache read + verification, all files at once) and one
    #: "session:<module>" per InferenceSession created
    timings: dict = field(default_factory=dict)

    def __getitem__(self, module: str):
        return self.sessions[module]

    def dispose(self) -> None:
        for s in self.sessions.values():
            s.dispose()
        self.sessions = {}


def default_dtype(manifest, module: str, device: str) -> str:
    """The dtype a module gets when nothing names one: see the module docstring."""
    order = ("q8", "fp32") if device == "wasm" else ("fp32",)
    for name in order:
        if manifest.has(module, name):
            return name
    return "auto"


def _runs_natively(dtype: str, device: str, features: set) -> bool:
    d = get_dtype(dtype)
    if device not in d.native_on:
        return False
    return device != "webgpu" or d.requires <= features


def _quality_key(report: dict | None, module: str, dtype: str):
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
    d = get_dtype(dtype)
    missing = d.requires - features
    if not missing:
        return dtype, None
    need = ", ".join(sorted(missing))
    if strict:
        raise ValueError(
            f"{module}: dtype {dtype!r} needs the WebGPU adapter feature {need}, which this adapter lacks "
            f"(strict=True); use {d.fallback!r} or device='wasm'" if d.fallback else
            f"{module}: dtype {dtype!r} needs the WebGPU adapter feature {need}, which this adapter lacks")
    seen = [dtype]
    cur = d
    while cur.requires - features:
        if cur.fallback is None:
            raise ValueError(f"{module}: dtype {cur.name!r} needs {need}, which the WebGPU adapter lacks, and has "
                             f"no fallback dtype; use device='wasm'")
        cur = get_dtype(cur.fallback)
        seen.append(cur.name)
    if not manifest.has(module, cur.name):
        raise ValueError(f"{module}: dtype {dtype!r} needs {need}, which the WebGPU adapter lacks, and its "
                         f"fallback {cur.name!r} is not in the repo. " + manifest.missing_message(module, cur.name))
    return cur.name, (f"{module}: {dtype} replaced by {cur.name}: the WebGPU adapter lacks {need} "
                      f"(needed for {dtype} arithmetic)")


def check_dtype_arg(dtype):
    """Validate a ``dtype`` argument before any I/O: a name, "auto", None or a {module: dtype} mapping
    whose values are names or "auto". Returns it (a mapping as a dict)."""
    if dtype is None:
        return {}
    if isinstance(dtype, str):
        if dtype != "auto":
            get_dtype(dtype)
        return dtype
    if isinstance(dtype, Mapping):
        for k, v in dtype.items():
            if v != "auto":
                try:
                    get_dtype(v)
                except ValueError as e:
                    raise ValueError(f"module {k!r}: {e}") from None
        return dict(dtype)
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

    if device == "auto":
        device = "webgpu" if has_gpu else "wasm"
    elif device == "webgpu" and not has_gpu:
        if strict:
            raise ValueError("device='webgpu' but no WebGPU adapter is available (strict=True); "
                             "valid devices here: wasm")
        warnings.append("device webgpu replaced by wasm: no WebGPU adapter is available")
        device = "wasm"

    # requested dtype per module (None: every module gets the device default, like an empty mapping)
    dtype = check_dtype_arg(dtype)
    if isinstance(dtype, str):
        requested = {m: dtype for m in modules}
    else:
        bad = [k for k in dtype if k not in all_modules]
        if bad:
            raise ValueError(f"dtype mapping names unknown module(s) {', '.join(map(repr, bad))}; "
                             f"the repo's modules: {', '.join(all_modules)}")
        requested = {m: dtype.get(m, default_dtype(manifest, m, device)) for m in modules}

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
            if variant.get("cpu_matmul_on_webgpu", d in CPU_MATMUL_ON_WEBGPU):
                warnings.append(f"{m}: {d} matmuls (MatMulInteger) have no WebGPU kernel: they run on the CPU "
                                f"inside the WebGPU session (slow); q4 runs natively")
        chosen[m] = d

    auto = [m for m, d in requested.items() if d == "auto"]
    fixed_bytes = sum(manifest.variant(m, d)["bytes"] for m, d in chosen.items())
    if max_bytes is not None and fixed_bytes > max_bytes:
        raise ValueError(f"the explicitly chosen dtypes ({', '.join(f'{m}: {d}' for m, d in chosen.items())}) "
                         f"need {fixed_bytes} bytes, over max_bytes={max_bytes}")
    if auto:
        cands = {}
        for m in auto:
            have = list(all_modules[m])
            native = [d for d in have if _runs_natively(d, device, features)]
            if not native:
                raise ValueError(f"{m}: none of the repo's dtypes ({', '.join(have)}) runs natively on {device}; "
                                 f"name a dtype explicitly")
            cands[m] = sorted(native, key=lambda d: (_quality_key(report, m, d), manifest.variant(m, d)["bytes"]))
        if max_bytes is None:
            for m in auto:
                chosen[m] = cands[m][0]
        else:
            budget = max_bytes - fixed_bytes
            best = _best_within(manifest, report, cands, budget)
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


def _best_within(manifest, report, cands: dict, budget: int) -> dict | None:
    """The best combination of per-module candidates whose bytes fit ``budget``.

    Compares combinations by (number of unmeasured choices, sum of KL, -sum of top-1 / -bits, bytes).
    Candidates that are both larger and worse than another candidate of the same module are dropped first.
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
        keys = [_quality_key(report, m, d) for m, d in zip(mods, combo)]
        key = (sum(k[0] for k in keys), sum(k[1] for k in keys), sum(k[2] for k in keys), size)
        if best_key is None or key < best_key:
            best, best_key = dict(zip(mods, combo)), key
    return best


# ------------------------------------------------------------------------------ ONNX output names

class _Reader:
    """Random access to model bytes (a JS Uint8Array in the browser) through a window, so only small
    slices cross to Python."""

    WINDOW = 1 << 16

    def __init__(self, data):
        self.data = data
        self.n = platform.byte_length(data)
        self.start, self.buf = 0, b""

    def byte(self, pos: int) -> int:
        if not (self.start <= pos < self.start + len(self.buf)):
            self.buf = platform.byte_slice(self.data, pos, min(self.n, pos + self.WINDOW))
            self.start = pos
        return self.buf[pos - self.start]

    def bytes(self, pos: int, end: int) -> bytes:
        return bytes(self.byte(i) for i in range(pos, end))


def _varint(r: _Reader, pos: int):
    shift = value = 0
    while True:
        if pos >= r.n:
            raise ValueError("truncated ONNX protobuf")
        b = r.byte(pos)
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(r: _Reader, pos: int, end: int):
    """(field number, wire type, value | (start, end)) of a protobuf message in [pos, end)."""
    while pos < end:
        tag, pos = _varint(r, pos)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, pos = _varint(r, pos)
            yield num, wt, v
        elif wt == 1:
            pos += 8
        elif wt == 2:
            n, pos = _varint(r, pos)
            yield num, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt} in ONNX model")


def onnx_output_names(data) -> list[str]:
    """The graph output names of an ONNX model given as bytes or a JS Uint8Array (reads only the framing)."""
    r = _Reader(data)
    for num, wt, v in _fields(r, 0, r.n):
        if num == 7 and wt == 2:  # ModelProto.graph
            names = []
            for gnum, gwt, gv in _fields(r, *v):
                if gnum == 12 and gwt == 2:  # GraphProto.output: ValueInfoProto
                    for vnum, vwt, vv in _fields(r, *gv):
                        if vnum == 1 and vwt == 2:
                            names.append(r.bytes(*vv).decode("utf-8"))
                            break
            return names
    raise ValueError("not an ONNX model: no graph found")


# ----------------------------------------------------------------------------------------- loading

def _main_first(module: str, files: list[str]) -> list[str]:
    main = [f for f in files if f.endswith(".onnx")]
    if len(main) != 1:
        raise ValueError(f"{module}: expected one .onnx file in {files}")
    return main + [f for f in files if f != main[0]]


async def load_sessions(repo: ModelRepo, modules: list[str] | None = None, *, dtype="auto", device="auto",
                        strict: bool = False, max_bytes: int | None = None, progress_callback=None,
                        keep_on_device: dict[str, list[str]] | None = None, adapter: dict | None = None) -> Loaded:
    """Choose dtypes/device (see the module docstring), fetch the files and create one session per module."""
    if adapter is None:
        adapter = ADAPTER_OVERRIDE if ADAPTER_OVERRIDE is not None else await backend.adapter_info()
    # the report only matters when some module may end up "auto" (a mapping can leave modules out)
    report = None
    if not isinstance(dtype, str) or dtype == "auto":  # None / mapping / "auto"
        report = await repo.optional_json(REPORT_PATH)
    plan = select_dtypes(repo.manifest, modules, dtype=dtype, device=device, adapter=adapter, strict=strict,
                         max_bytes=max_bytes, report=report)
    if keep_on_device is not None:
        if not isinstance(keep_on_device, Mapping):
            raise ValueError("keep_on_device must map module names to lists of output names")
        bad = [m for m in keep_on_device if m not in plan.dtypes]
        if bad:
            raise ValueError(f"keep_on_device names module(s) not being loaded: {', '.join(bad)}; "
                             f"loading: {', '.join(plan.dtypes)}")
    all_files = [f for fs in plan.files.values() for f in fs]
    sizes = {f: repo.manifest.entry(f)["size"] for f in all_files}
    events = LoadEvents(repo.model, [repo.progress_callback, progress_callback], sizes)
    warnings = list(repo.warnings)
    for w in plan.warnings:
        warnings.append(w)
        await events.warning(w)
    n_before = len(repo.warnings)

    t0 = time.perf_counter()
    sessions = {}
    try:
        # sessions the backend started before we asked (the browser's warm start, see backend/_ortweb.py)
        keys = {m: backend.session_key([repo.manifest.entry(f) for f in _main_first(m, files)], plan.device,
                                       None if keep_on_device is None else keep_on_device.get(m, ()))
                for m, files in plan.files.items()}
        for m in plan.files:
            s = await backend.adopt_session(keys[m], plan.device)
            if s is not None:
                sessions[m] = s
        for f in (f for m in sessions for f in plan.files[m]):
            await events.file_event("initiate", f, 0, sizes[f], True)
            await events.file_event("done", f, sizes[f], sizes[f], True)
        to_read = [f for m, fs in plan.files.items() if m not in sessions for f in fs]
        datas = await asyncio.gather(*(repo.file(f, events=events) for f in to_read))
        timings = {"files": round((time.perf_counter() - t0) * 1000, 1)}
        if sessions:
            timings["warm_started"] = sorted(sessions)
        by_path = dict(zip(to_read, datas))
        warnings.extend(repo.warnings[n_before:])

        for m, files in plan.files.items():
            if m in sessions:
                continue
            main, *rest = _main_first(m, files)
            external = [{"path": f.rsplit("/", 1)[-1], "data": by_path[f]} for f in rest]
            if keep_on_device is not None:
                keep = list(keep_on_device.get(m, ()))
            elif plan.device == "webgpu":
                keep = [n for n in onnx_output_names(by_path[main]) if n.startswith("present")]
            else:
                keep = []
            t0 = time.perf_counter()
            sessions[m] = await backend.create_session(by_path[main], device=plan.device,
                                                       external_data=external or None, keep_on_device=keep)
            timings[f"session:{m}"] = round((time.perf_counter() - t0) * 1000, 1)
            if repo.use_cache and repo.cache_name:
                await backend.remember_warm_start(repo.model, m, {
                    "key": keys[m], "cache": repo.cache_name, "device": plan.device, "keep": keep,
                    "files": [{"url": repo.url(f), "path": f.rsplit("/", 1)[-1],
                               "sha256": repo.manifest.entry(f)["sha256"]} for f in (main, *rest)]})
    except BaseException:
        for s in sessions.values():
            s.dispose()
        raise
    finally:
        await backend.drop_warm_sessions()
    loaded = Loaded(sessions=sessions, dtypes=dict(plan.dtypes), device=plan.device, warnings=warnings,
                    files=all_files, adapter=dict(adapter), bytes=plan.bytes, timings=timings)
    await events.ready(dtypes=loaded.dtypes, device=loaded.device)
    return loaded
