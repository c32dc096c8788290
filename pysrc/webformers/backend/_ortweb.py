"""Browser backend: onnxruntime-web through Pyodide's ``js`` bridge.

The worker puts ``ort`` (the onnxruntime-web module) and ``wfBridge`` (small JS helpers, see
``web/worker.js``) on the worker's global scope. Model bytes and KV-cache tensors stay JS objects;
only the inputs Python builds and the outputs it asks for cross the bridge, one copy each.
"""
from __future__ import annotations

import asyncio

import js  # type: ignore[import-not-found]
import numpy as np
from pyodide.ffi import JsProxy, to_js  # type: ignore[import-not-found]

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

# One queue for session creation and runs: onnxruntime-web rejects overlapping calls on a session
# ("Session already started") and WebGPU device setup must not race.
_queue = asyncio.Lock()


def _js_obj(d: dict):
    return to_js(d, dict_converter=js.Object.fromEntries)


async def adapter_info() -> dict:
    info = await js.wfBridge.adapterInfo()
    return info.to_py()


def to_tensor(arr):
    """numpy -> ort.Tensor (one copy, made in JS from a view of the numpy buffer)."""
    arr = np.ascontiguousarray(arr)
    ort_type, view = _TO_ORT[arr.dtype]
    data = arr.view(view) if view is not None else arr
    return js.wfBridge.tensorFromPy(ort_type, data.reshape(-1), to_js(list(arr.shape)))


async def to_numpy(tensor) -> np.ndarray:
    """ort.Tensor -> numpy (GPU tensors are downloaded first)."""
    ort_type = str(tensor.type)
    dims = [int(d) for d in tensor.dims]
    data = tensor.data if str(tensor.location) == "cpu" else await tensor.getData()
    out = np.empty(int(np.prod(dims)) if dims else 1, dtype=_FROM_ORT[ort_type])
    if out.size:
        data.assign_to(out)
    if ort_type == "float16":
        out = out.view(np.float16)
    elif ort_type == "bool":
        out = out.view(np.bool_)
    return out.reshape(dims)


def release(value) -> None:
    """Free a backend tensor now: GPU buffers are disposed; CPU tensors are left to the JS GC."""
    if isinstance(value, JsProxy) and str(value.location) == "gpu-buffer":
        value.dispose()


class Session:
    def __init__(self, js_session, device: str):
        self._s = js_session
        self.device = device
        self.input_names = [str(n) for n in js_session.inputNames]
        self.output_names = [str(n) for n in js_session.outputNames]
        # element types in onnxruntime's spelling ("tensor(float16)"), like the CPython backend
        self.input_types = {}
        for md in (getattr(js_session, "inputMetadata", None) or []):
            if getattr(md, "isTensor", False):
                t = str(md.type)
                self.input_types[str(md.name)] = "tensor(float)" if t == "float32" else f"tensor({t})"

    async def run(self, feeds: dict, fetch=None) -> dict:
        js_feeds = js.Object.new()
        for name, value in feeds.items():
            if not isinstance(value, JsProxy):
                value = to_tensor(value)
            setattr(js_feeds, name, value)
        async with _queue:
            res = await self._s.run(js_feeds)
        out = {}
        for name in self.output_names:
            t = getattr(res, name)
            if fetch is None or name in fetch:
                out[name] = await to_numpy(t)
                release(t)
            else:
                out[name] = t
        return out

    def dispose(self) -> None:
        if self._s is not None:
            self._s.release()
            self._s = None


async def create_session(model, *, device: str = "wasm", external_data=None, keep_on_device=(),
                         threads: int | None = None) -> Session:
    opts = {"executionProviders": to_js([device]), "graphOptimizationLevel": "all"}
    if external_data:
        opts["externalData"] = to_js([_js_obj({"path": e["path"], "data": e["data"]}) for e in external_data])
    if device == "webgpu" and keep_on_device:
        opts["preferredOutputLocation"] = _js_obj({n: "gpu-buffer" for n in keep_on_device})
    if not isinstance(model, JsProxy):
        model = to_js(memoryview(model))
    async with _queue:
        s = await js.ort.InferenceSession.create(model, _js_obj(opts))
    return Session(s, device)
