"""Loading a model's sessions: ``await load_sessions(repo, modules=None, dtype="auto", device="auto", ...)``
returns a ``Loaded`` (sessions, dtypes, device, warnings, files, adapter, bytes, timings).

It asks the backend for the adapter (``backend.adapter_info()``; ``ADAPTER_OVERRIDE`` or ``adapter=``
stand in for it, e.g. ``{"webgpu": True, "features": []}`` for SwiftShader: on CPython every device runs
on the CPU session, but the same selection and fallback logic runs), reads the repo's quantization report
when some module may be ``"auto"``, plans the dtypes (``runtime.plan``), fetches every file of the plan at
once (verified by the store) and creates one session per module.

Before any model file is read, the memory plan (``runtime.memory``: weights + KV cache for ``context``
tokens + overhead against ``max_memory`` when given, the WebAssembly heap on wasm, the device's memory)
refuses the load with ``MemoryPlanError`` or, for ``dtype="auto"``, picks the best dtypes within it;
``loaded.memory`` is its estimate.

Sessions get external data (``*.onnx_data`` files of the variant) and, under WebGPU, keep their
``present*`` outputs (the KV cache) on the GPU unless ``keep_on_device`` names other outputs per module.

Each session is created in an execution form (``runtime.forms``: ``execution="auto"|"native"|"fp32"``,
``max_memory``): the files are the dtype's either way. ``timings["forms"]`` says, per module, the form, why
(``reason``), ``est_peak_bytes``, ``expanded_matmuls``, ``expanded_weights`` and ``rewrite_ms``; it is left
out when no form was chosen (``execution="auto"`` on CPython runs every stored file as it is).

Recovery (browser): each session gets ``session.recovery``, a :class:`Recovery` holding what made it. After
the onnxruntime worker crashed, a session's next run re-creates it in the new worker from the repo's files
(read from the Cache API and sha256-checked by the store: no download). When the WebGPU device is lost, every
session of the load is re-created on wasm (same files; the execution forms chosen again for wasm, e.g. the fp32
form of a quantized model that ran natively on WebGPU, ``timings["forms"]`` updated; a ``warning`` event says so,
``loaded.device`` and ``timings["device_lost"]`` too, and so do the ``owners``: the CausalLM or the
WhisperModel, whose ``device`` / ``load_timings`` / ``warnings`` follow) and the run in flight raises
``DeviceLost`` saying so; ``strict=True`` keeps the error (no fallback). A load asked for WebGPU after the
device was lost plans wasm (``strict=True`` with device="webgpu": DeviceLost).

Warm start (browser): a session the backend created ahead of time for the same files and options
(``backend.adopt_session``) is adopted instead of fetching and creating it; after creating a session
from Cache API files, ``backend.remember_warm_start`` records how, for the next page.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import backend, forms, memory
from .. import platform
from ..platform.errors import DeviceLost
from ..store import REPORT_PATH, LoadEvents, ModelRepo
from .exec_form import SESSION_CONFIG
from .onnx_info import onnx_opset, onnx_output_names, quantized_matmul_weights
from .plan import check_dtype_arg, select_dtypes

__all__ = ["Loaded", "load_sessions", "ADAPTER_OVERRIDE"]

#: When set (a dict like ``adapter_info()`` returns), used instead of ``backend.adapter_info()``.
ADAPTER_OVERRIDE: dict | None = None


@dataclass
class Loaded:
    """The loaded sessions ({module: Session}, also ``loaded[module]``) and what was loaded."""
    sessions: dict
    dtypes: dict
    device: str
    warnings: list
    files: list
    adapter: dict = field(default_factory=dict)
    bytes: int = 0
    #: wall-clock ms: "files" (fetch or cache read + verification, all files at once) and one
    #: "session:<module>" per InferenceSession created; "warm_started" (modules adopted) and "forms"
    #: ({module: execution form report} when a form was chosen, see the module docstring)
    timings: dict = field(default_factory=dict)
    #: the memory plan's estimate and limits (``runtime.memory.MemoryPlan.as_dict``)
    memory: dict = field(default_factory=dict)
    #: how the sessions are made again after a crash or a lost device (browser; see the module docstring)
    recovery: "Recovery | None" = None

    def __getitem__(self, module: str):
        return self.sessions[module]

    def dispose(self) -> None:
        for s in self.sessions.values():
            s.dispose()
        self.sessions = {}


class Recovery:
    """Re-creates the sessions of one load: after a worker crash (same device) or a lost WebGPU device (wasm)."""

    def __init__(self, repo: ModelRepo, loaded: "Loaded", files: dict, forms_by_module: dict, keep: dict,
                 strict: bool, events: LoadEvents, form_request: forms.FormRequest):
        self.repo, self.loaded, self.files, self.forms, self.keep = repo, loaded, files, forms_by_module, keep
        self.strict, self.events, self.form_request = strict, events, form_request
        #: objects whose ``device``, ``load_timings`` and ``warnings`` follow a fallback (set when present)
        self.owners: list = []
        self._lock = asyncio.Lock()

    def _module(self, session) -> str:
        return next(m for m, s in self.loaded.sessions.items() if s is session)

    async def _read(self, module: str) -> dict:
        return dict(zip(self.files[module], await asyncio.gather(*(self.repo.file(f) for f in self.files[module]))))

    async def _make(self, module: str, device: str, by_path: dict | None = None):
        by_path = by_path if by_path is not None else await self._read(module)
        main, *rest = _main_first(module, self.files[module])
        external = [{"path": f.rsplit("/", 1)[-1], "data": by_path[f]} for f in rest]
        t0 = time.perf_counter()
        s = await backend.create_session(by_path[main], device=device, external_data=external or None,
                                         keep_on_device=self.keep.get(module, []) if device == "webgpu" else [],
                                         form=self.forms[module])
        self.loaded.timings[f"session:{module}"] = round((time.perf_counter() - t0) * 1000, 1)
        return s

    async def _choose_wasm_forms(self) -> dict:
        """The files of every module, after choosing the execution forms for wasm again (the load's
        ``execution`` / ``max_memory``): a quantized model that ran natively on WebGPU runs in the fp32 form
        where it fits. ``timings["forms"]`` then reports the new choice."""
        by_path = {}
        for m in self.files:
            by_path.update(await self._read(m))
        plan = _FormPlan(self.files, self.loaded.dtypes, "wasm")
        sizes = {f: platform.byte_length(d) for f, d in by_path.items()}
        choices = _choose_forms(plan, self.form_request, {}, by_path, sizes)
        self.forms.update({m: c.form for m, c in choices.items()})
        self._choices = choices
        return by_path

    async def recreate(self, session) -> None:
        """Make ``session`` again on its device in the running worker (its old worker crashed)."""
        async with self._lock:
            if not session.crashed:  # another call re-created it meanwhile
                return
            module = self._module(session)
            session.replace_with(await self._make(module, session.device))
            self.loaded.timings.setdefault("recovered", []).append(module)
            for o in self.owners:
                if hasattr(o, "load_timings"):
                    o.load_timings.update(self.loaded.timings)

    async def device_lost(self, session, message: str) -> None:
        """The WebGPU device of ``session`` was lost: re-create every session of the load on wasm (unless
        strict), then raise DeviceLost saying what happened."""
        if self.strict:
            raise DeviceLost(f"{message}. strict=True: no fallback to wasm; load the model again with "
                             "device='wasm', or reload the page for a new WebGPU device")
        async with self._lock:
            if self.loaded.device == "webgpu":
                by_path = await self._choose_wasm_forms()
                for m, s in self.loaded.sessions.items():
                    fresh = await self._make(m, "wasm", by_path)
                    s.dispose()
                    s.replace_with(fresh)
                del by_path
                if self.form_request.chooses(backend.backend_name):
                    self.loaded.timings["forms"] = {m: _form_report(self._choices[m], s.form)
                                                    for m, s in self.loaded.sessions.items()}
                warning = (f"{self.repo.model}: the WebGPU device was lost; the model's sessions were "
                           "re-created on wasm from the cached files (strict=True turns this fallback off)")
                self.loaded.device = "wasm"
                self.loaded.warnings.append(warning)
                self.loaded.timings["device_lost"] = {"message": message, "fallback": "wasm"}
                for o in self.owners:
                    o.device = "wasm"
                    if hasattr(o, "warnings"):
                        o.warnings.append(warning)
                    if hasattr(o, "load_timings"):
                        o.load_timings.update(self.loaded.timings)
                await self.events.warning(warning)
        raise DeviceLost(f"{message}. The model now runs on wasm (its sessions were re-created there): call again")


async def _device_lost() -> dict | None:
    """The browser runtime's lost WebGPU device ({"reason", "message"}), or None."""
    if not platform.IN_BROWSER:
        return None
    from .backend import _ortweb
    return await _ortweb.device_lost()


