"""Browser backend: onnxruntime-web, in a worker of its own (or in this thread), reached through Pyodide's ``js``.

The runtime is the object ``webformers/assets/runtime.js`` makes (``create``, ``run``, ``release``, ...): the
host's ``js.wfOrt`` when it provides one (the demo's ``web/worker.js`` starts it early, so it loads while
Pyodide boots), else started here on first use from ``webformers.configure(assets=...)``: the assets are
checked first (a missing or misconfigured file raises ``webformers.config.AssetsError`` naming the file and
the URL tried, also sent as an ``error`` event and to the console), then ``runtime.js`` starts
``ort-host.js`` as a module Worker, or runs onnxruntime-web in this thread where ``Worker`` does not exist
(or with ``configure(ort_worker=False)``).

Model bytes go to the onnxruntime worker without entering Python memory; outputs Python does not fetch
(the KV cache) stay there and are fed back by reference (:class:`RemoteTensor`), so per run only the small
inputs and the fetched outputs (the logits) cross, each copied once. Metadata crosses as JSON, which is
cheaper than walking JS objects attribute by attribute from Python. A decode step is one request: the refs
released since the last run go with it, and where this thread may block (a cross-origin isolated worker)
its reply comes back through shared memory (``runShared``, see ``_BLOCK_MAX_RUN_MS``).

Execution forms: ``create_session(..., form="fp32")`` has the onnxruntime worker rewrite the model bytes
(``webformers/assets/exec-form.js``) before it creates the session; the session says what was done (``session.form``).

Warm start: after a load, :func:`remember_warm_start` stores which files and options made each session;
a page that names the model when it starts the worker (``WebformersClient({warmStart})``) has the
onnxruntime worker create those sessions while Pyodide boots, and :func:`adopt_session` hands one over
when Python asks for a session with the same key (files checked against their sha256 first).

Recovery: a session and its tensors belong to one onnxruntime worker (``gen``). When that worker dies, its
calls raise :class:`~webformers.platform.errors.RuntimeCrashed` at once and runtime.js starts a new worker
on the next call; a session given a ``recovery`` (``runtime.load`` does) is re-created there from the cached
files before its next run. When the WebGPU device is lost, the WebGPU run raises
:class:`~webformers.platform.errors.DeviceLost` after the recovery re-created the model's sessions on wasm
(or not, with ``strict=True``). Test hooks: :func:`test_hook`.
"""
from __future__ import annotations

import asyncio
import json
import time

import js  # type: ignore[import-not-found]
import numpy as np
from pyodide.ffi import JsException, JsProxy, to_js  # type: ignore[import-not-found]

from ... import config
from ...platform.errors import DeviceLost, RuntimeCrashed
from ..exec_form import FORMS

backend_name = "onnxruntime-web"

# numpy dtype -> (ort type name, numpy view dtype whose buffer JS can read)
_TO_ORT = {
    np.dtype(np.float32): ("float32", None),
    np.dtype(np.float16): ("float16", np.uint16),
    np.dtype(np.int64): ("int64", None),
    np.dtype(np.int32): ("int32", None),
    np.dtype(np.uint8): ("uint8", None),
    np.dtype(np.int8): ("int8", None),
    np.dtype(np.bool_): ("bool", np.uint8),
}
_FROM_ORT = {"float32": np.float32, "float16": np.uint16, "int64": np.int64, "int32": np.int32,
             "uint8": np.uint8, "int8": np.int8, "bool": np.uint8}


# ------------------------------------------------------------------------------------ the runtime

_runtime = None   # the runtime.js object once started (or the host's js.wfOrt)
_starting = None  # the task starting it


def _host_runtime():
    """The host's ``js.wfOrt`` (the demo's worker), or None."""
    try:
        host = js.wfOrt
    except AttributeError:
        return None
    return host if isinstance(host, JsProxy) else None


#: what every assets error ends with: where the files must be
_ASSETS_HINT = ("point webformers.configure(assets=...) at the folder holding runtime.js, ort-host.js and ort/ "
                "(a `webformers site` folder has them in webformers/)")


async def _check_loader(url: str) -> None:
    """Raise AssetsError when ``runtime.js`` (the first file needed) is not at ``url``."""
    try:
        resp = await js.fetch(url, to_js({"method": "HEAD", "cache": "no-store"}, dict_converter=js.Object.fromEntries))
    except Exception as e:
        raise config.AssetsError(f"webformers' browser runtime runtime.js could not be fetched from {url}: {e}; "
                                 + _ASSETS_HINT) from None
    if not resp.ok:
        raise config.AssetsError(f"webformers' browser runtime runtime.js is missing: {url} answered HTTP "
                                 f"{int(resp.status)}; " + _ASSETS_HINT)
    ctype = str(resp.headers.get("content-type") or "")
    if "javascript" not in ctype:
        raise config.AssetsError(f"webformers' browser runtime runtime.js is misconfigured: {url} is served as "
                                 f"{ctype!r}, expected a JavaScript type (text/javascript); " + _ASSETS_HINT)


