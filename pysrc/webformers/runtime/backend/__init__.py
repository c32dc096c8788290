"""The backend seam: one Python API over onnxruntime-web (inside Pyodide) and onnxruntime (CPython).

Everything above this package (store, models, generation) talks to ``create_session`` and
``Session`` only, so each behaviour runs, and is tested, on both backends.

A ``Session``:

- ``input_names`` / ``output_names`` (lists of str), ``device`` ("wasm", "webgpu" or "cpu");
- ``await run(feeds, fetch=None)``: ``feeds`` maps input names to numpy arrays or to values that a
  previous ``run`` returned un-fetched (backend tensors, e.g. the KV cache, which stay in JS / on the
  GPU). Outputs named in ``fetch`` (all when ``fetch`` is None) come back as numpy arrays; the others
  come back as backend tensors to feed to the next run. Release those with ``release``;
- ``await run_state(feeds, state, pairs, fetch=None)`` -> (outputs, new state), browser: the outputs ``o``
  of ``pairs`` [(input ``i``, output ``o``)] are kept together in the onnxruntime worker as one state (a KV
  cache: one reference instead of one tensor each), fed as the inputs ``i`` of the next call (``state`` None:
  ``feeds`` hold them). The state passed in is consumed; ``release`` frees one not fed.
  :func:`run_with_state` calls it, or does the same through ``run`` (the state a dict) for other sessions;
- ``dispose()``.

``await create_session(model, device=..., external_data=None, keep_on_device=(), form="native")``: ``model``
is the ONNX bytes (a JS ``Uint8Array`` in the browser, so the model never enters Python memory), or a path
on CPython. ``keep_on_device`` names outputs to keep in GPU memory under WebGPU. ``form`` is the execution
form (``runtime.forms``): "fp32" rewrites the block-quantized matmuls before the session is created
(``webformers/assets/exec-form.js`` in the onnxruntime worker, ``runtime.exec_form`` on CPython, which needs onnx);
``session.form`` says what was done: {"form", "changed" (matmuls rewritten), "weights" (their K*N),
"rewrite_ms"}.

Warm start (browser; on CPython these do nothing): ``session_key(files, device, keep_on_device, form)``
names a session by its files' sha256 and its options; ``await adopt_session(key, device)`` returns a
session the backend created ahead of time for that key (or None; ``session.choice`` is the form choice
recorded with it); ``await remember_warm_start(model, module, entry)`` records how a session was made (its
form too) so the next page can create it while Pyodide boots;
``await drop_warm_sessions()`` frees the ones nobody adopted.
"""
from __future__ import annotations

import json

from ...platform import IN_BROWSER

if IN_BROWSER:
    from ._ortweb import (Session, adapter_info, adopt_session, backend_name, create_session, drop_warm_sessions,
                          release, remember_warm_start)
else:
    from ._ort import (Session, adapter_info, adopt_session, backend_name, create_session, drop_warm_sessions,
                       release, remember_warm_start)


async def run_with_state(session, feeds: dict, state, pairs, fetch=None) -> tuple[dict, object]:
    """``session.run_state(...)`` where the session has it, else the same through ``session.run``: the state is
    then a dict of the pairs' outputs."""
    if hasattr(session, "run_state"):
        return await session.run_state(feeds, state, pairs, fetch)
    if state is not None:
        feeds = {**feeds, **{i: state[o] for i, o in pairs}}
    out = await session.run(feeds, fetch)
    return out, {o: out.pop(o) for _, o in pairs}


def session_key(files: list[dict], device: str, keep_on_device=None, form: str = "native") -> str:
    """What makes a session: its files (manifest entries with ``sha256``, main model first), the device, the
    outputs kept on the device (None: the default for the device) and its execution form (a form, or what
    names an automatic choice: ``runtime.forms.FormRequest.key``)."""
    return json.dumps({"sha256": [f["sha256"] for f in files], "device": device,
                       "keep": None if keep_on_device is None else sorted(keep_on_device), "form": form},
                      sort_keys=True)


__all__ = ["Session", "adapter_info", "adopt_session", "backend_name", "create_session",
           "drop_warm_sessions", "release", "remember_warm_start", "run_with_state", "session_key"]
