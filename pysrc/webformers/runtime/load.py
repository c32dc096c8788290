"""Loading a model's sessions: ``await load_sessions(repo, modules=None, dtype="auto", device="auto", ...)``
returns a ``Loaded`` (sessions, dtypes, device, warnings, files, adapter, bytes, timings).

It asks the backend for the adapter (``backend.adapter_info()``; ``ADAPTER_OVERRIDE`` or ``adapter=``
stand in for it, e.g. ``{"webgpu": True, "features": []}`` for SwiftShader: on CPython every device runs
on the CPU session, but the same selection and fallback logic runs), reads the repo's quantization report
when some module may be ``"auto"``, plans the dtypes (``runtime.plan``), fetches every file of the plan at
once (verified by the store) and creates one session per module.

Sessions get external data (``*.onnx_data`` files of the variant) and, under WebGPU, keep their
``present*`` outputs (the KV cache) on the GPU unless ``keep_on_device`` names other outputs per module.

Warm start (browser): a session the backend created ahead of time for the same files and options
(``backend.adopt_session``) is adopted instead of fetching and creating it; after creating a session
from Cache API files, ``backend.remember_warm_start`` records how, for the next page.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import backend
from ..store import REPORT_PATH, LoadEvents, ModelRepo
from .onnx_info import onnx_output_names
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
    #: "session:<module>" per InferenceSession created
    timings: dict = field(default_factory=dict)

    def __getitem__(self, module: str):
        return self.sessions[module]

    def dispose(self) -> None:
        for s in self.sessions.values():
            s.dispose()
        self.sessions = {}


def _main_first(module: str, files: list[str]) -> list[str]:
    main = [f for f in files if f.endswith(".onnx")]
    if len(main) != 1:
        raise ValueError(f"{module}: expected one .onnx file in {files}")
    return main + [f for f in files if f != main[0]]


async def load_sessions(repo: ModelRepo, modules: list[str] | None = None, *, dtype="auto", device="auto",
                        strict: bool = False, max_bytes: int | None = None, progress_callback=None,
                        keep_on_device: dict[str, list[str]] | None = None, adapter: dict | None = None) -> Loaded:
    """Plan dtypes/device (``runtime.plan``), fetch the files and create one session per module (see the
    module docstring)."""
    request = check_dtype_arg(dtype)
    if adapter is None:
        adapter = ADAPTER_OVERRIDE if ADAPTER_OVERRIDE is not None else await backend.adapter_info()
    # the report only matters when some module may end up "auto" (a mapping can leave modules out)
    report = await repo.optional_json(REPORT_PATH) if request.may_be_auto else None
    plan = select_dtypes(repo.manifest, modules, dtype=request, device=device, adapter=adapter, strict=strict,
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