async def _start():
    global _runtime
    s = config.settings()
    assets = s["assets"]
    opts = {"threads": s["threads"] or 0}
    if s["ort_worker"] is not None:
        opts["inThread"] = not s["ort_worker"]
    try:
        await _check_loader(assets + "runtime.js")
        from pyodide.code import run_js  # type: ignore[import-not-found]
        module = await run_js(f"import({json.dumps(assets + 'runtime.js')})")
        try:
            rt = await module.startRuntime(assets, to_js(opts, dict_converter=js.Object.fromEntries))
        except JsException as e:
            if "configure(ort_worker=True)" in str(e.message):
                raise ValueError(str(e.message)) from None
            raise config.AssetsError(str(e.message)) from None
    except config.AssetsError as e:
        js.console.error(str(e))
        from ...platform import emit_page_event
        emit_page_event({"status": "error", "message": str(e)})
        raise
    info = rt.info()
    config.mark_started(assets=assets, threads=s["threads"], ort_worker=s["ort_worker"], mode=str(info.mode),
                        ort_threads=int(info.threads))
    _runtime = rt
    return rt


async def runtime():
    """The runtime object (started on first use; the host's ``js.wfOrt`` when it has one). Raises
    ``webformers.config.AssetsError`` when the assets are missing or misconfigured (a later call tries again)."""
    global _runtime, _starting
    if _runtime is not None:
        return _runtime
    host = _host_runtime()
    if host is not None:
        _runtime = host
        return host
    if _starting is None:
        _starting = asyncio.ensure_future(_start())
    try:
        return await asyncio.shield(_starting)
    except BaseException:
        if _starting is not None and _starting.done():
            _starting = None
        raise


def _started_runtime():
    """The runtime for the calls made once a session exists (release, dispose)."""
    return _runtime if _runtime is not None else _host_runtime()


def runtime_info() -> dict | None:
    """``{"threads", "version", "mode"}`` of the running runtime ("worker" or "in-thread"), None before it starts."""
    rt = _started_runtime()
    info = rt.info() if rt is not None else None
    if not isinstance(info, JsProxy):
        return None
    out = info.to_py()
    return {**out, "mode": out.get("mode", "worker")}


def request_counts() -> dict:
    """The requests sent to onnxruntime's side so far, by method (``{"run": 17, "release": 1, ...}``); a
    decode step costs one run and nothing else."""
    rt = _started_runtime()
    return {} if rt is None or not hasattr(rt, "calls") else json.loads(rt.calls())


async def adapter_info() -> dict:
    """The WebGPU adapter and WASM threads (``wfBridge.adapterInfo`` when the host has one, else the runtime's)."""
    try:
        bridge = js.wfBridge
    except AttributeError:
        bridge = None
    if isinstance(bridge, JsProxy) and hasattr(bridge, "adapterInfo"):
        info = await bridge.adapterInfo()
    else:
        info = await (await runtime()).adapterInfo()
    return info.to_py()


# ------------------------------------------------------------------------- tensors kept in the worker

_to_free: list[int] = []
_free_gen = None  # the worker the refs in _to_free belong to
_flush_scheduled = False
_first_release_at = 0.0  # time.monotonic() of the oldest ref in _to_free
#: how long released refs wait for a run to carry them before they are sent on their own (s): a decode
#: loop's next step takes them along, so a step costs one message each way
_FLUSH_AFTER_S = 0.05
#: workers whose WebGPU device was lost (their gpu-buffer tensors are gone)
_lost_gpu: set = set()


def _is_live(gen) -> bool:
    rt = _started_runtime()
    return gen is None or rt is None or not hasattr(rt, "isLive") or bool(rt.isLive(gen))


def _flush() -> None:
    global _flush_scheduled
    _flush_scheduled = False
    if not _to_free:
        return
    # refs released since a run last took them may still ride with the next one (a timer can fire late, e.g.
    # after this thread blocked on a run; that run took the refs that waited then)
    wait = _FLUSH_AFTER_S - (time.monotonic() - _first_release_at)
    if wait > 0.001:
        _flush_scheduled = True
        asyncio.get_running_loop().call_later(wait, _flush)
        return
    refs = to_js(_to_free[:])
    _to_free.clear()
    rt = _started_runtime()
    rt.release(refs, _free_gen) if _free_gen is not None else rt.release(refs)


