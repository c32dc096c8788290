"""webformers: quantized ONNX models in the browser, from Python.

Public names are imported lazily so that ``import webformers`` stays fast in Pyodide.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "configure": "webformers.config",
    "events": "webformers.config",
    "pipeline": "webformers.pipelines",
    "AutoTokenizer": "webformers.text.tokenizer",
    "AutoModelForCausalLM": "webformers.text.auto",
    "GenerationConfig": "webformers.generation",
    "TextStreamer": "webformers.generation",
    "TextIteratorStreamer": "webformers.generation",
    "EventStreamer": "webformers.generation.streamers",
    "ModelRepo": "webformers.store.repo",
    "DTYPES": "webformers.dtypes",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'webformers' has no attribute {name!r}")
