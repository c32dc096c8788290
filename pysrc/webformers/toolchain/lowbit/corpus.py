"""Calibration text: standard-library docstrings from modules *other* than the quality report's held-out ones.

Same recipe as :func:`webformers.toolchain.evaluate.held_out_text` (module doc, then public callables by
name), over :data:`CALIBRATION_MODULES`, which share no module with ``HELD_OUT_MODULES``; any paragraph
that also occurs in the held-out text (an inherited docstring, say) is dropped.
"""
from __future__ import annotations

import importlib
import inspect

import numpy as np

from ..evaluate import HELD_OUT_MODULES, held_out_text

CALIBRATION_MODULES = (
    "abc", "ast", "asyncio", "base64", "codecs", "concurrent.futures", "configparser", "copy", "datetime",
    "decimal", "dis", "doctest", "email", "enum", "fnmatch", "gettext", "glob", "gzip", "hashlib", "html.parser",
    "http.client", "inspect", "io", "ipaddress", "locale", "logging", "mailbox", "mimetypes", "numbers",
    "operator", "optparse", "os", "pickle", "pprint", "queue", "random", "re", "sched", "secrets", "shlex",
    "socket", "sqlite3", "subprocess", "tarfile", "tempfile", "threading", "timeit", "tokenize", "traceback",
    "types", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "weakref",
    "xml.etree.ElementTree", "zipfile",
)
assert not set(CALIBRATION_MODULES) & set(HELD_OUT_MODULES)


def calibration_text(max_chars: int = 400_000) -> str:
    """Docstrings of :data:`CALIBRATION_MODULES` in a fixed order, none shared with the held-out text."""
    held = set(held_out_text(10 ** 9).split("\n\n"))
    parts, total = [], 0
    for name in sorted(CALIBRATION_MODULES):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(mod)]
        for attr in sorted(getattr(mod, "__all__", None) or [a for a in dir(mod) if not a.startswith("_")]):
            obj = getattr(mod, attr, None)
            if obj is None or not callable(obj) or getattr(obj, "__module__", None) != name:
                continue
            docs.append(inspect.getdoc(obj))
        for d in docs:
            if not d:
                continue
            kept = "\n\n".join(p for p in d.split("\n\n") if p not in held)
            if kept:
                parts.append(kept)
                total += len(kept) + 2
        if total > max_chars:
            break
    return "\n\n".join(parts)[:max_chars]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, for a ``tokenizers.Tokenizer`` or a transformers tokenizer
    (anything whose ``encode(text, add_special_tokens=False)`` returns ids or an object with ``.ids``)."""
    out = tokenizer.encode(text, add_special_tokens=False)
    return [int(i) for i in (out.ids if hasattr(out, "ids") else out)]


def calibration_ids(tokenizer, windows: int = 32, window: int = 256, text: str | None = None) -> np.ndarray:
    """``windows`` token windows [windows, window] (int64) spread evenly over the calibration text."""
    if windows < 1 or window < 2:
        raise ValueError(f"need at least 1 window of 2 tokens, got {windows} x {window}")
    ids = encode(tokenizer, calibration_text() if text is None else text)
    need = windows * window
    if len(ids) < need:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than {windows} x {window} = {need}")
    starts = np.linspace(0, len(ids) - window, windows).round().astype(int)
    arr = np.asarray(ids, np.int64)
    return np.stack([arr[s:s + window] for s in starts])


def token_windows(tokenizer=None, texts=None, ids=None, windows: int = 32, window: int = 256) -> np.ndarray:
    """``ids`` as int64 windows [W, T] when given, else ``windows`` x ``window`` tokens of ``texts`` (a string
    or strings; default :func:`calibration_text`) encoded with ``tokenizer``."""
    if ids is not None:
        ids = np.asarray(ids, np.int64)
        if ids.ndim != 2:
            raise ValueError(f"token ids must be windows [W, T], got shape {ids.shape}")
        return ids
    if tokenizer is None:
        raise ValueError("pass calibration token ids (ids=...) or a tokenizer")
    text = None if texts is None else "\n\n".join([texts] if isinstance(texts, str) else list(texts))
    return calibration_ids(tokenizer, windows, window, text)