def _take_frees(gen) -> list[int]:
    """The refs to free with a run on worker ``gen`` (refs of another worker are dropped: it is gone)."""
    out = _to_free[:] if gen == _free_gen else []
    _to_free.clear()
    return out


class RemoteTensor:
    """An output left in the onnxruntime worker (CPU memory there, or a GPU buffer under WebGPU); type "state":
    the outputs a ``Session.run_state`` keeps together (a KV cache)."""

    __slots__ = ("ref", "type", "dims", "location", "gen", "_live")

    def __init__(self, ref: int, type: str, dims: list, location: str, gen=None):
        self.ref, self.type, self.dims, self.location, self.gen = ref, type, tuple(dims), location, gen
        self._live = True

    def __repr__(self) -> str:
        return f"RemoteTensor({self.type}{list(self.dims)} on {self.location})"

    @property
    def lost(self) -> bool:
        """Gone with its worker (crashed) or its WebGPU device (lost)."""
        return not _is_live(self.gen) or (self.location == "gpu-buffer" and self.gen in _lost_gpu)

    def release(self) -> None:
        """Free it in the worker: batched, sent with the next run, or after ``_FLUSH_AFTER_S`` without one
        (refs of a worker that is gone are dropped there)."""
        global _flush_scheduled, _free_gen, _first_release_at
        if not self._live:
            return
        self._live = False
        if self.location == "gpu-buffer" and self.gen in _lost_gpu:  # gone with its WebGPU device
            return
        if self.gen != _free_gen:  # a new worker: the refs kept for the old one are gone with it
            _to_free.clear()
            _free_gen = self.gen
        if not _to_free:
            _first_release_at = time.monotonic()
        _to_free.append(self.ref)
        if not _flush_scheduled:
            _flush_scheduled = True
            try:
                asyncio.get_running_loop().call_later(_FLUSH_AFTER_S, _flush)
            except RuntimeError:  # no running loop (interpreter teardown): send now
                _flush()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


def release(value) -> None:
    """Free a backend tensor now (a no-op for numpy arrays)."""
    if isinstance(value, RemoteTensor):
        value.release()


def _numpy(data, ort_type: str, dims) -> np.ndarray:
    out = np.empty(int(np.prod(dims)) if dims else 1, dtype=_FROM_ORT[ort_type])
    if out.size:
        data.assign_to(out)
    if ort_type == "float16":
        out = out.view(np.float16)
    elif ort_type == "bool":
        out = out.view(np.bool_)
    return out.reshape(dims)


_NATIVE = {"form": "native", "changed": 0, "weights": 0, "rewrite_ms": 0.0}

# Runs whose last run took at most _BLOCK_MAX_RUN_MS (a decode step) wait for their reply blocking this thread
# (runtime.js runShared: shared memory, no event-loop turn), up to twice the last run's time plus
# _BLOCK_MARGIN_MS; past that the reply is awaited, so a crashed worker is still noticed. Longer runs (a
# prefill) are awaited from the start: against them the saving is nothing.
_BLOCK_MAX_RUN_MS = 500.0
_BLOCK_MARGIN_MS = 25.0


