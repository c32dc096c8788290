"""The backend seam: one Python API over onnxruntime-web (inside Pyodide) and onnxruntime (CPython).

Everything above this package (store, models, generation) talks to ``create_session`` and
``Session`` only, so each behaviour runs, and is tested, on both backends.

A ``Session``:

- ``input_names`` / ``output_names`` (lists of str), ``device`` ("wasm", "webgpu" or "cpu");
- ``await run(feeds, fetch=None)``: ``feeds`` maps input names to numpy arrays or to values that a
  previous ``run`` returned un-fetched (backend tensors, e.g. the KV cache, which stay in JS / on the
  GPU). Outputs named in ``fetch`` (all when ``fetch`` is None) come back as numpy arrays; the others
  come back as backend tensors to feed to the next run. Release those with ``release``;
- ``dispose()``.

``await create_session(model, device=..., external_data=None, keep_on_device=())``: ``model`` is the
ONNX bytes (a JS ``Uint8Array`` in the browser, so the model never enters Python memory), or a path
on CPython. ``keep_on_device`` names outputs to keep in GPU memory under WebGPU.
"""
from __future__ import annotations

import sys

IN_BROWSER = sys.platform == "emscripten"

if IN_BROWSER:
    from ._ortweb import Session, adapter_info, create_session, release, backend_name
else:
    from ._ort import Session, adapter_info, create_session, release, backend_name

__all__ = ["IN_BROWSER", "Session", "adapter_info", "create_session", "release", "backend_name"]
