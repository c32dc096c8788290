"""Browser (Pyodide) side of the platform layer."""
from __future__ import annotations

import js  # type: ignore[import-not-found]
import numpy as np
from pyodide.ffi import JsProxy, to_js  # type: ignore[import-not-found]

__all__ = ["emit_page_event", "stop_requested", "reset_stop", "js_array"]


def _bridge():
    return getattr(js, "wfBridge", None)


def emit_page_event(event: dict) -> None:
    """Send ``event`` to the hosting page through ``wfBridge.emit`` when the host provides one."""
    bridge = _bridge()
    emit = getattr(bridge, "emit", None) if bridge is not None else None
    if emit is not None:
        emit(to_js(event, dict_converter=js.Object.fromEntries))


def stop_requested() -> bool:
    bridge = _bridge()
    return bool(bridge.isCancelled()) if bridge is not None and hasattr(bridge, "isCancelled") else False


def reset_stop() -> None:
    bridge = _bridge()
    if bridge is not None and hasattr(bridge, "resetCancel"):
        bridge.resetCancel()


_DTYPES = {"Float32Array": np.float32, "Float64Array": np.float64, "Int16Array": np.int16,
           "Int32Array": np.int32, "Uint8Array": np.uint8, "Int8Array": np.int8}


def js_array(x):
    """``(constructor name, numpy array)`` for a JS ArrayBuffer / typed array; None for anything else."""
    if not isinstance(x, JsProxy):
        return None
    name = str(getattr(x, "constructor", None) and x.constructor.name)
    if name == "ArrayBuffer":
        return name, np.frombuffer(x.to_py(), np.uint8).copy()
    dt = _DTYPES.get(name)
    if dt is None:
        return name, None
    out = np.empty(int(x.length), dt)
    if out.size:
        x.assign_to(out)
    return name, out