class Session:
    """A session in the onnxruntime worker ``gen``. ``label`` names it in errors; ``recovery`` (set by
    ``runtime.load``): ``await recovery.recreate(session)`` makes it again in a new worker after a crash,
    ``await recovery.device_lost(session, message)`` handles a lost WebGPU device (and raises)."""

    def __init__(self, sid: int, info: dict, device: str, form: dict | None = None, choice: dict | None = None,
                 gen=None):
        self.label = "a session"
        self.recovery = None
        self._set(sid, info, device, form, gen)
        #: a warm-started session's form choice, as recorded when it was made (runtime.forms.FormChoice.as_dict)
        self.choice = choice
        #: onnxruntime's own time for the last run (ms, the onnxruntime worker's clock)
        self.last_run_ms = None

    def _set(self, sid: int, info: dict, device: str, form: dict | None, gen) -> None:
        self._sid, self._gen = sid, gen
        #: the (input, output) pairs of run_state the worker holds for this session
        self._carry_pairs = None
        #: how long the next run may block this thread waiting for its reply (0: await it), from the last run
        self._block_ms = 0
        self.device = device
        #: the execution form it was created in (see runtime.backend: create_session)
        self.form = form or dict(_NATIVE)
        self.input_names = list(info["inputNames"])
        self.output_names = list(info["outputNames"])
        # element types in onnxruntime's spelling ("tensor(float16)"), like the CPython backend
        self.input_types = {m["name"]: "tensor(float)" if m["type"] == "float32" else f"tensor({m['type']})"
                            for m in info.get("inputMetadata") or []}

    def replace_with(self, other: "Session") -> None:
        """Take over ``other``'s session in the worker (a re-created one); this object stays the model's."""
        self._set(other._sid, {"inputNames": other.input_names, "outputNames": other.output_names}, other.device,
                  other.form, other._gen)
        self.input_types = dict(other.input_types)
        other._sid = None

    @property
    def crashed(self) -> bool:
        """Its worker is gone (the session with it)."""
        return self._sid is not None and not _is_live(self._gen)

    async def run(self, feeds: dict, fetch=None) -> dict:
        return (await self._run(feeds, fetch, None, None))[0]

    async def run_state(self, feeds: dict, state, pairs, fetch=None) -> tuple[dict, "RemoteTensor"]:
        """A run whose outputs ``o`` of ``pairs`` [(input i, output o)] stay together in the worker as one
        state, fed as the inputs ``i`` of the next run_state (``state``; None: ``feeds`` hold those inputs).
        ``state`` is consumed (freed by this run); returns (the other outputs, the new state)."""
        if state is not None:
            self._check_fed("state", state)
            state._live = False  # the worker frees it with this run
        return await self._run(feeds, fetch, [list(p) for p in pairs], state)

    def _check_fed(self, what: str, value: "RemoteTensor") -> None:
        """Raise when ``value`` cannot be fed to this session: released, or gone with another worker (this
        session's is live when this is called) or with a lost WebGPU device."""
        if not value._live:
            raise ValueError(f"{what}: {value!r} was released or fed already")
        if (value.gen != self._gen and value.lost) or (value.location == "gpu-buffer" and value.gen in _lost_gpu):
            raise RuntimeCrashed(f"{self.label}: {what}: {value!r} was lost with the onnxruntime worker (crashed) "
                                 "or the WebGPU device (lost) that held it; run again without it (a generation "
                                 "starts over)")

    async def _run(self, feeds: dict, fetch, pairs, state):
        """A run; with ``pairs`` (not None) a run_state fed ``state``."""
        if self._sid is None:
            raise RuntimeError("this session was disposed")
        rt = await runtime()
        if self.crashed:
            if self.recovery is None:
                raise RuntimeCrashed(f"{self.label} was lost with the onnxruntime worker, which crashed; "
                                     "create the session again")
            await self.recovery.recreate(self)
            if state is not None:
                raise RuntimeCrashed(f"{self.label}: {state!r} was lost with the onnxruntime worker, which "
                                     "crashed; run again without it (a generation starts over)")
        refs, specs, arrays = {}, [], []
        for name, value in feeds.items():
            if isinstance(value, RemoteTensor):
                self._check_fed(f"input {name!r}", value)
                refs[name] = value.ref
                continue
            arr = np.ascontiguousarray(value)
            try:
                ort_type, view = _TO_ORT[arr.dtype]
            except KeyError:
                raise TypeError(f"input {name!r}: numpy dtype {arr.dtype} has no onnxruntime-web tensor type; "
                                f"supported: {', '.join(str(d) for d in _TO_ORT)}") from None
            specs.append([name, ort_type, list(arr.shape)])
            arrays.append((arr.view(view) if view is not None else arr).reshape(-1))
        spec = {"sid": self._sid, "gen": self._gen, "gpu": self.device == "webgpu", "refs": refs,
                "arrays": specs, "fetch": None if fetch is None else list(fetch), "free": _take_frees(self._gen)}
        if pairs is not None:  # the worker keeps a session's pairs: sent when they change (or it is new)
            spec["carry"] = {"state": None if state is None else state.ref}
            if pairs != self._carry_pairs:
                spec["carry"]["pairs"] = self._carry_pairs = pairs
        spec = json.dumps(spec)
        try:
            block = self._block_ms
            if block and getattr(rt, "sharedRuns", False):
                r = rt.runShared(spec, block, *arrays)
                res = r.value if r.ready else await r.promise
            else:
                res = await rt.run(spec, *arrays)
        except JsException as e:
            kind = str(getattr(e, "name", "") or "")
            if kind == "RuntimeCrashed":
                raise RuntimeCrashed(f"{self.label}: {e.message}") from None
            if kind == "DeviceLost":
                _lost_gpu.add(self._gen)
                message = f"{self.label}: {e.message}"
                if self.recovery is not None:
                    await self.recovery.device_lost(self, message)  # raises DeviceLost
                raise DeviceLost(message) from None
            raise
        meta = json.loads(res.meta)
        self.last_run_ms = ms = meta["ms"]
        self._block_ms = 2 * ms + _BLOCK_MARGIN_MS if ms <= _BLOCK_MAX_RUN_MS else 0
        out = {}
        for name, ref, ort_type, dims, where in meta["outputs"]:
            if ref is None:
                out[name] = _numpy(res.data[where], ort_type, dims)
            else:
                out[name] = RemoteTensor(ref, ort_type, dims, where, self._gen)
        kept = meta.get("state")
        return out, None if kept is None else RemoteTensor(kept[0], "state", (), kept[1], self._gen)

    def dispose(self) -> None:
        if self._sid is not None:
            rt = _started_runtime()
            rt.dispose(self._sid, self._gen) if self._gen is not None else rt.dispose(self._sid)
            self._sid = None