def _explicit_max_memory(execution, max_memory, form_request: forms.FormRequest) -> int | None:
    """The ``max_memory`` the caller named (bytes), or None: given here, or inside a checked ``FormRequest``
    passed as ``execution`` when it is not the default."""
    if max_memory is not None:
        return form_request.max_memory
    if isinstance(execution, forms.FormRequest) and execution.max_memory != forms.DEFAULT_MAX_MEMORY:
        return execution.max_memory
    return None


def _main_first(module: str, files: list[str]) -> list[str]:
    main = [f for f in files if f.endswith(".onnx")]
    if len(main) != 1:
        raise ValueError(f"{module}: expected one .onnx file in {files}")
    return main + [f for f in files if f != main[0]]


@dataclass
class _FormPlan:
    """What :func:`_choose_forms` reads of a load plan."""
    files: dict
    dtypes: dict
    device: str


def _choose_forms(plan, request: forms.FormRequest, adopted: dict, by_path: dict, sizes: dict) -> dict:
    """{module: FormChoice}: adopted sessions keep the choice recorded with them; the others' weights are
    counted from their main file when the choice depends on them."""
    facts, fixed = [], {}
    for m, files in plan.files.items():
        if m in adopted:
            fixed[m] = forms.FormChoice(**adopted[m].choice)
            facts.append(forms.ModuleFacts(m, plan.dtypes[m], sum(sizes[f] or 0 for f in files)))
            continue
        main = by_path[_main_first(m, files)[0]]
        counted = request.fixed_form(plan.dtypes[m], plan.device, backend.backend_name) != "native"
        facts.append(forms.ModuleFacts(m, plan.dtypes[m], sum(platform.byte_length(by_path[f]) for f in files),
                                       quantized_matmul_weights(main) if counted else None,
                                       onnx_opset(main) if counted else None))
    return forms.choose_forms(facts, request, device=plan.device, backend=backend.backend_name, fixed=fixed)


