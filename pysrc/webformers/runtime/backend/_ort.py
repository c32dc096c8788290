"""CPython backend: onnxruntime on the CPU, with the same API as the browser backend."""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from .. import exec_form

backend_name = "onnxruntime"


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the CPython backend needs onnxruntime: pip install 'webformers[cpu]'") from e
    return onnxruntime


async def adapter_info() -> dict:
    return {"webgpu": False, "features": [], "isFallbackAdapter": None, "crossOriginIsolated": False,
            "backend": backend_name}


class Session:
    def __init__(self, sess, device: str, form: dict | None = None):
        self._s = sess
        self.device = device
        #: the execution form it was created in (see runtime.backend: create_session)
        self.form = form or {"form": "native", "changed": 0, "weights": 0, "rewrite_ms": 0.0}
        #: the form choice recorded with a warm-started session (always None here: no warm start)
        self.choice = None
        self.input_names = [i.name for i in sess.get_inputs()]
        self.output_names = [o.name for o in sess.get_outputs()]
        self.input_types = {i.name: i.type for i in sess.get_inputs()}

    async def run(self, feeds: dict, fetch=None) -> dict:
        outs = self._s.run(None, {k: np.asarray(v) for k, v in feeds.items()})
        return dict(zip(self.output_names, outs))

    def dispose(self) -> None:
        self._s = None


def release(value) -> None:
    """Backend tensors on CPython are numpy arrays: nothing to free."""


def _fp32_form(model) -> tuple[bytes, dict]:
    """``model`` (bytes or a path) in the fp32 form (runtime.exec_form), serialized, and what was done."""
    onnx = exec_form.import_onnx()
    t0 = time.perf_counter()
    # a path: its external data is read too; bytes: external initializers stay references (given in memory)
    proto = (onnx.load_model_from_string(bytes(model)) if isinstance(model, (bytes, bytearray, memoryview))
             else onnx.load(os.fspath(model)))
    done = exec_form.expand_quantized_matmuls(proto, "fp32")
    data = proto.SerializeToString()
    return data, {"form": "fp32", **done, "rewrite_ms": round((time.perf_counter() - t0) * 1000, 1)}


async def create_session(model, *, device: str = "wasm", external_data=None, keep_on_device=(),
                         threads: int | None = None, form: str = "native") -> Session:
    if form not in exec_form.FORMS:
        raise ValueError(f"unknown execution form {form!r}; choose one of: {', '.join(exec_form.FORMS)}")
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or int(os.environ.get("WEBFORMERS_THREADS", "1"))
    opts.log_severity_level = 3
    done = None
    if form == "fp32":
        model, done = _fp32_form(model)
        for k, v in exec_form.SESSION_CONFIG.items():
            opts.add_session_config_entry(k, v)
    if isinstance(model, (bytes, bytearray, memoryview)):
        if external_data:
            names, values = [], []
            for item in external_data:
                names.append(item["path"])
                values.append(np.frombuffer(item["data"], dtype=np.uint8))
            opts.add_external_initializers_from_files_in_memory(names, values, [len(v) for v in values])
        sess = ort.InferenceSession(bytes(model), opts, providers=["CPUExecutionProvider"])
    else:
        sess = ort.InferenceSession(os.fspath(model), opts, providers=["CPUExecutionProvider"])
    await asyncio.sleep(0)
    return Session(sess, "cpu", done)


# warm start is a browser feature (the onnxruntime worker creates sessions while Pyodide boots)
async def adopt_session(key: str, device: str) -> None:
    return None


async def drop_warm_sessions() -> None:
    return None


async def remember_warm_start(model: str, module: str, entry: dict) -> None:
    return None
