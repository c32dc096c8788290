"""The platform layer: everything that differs between the browser (Pyodide) and CPython, behind one API.

Only this package and ``runtime/backend`` import ``js`` / ``pyodide``. ``IN_BROWSER`` is defined here and
picks ``_browser`` or ``_cpython``, which define the same functions; the rest of webformers calls them
and never branches on the platform:

- page events and Stop: ``emit_page_event(event)``, ``stop_requested()``, ``reset_stop()``;
- JS values handed to Python: ``js_array(x)`` (a JS typed array / ArrayBuffer as ``(kind, numpy array)``,
  or None for anything else);
- bytes (a JS ``Uint8Array`` in the browser, so model files never enter Python memory; Python bytes on
  CPython, and accepted in the browser too): ``byte_length``, ``byte_slice`` (to Python bytes),
  ``byte_view`` (no copy), ``await sha256_hex``, ``decode_text`` (UTF-8); a file assembled in place:
  ``alloc_bytes(n)``, ``copy_into(buf, offset, data)``, ``finish_bytes(buf)`` (the file bytes);
- downloads: ``await open_stream(url, byte_range=None, no_cache=)`` -> an ``HttpStream`` (``status``,
  ``length``, ``header(name)``, ``await read()`` piece by piece, ``await close()``; ``byte_range`` makes
  it an HTTP ``Range`` request; ``fetch`` in the browser, urllib on CPython), ``await probe_url(url)`` ->
  ``(status, size, content_type, etag)`` (a one-byte range request), ``await read_file(path)`` (a local
  file or None);
- the entry store: ``await open_store(name)`` -> ``(store, None)`` or ``(None, reason)``; a store has
  ``get(url)``, ``meta(url)``, ``put(url, data, meta)``, ``delete(url)`` (bytes freed), ``entries()``
  (metadata dicts with ``url`` and ``size``), ``usage()``, ``cache_name`` (its Cache API cache, or None)
  and ``chunk_bytes`` (the largest entry it takes, or None). The browser's is ``CacheApiStore`` (the
  Cache API; 64 MB entries, as it refuses 256 MB), CPython's ``DirStore`` (a directory, ``cache_dir()``;
  None in the browser; any size). ``store.chunked`` keeps larger files in such a store as chunks;
- storage: ``await estimate_storage(cache_bytes)`` -> ``{"usage", "quota", "persisted"}``,
  ``await persist_storage()``;
- ``default_host()``: where model repos are served when no host is named (the page origin + ``/models``;
  ``$WEBFORMERS_HOST`` or None on CPython);
- ``location_href()``: the page's (or worker script's) URL, None on CPython; ``absolute_url(url, base)``;
- ``device_memory()``: bytes of memory the device reports (``navigator.deviceMemory``; the physical memory on
  CPython), or None;
- ``await packages_ready()``: returns once numpy (a Pyodide package, which a snapshot restore loads after
  Python is up) can be imported; at once on CPython. Everything that imports numpy is imported after it;
- CPython only: ``run_sync(coro)`` runs a coroutine from synchronous code (the toolchain, tests).

Errors (``errors``, the same on both): ``RetryableError`` (a download worth retrying), ``QuotaError`` (a
store is full).
"""
from __future__ import annotations

import sys

from .errors import QuotaError, RetryableError

IN_BROWSER = sys.platform == "emscripten"

if IN_BROWSER:  # pragma: no cover - exercised by the browser tests
    from ._browser import *  # noqa: F401,F403
    from ._browser import __all__
else:
    from ._cpython import *  # noqa: F401,F403
    from ._cpython import __all__

__all__ = ["IN_BROWSER", "QuotaError", "RetryableError", *__all__]