def _options(device: str, keep_on_device, form: str = "native") -> dict:
    """InferenceSession options, plus ``form`` for ort-host.js when it is not "native"."""
    opts = {"executionProviders": [device], "graphOptimizationLevel": "all"}
    if device == "webgpu" and keep_on_device:
        opts["preferredOutputLocation"] = {n: "gpu-buffer" for n in keep_on_device}
    if form != "native":
        opts["form"] = form
    return opts


async def create_session(model, *, device: str = "wasm", external_data=None, keep_on_device=(),
                         threads: int | None = None, form: str = "native") -> Session:
    """``threads`` is fixed when onnxruntime-web starts (``webformers.configure(threads=)``, or the demo's
    ``WebformersClient({threads})``); the argument is ignored here."""
    if form not in FORMS:
        raise ValueError(f"unknown execution form {form!r}; choose one of: {', '.join(FORMS)}")
    if not isinstance(model, JsProxy):
        model = to_js(memoryview(model))
    external = [{"path": e["path"], "data": e["data"] if isinstance(e["data"], JsProxy)
                 else to_js(memoryview(e["data"]))} for e in external_data or ()]
    rt = await runtime()
    try:
        r = json.loads(await rt.create(model, external or None, json.dumps(_options(device, keep_on_device, form))))
    except JsException as e:
        kind = str(getattr(e, "name", "") or "")
        error = {"RuntimeCrashed": RuntimeCrashed, "DeviceLost": DeviceLost}.get(kind)
        if error is not None:
            raise error(f"creating a {device} session: {e.message}") from None
        raise
    return Session(r["sid"], r["info"], device, r.get("form"), gen=r.get("gen"))


# ------------------------------------------------------------------------------------------ warm start

async def adopt_session(key: str, device: str) -> Session | None:
    """The session the onnxruntime worker created for ``key`` during boot, if any."""
    r = json.loads(await (await runtime()).adopt(key))
    return None if r is None else Session(r["sid"], r["info"], device, r.get("form"), r.get("choice"), r.get("gen"))


async def device_lost() -> dict | None:
    """None, or ``{"reason", "message"}`` once the running worker's WebGPU device was lost."""
    rt = _started_runtime()
    if rt is None or not hasattr(rt, "deviceLost"):
        return None
    lost = await rt.deviceLost()
    return None if lost is None else lost.to_py()


def test_hook(name: str, at: str = "now") -> None:
    """Tests only (tests/test_recovery.py): ``"crash"`` stops the onnxruntime worker, ``"lose-device"`` destroys
    onnxruntime-web's GPUDevice; ``at="now"``, or ``"run"``: at the next run request."""
    rt = _started_runtime()
    if rt is None:
        raise RuntimeError("test_hook: the browser runtime has not started (load a model first)")
    rt.testHook(name, at)


async def drop_warm_sessions() -> None:
    """Dispose of warm-started sessions nobody adopted (the page loaded something else)."""
    await (await runtime()).dropWarm()


async def remember_warm_start(model: str, module: str, entry: dict) -> None:
    """Record how ``module`` of ``model`` was just created, for the next boot's warm start. ``entry``:
    {"key", "cache" (the Cache API cache holding the files), "files": [{"url", "path", "sha256"}] (main
    model first), "device", "keep", "form", "choice" (the form choice, handed back on adoption)}."""
    plan = {"key": entry["key"], "cache": entry["cache"], "files": entry["files"],
            "options": _options(entry["device"], entry["keep"], entry["form"]), "choice": entry["choice"]}
    await (await runtime()).remember(model, module, json.dumps(plan))