def _form_report(choice: forms.FormChoice, done: dict) -> dict:
    """What ``timings["forms"]`` says of one module: the choice and what the backend did."""
    out = {**choice.as_dict(), "expanded_matmuls": done["changed"], "expanded_weights": done["weights"],
           "rewrite_ms": done["rewrite_ms"]}
    if choice.form == "fp32":
        out["session_config"] = dict(SESSION_CONFIG)
    return out


async def load_sessions(repo: ModelRepo, modules: list[str] | None = None, *, dtype="auto", device="auto",
                        strict: bool = False, max_bytes: int | None = None, progress_callback=None,
                        keep_on_device: dict[str, list[str]] | None = None, adapter: dict | None = None,
                        execution="auto", max_memory=None, context: int | None = None,
                        config: dict | None = None) -> Loaded:
    """Plan dtypes/device (``runtime.plan``), check the memory plan (``runtime.memory``, for ``context``
    tokens of KV cache; the shapes from ``config``, the repo's config.json when the caller has it, else read
    here), fetch the files and create one session per module in its execution form (``runtime.forms``; see
    the module docstring)."""
    request = check_dtype_arg(dtype)
    form_request = forms.check_form_args(execution, max_memory)
    if adapter is None:
        adapter = ADAPTER_OVERRIDE if ADAPTER_OVERRIDE is not None else await backend.adapter_info()
    lost = await _device_lost()
    if lost is not None and adapter.get("webgpu") and device in ("auto", "webgpu"):
        if strict and device == "webgpu":
            raise DeviceLost(f"{repo.model}: device='webgpu' but the WebGPU device was lost ({lost['reason']}) "
                             "(strict=True); use device='wasm', or reload the page for a new WebGPU device")
        adapter = {**adapter, "webgpu": False}  # the plan then says wasm (with its warning for device='webgpu')
    # the report only matters when some module may end up "auto" (a mapping can leave modules out)
    report = await repo.optional_json(REPORT_PATH) if request.may_be_auto else None
    plan = select_dtypes(repo.manifest, modules, dtype=request, device=device, adapter=adapter, strict=strict,
                         max_bytes=max_bytes, report=report)
    # the memory plan, before any model file is read: refuse (MemoryPlanError) or, for "auto", pick smaller
    shape = memory.ModelShape.from_config(config if config is not None else await repo.optional_json("config.json"))
    limits = memory.memory_limits(backend=backend.backend_name, device=plan.device,
                                  max_memory=_explicit_max_memory(execution, max_memory, form_request),
                                  device_memory=platform.device_memory())
    plan, mem_plan = memory.check_plan(
        repo.manifest, plan, shape, limits, auto=request.every == "auto" or "auto" in request.per_module.values(),
        reselect=lambda budget: select_dtypes(repo.manifest, modules, dtype=request, device=plan.device,
                                              adapter=adapter, strict=strict, report=report,
                                              max_bytes=min(budget, max_bytes or budget)),
        context=context)
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
        def key(m):
            load_sha256 = [str(repo.manifest.entry(f)["sha256"]) for fs in plan.files.values() for f in fs]
            form = form_request.key(plan.dtypes[m], plan.device, backend.backend_name, load_sha256)
            return backend.session_key([repo.manifest.entry(f) for f in _main_first(m, plan.files[m])],
                                       plan.device, None if keep_on_device is None else keep_on_device.get(m, ()),
                                       form)
        keys = {m: key(m) for m in plan.files}
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
        # a file of a repo without a manifest gets its sha256 at its first download: name the session by it
        keys.update({m: key(m) for m in plan.files if m not in sessions})
        warnings.extend(repo.warnings[n_before:])
        choices = _choose_forms(plan, form_request, sessions, by_path, sizes)

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
                                                       external_data=external or None, keep_on_device=keep,
                                                       form=choices[m].form)
            timings[f"session:{m}"] = round((time.perf_counter() - t0) * 1000, 1)
            if repo.use_cache and repo.cache_name:
                await backend.remember_warm_start(repo.model, m, {
                    "key": keys[m], "cache": repo.cache_name, "device": plan.device, "keep": keep,
                    "form": choices[m].form, "choice": choices[m].as_dict(),
                    "files": [{"url": repo.url(f), "path": f.rsplit("/", 1)[-1],
                               "sha256": repo.manifest.entry(f)["sha256"]} for f in (main, *rest)]})
        if form_request.chooses(backend.backend_name):
            timings["forms"] = {m: _form_report(choices[m], sessions[m].form) for m in plan.files}
    except BaseException:
        for s in sessions.values():
            s.dispose()
        raise
    finally:
        await backend.drop_warm_sessions()
    loaded = Loaded(sessions=sessions, dtypes=dict(plan.dtypes), device=plan.device, warnings=warnings,
                    files=all_files, adapter=dict(adapter), bytes=plan.bytes, timings=timings,
                    memory=mem_plan.as_dict())
    if platform.IN_BROWSER:
        keep = {m: list(keep_on_device.get(m, ())) if keep_on_device is not None
                else [n for n in s.output_names if n.startswith("present")] for m, s in sessions.items()}
        loaded.recovery = Recovery(repo, loaded, dict(plan.files), {m: s.form["form"] for m, s in sessions.items()},
                                   keep, strict, events, form_request)
        for m, s in sessions.items():
            s.label = f"{repo.model} {m} ({plan.dtypes[m]} on {plan.device})"
            s.recovery = loaded.recovery
    await events.ready(dtypes=loaded.dtypes, device=loaded.device)
    return loaded
