"""Browser (Pyodide) side of the platform layer: events and Stop (``webformers.config``, and the page through
``wfBridge`` when the host has one), downloads with ``fetch``, the Cache API as the file store,
``crypto.subtle``. Model bytes stay in JS (``Uint8Array``); the byte helpers also take Python bytes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import js  # type: ignore[import-not-found]
from pyodide.ffi import JsException, JsProxy, to_js  # type: ignore[import-not-found]

from .. import config
from .errors import QuotaError, RetryableError

__all__ = ["emit_page_event", "stop_requested", "reset_stop", "js_array",
           "byte_length", "byte_slice", "byte_view", "alloc_bytes", "copy_into", "finish_bytes", "sha256_hex",
           "decode_text", "open_stream", "HttpStream", "probe_url", "read_file", "open_store", "cache_dir",
           "estimate_storage", "persist_storage", "default_host", "location_href", "absolute_url", "device_memory",
           "packages_ready", "CacheApiStore"]

#: response header of a Cache API entry that holds its metadata (JSON)
META_HEADER = "x-webformers"


def _js_object(d: dict):
    return to_js(d, dict_converter=js.Object.fromEntries)


# --------------------------------------------------------------------------------------- page

def _bridge():
    return getattr(js, "wfBridge", None)


def emit_page_event(event: dict) -> None:
    """Give ``event`` to the ``webformers.configure(on_event=...)`` callbacks and ``webformers.events()``
    iterators, and send it to the hosting page through ``wfBridge.emit`` when the host provides one."""
    config.dispatch_event(event)
    bridge = _bridge()
    emit = getattr(bridge, "emit", None) if bridge is not None else None
    if emit is not None:
        emit(_js_object(event))


def stop_requested() -> bool:
    """Whether to stop generating: the host's Stop (``wfBridge.isCancelled``) when it has one, else the
    ``stop`` source given to ``webformers.configure`` (an ``asyncio.Event`` or a callable)."""
    bridge = _bridge()
    if bridge is not None and hasattr(bridge, "isCancelled"):
        return bool(bridge.isCancelled())
    return config.stop_is_set()


def reset_stop() -> None:
    """Clear the Stop request: the host's (``wfBridge.resetCancel``), else the configured ``asyncio.Event``."""
    bridge = _bridge()
    if bridge is not None and hasattr(bridge, "resetCancel"):
        bridge.resetCancel()
    else:
        config.clear_stop()


_DTYPES = {"Float32Array": "float32", "Float64Array": "float64", "Int16Array": "int16",
           "Int32Array": "int32", "Uint8Array": "uint8", "Int8Array": "int8"}


def js_array(x):
    """``(constructor name, numpy array)`` for a JS ArrayBuffer / typed array; None for anything else."""
    if not isinstance(x, JsProxy):
        return None
    import numpy as np

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


# -------------------------------------------------------------------------------------- bytes

def byte_length(data) -> int:
    """The number of bytes in ``data`` (a JS ``Uint8Array``, or Python bytes)."""
    return int(data.length) if isinstance(data, JsProxy) else len(data)


def byte_slice(data, start: int, end: int) -> bytes:
    """``data[start:end]`` as Python bytes (only the slice crosses from JS)."""
    if isinstance(data, JsProxy):
        return data.subarray(start, end).to_bytes()
    return bytes(data[start:end])


async def sha256_hex(data) -> str:
    """The hex sha256 of ``data`` (``crypto.subtle`` for JS bytes: they stay in JS)."""
    if not isinstance(data, JsProxy):
        return hashlib.sha256(data).hexdigest()
    digest = await js.crypto.subtle.digest("SHA-256", data)
    return js.Uint8Array.new(digest).to_bytes().hex()


def decode_text(data) -> str:
    """``data`` decoded as UTF-8."""
    if isinstance(data, JsProxy):
        return str(js.TextDecoder.new("utf-8").decode(data))
    return bytes(data).decode("utf-8")


def alloc_bytes(n: int):
    """A zeroed buffer of ``n`` bytes to fill with ``copy_into`` (a ``Uint8Array``)."""
    return js.Uint8Array.new(n)


def byte_view(data, start: int, end: int):
    """``data[start:end]`` without copying (a ``subarray``; a memoryview of Python bytes)."""
    if isinstance(data, JsProxy):
        return data.subarray(start, end)
    return memoryview(data)[start:end]


def copy_into(buf, offset: int, data) -> None:
    """Copy ``data`` into ``buf`` (from ``alloc_bytes``) at ``offset``."""
    buf.set(data if isinstance(data, JsProxy) else to_js(memoryview(data)), offset)


def finish_bytes(buf):
    """A buffer filled with ``copy_into`` as file bytes: the ``Uint8Array`` itself."""
    return buf


# ----------------------------------------------------------------------------------- transport

class HttpStream:
    """An HTTP response whose body is read piece by piece (``fetch`` + a body reader)."""

    def __init__(self, url: str, resp):
        self.url = url
        self._resp = resp
        #: the HTTP status
        self.status = int(resp.status)
        clen = resp.headers.get("content-length")
        #: the body's length in bytes (Content-Length; None when unknown or content-encoded)
        self.length = int(clen) if clen and not resp.headers.get("content-encoding") else None
        self.received = 0
        self._reader = resp.body.getReader() if isinstance(resp.body, JsProxy) else None

    def header(self, name: str) -> str | None:
        value = self._resp.headers.get(name)
        return None if value is None else str(value)

    async def read(self):
        """The next piece of the body (a ``Uint8Array``), None at its end. Raises ``RetryableError`` when
        the body breaks off (a network error, or fewer bytes than its Content-Length)."""
        if self._reader is None:
            return None
        try:
            r = await self._reader.read()
        except Exception as e:
            raise RetryableError(f"download of {self.url} broke off after {self.received} bytes: {e}") from e
        if r.done:
            self._reader = None
            if self.length is not None and self.received < self.length:
                raise RetryableError(f"download of {self.url} broke off after {self.received} of "
                                     f"{self.length} bytes")
            return None
        self.received += int(r.value.length)
        return r.value

    async def close(self) -> None:
        """Stop reading (the rest of the body is not downloaded)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                await reader.cancel()
            except Exception:
                pass


async def open_stream(url: str, byte_range: tuple[int, int] | None = None, *, no_cache: bool = False):
    """GET ``url`` with ``fetch``: an ``HttpStream`` (any status). ``byte_range`` ``(start, end)`` asks for
    the bytes ``[start, end)`` (an HTTP ``Range`` request; the server may answer 206 or the whole body
    with 200). ``no_cache`` revalidates with the server instead of using the browser's HTTP cache.
    Raises ``RetryableError`` on network errors."""
    init = {}
    if no_cache:
        init["cache"] = "no-cache"
    if byte_range is not None:
        init["headers"] = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"}
    try:
        resp = await js.fetch(url, _js_object(init))
    except Exception as e:  # TypeError: Failed to fetch (offline, aborted, CORS)
        raise RetryableError(f"could not fetch {url}: {e}") from e
    return HttpStream(url, resp)


async def probe_url(url: str):
    """Whether ``url`` exists and how big it is, without downloading it: a ``fetch`` of its first byte
    (``Range: bytes=0-0``; the size comes from ``Content-Range``, the uncompressed size, or from
    ``Content-Length`` when the server ignores the range; the body is cancelled). ``(status, size or
    None, content_type, etag or None)``; ``RetryableError`` on network errors."""
    try:
        resp = await js.fetch(url, _js_object({"headers": _js_object({"Range": "bytes=0-0"}), "cache": "no-store"}))
    except Exception as e:  # TypeError: Failed to fetch (offline, aborted, CORS)
        raise RetryableError(f"could not fetch {url}: {e}") from e
    status = int(resp.status)
    if isinstance(resp.body, JsProxy):
        try:
            await resp.body.cancel()
        except Exception:  # a body that is already closed
            pass
    size = None
    crange = resp.headers.get("content-range")
    if crange and "/" in str(crange):
        total = str(crange).rsplit("/", 1)[1].strip()
        size = int(total) if total.isdigit() else None
    if status == 200 and size is None:
        clen = resp.headers.get("content-length")
        encoded = resp.headers.get("content-encoding")
        size = int(clen) if clen and str(clen).isdigit() and not encoded else None
    if status in (206, 416):  # 416: an empty file has no first byte
        status = 200
    etag = resp.headers.get("etag")
    return status, size, resp.headers.get("content-type") or "", str(etag) if etag else None


async def read_file(path) -> bytes | None:
    """The bytes of ``path`` in Pyodide's file system, or None when it does not exist."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------------------- store

def cache_dir() -> None:
    """None: the browser keeps model files in the Cache API, not in a directory."""
    return None


def _meta_of(resp) -> dict | None:
    raw = resp.headers.get(META_HEADER)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class CacheApiStore:
    """The entry store in the browser: one Cache API cache, keyed by URL, each entry's metadata (JSON) in
    its ``x-webformers`` response header."""

    #: the largest entry to put: Chromium refuses an entry of 256 MB or more ("UnknownError: Failed to
    #: execute 'put' on 'Cache'"); 64 MB entries put at 6.5-18 ms/MB and read back at 2-6 ms/MB
    chunk_bytes = 64 << 20

    def __init__(self, cache, name: str):
        self.cache = cache
        #: the Cache API cache holding the files (the onnxruntime worker reads them for warm start)
        self.cache_name = name

    async def get(self, url: str):
        """The stored bytes of ``url`` (a ``Uint8Array``), or None."""
        resp = await self.cache.match(url)
        if not isinstance(resp, JsProxy):
            return None
        return js.Uint8Array.new(await resp.arrayBuffer())

    async def meta(self, url: str) -> dict | None:
        """The metadata of ``url`` (its body is not read), or None when it is not stored."""
        resp = await self.cache.match(url)
        return _meta_of(resp) if isinstance(resp, JsProxy) else None

    async def put(self, url: str, data, meta: dict) -> None:
        """Store ``data`` (JS or Python bytes) for ``url`` with ``meta`` (plus ``url`` and ``size``);
        ``QuotaError`` when the origin's quota is full."""
        size = byte_length(data)
        headers = js.Headers.new()
        headers.set("content-type", "application/octet-stream")
        headers.set("content-length", str(size))
        headers.set(META_HEADER, json.dumps({**meta, "url": url, "size": size}))
        body = data if isinstance(data, JsProxy) else to_js(memoryview(data))
        try:
            await self.cache.put(url, js.Response.new(body, _js_object({"headers": headers, "status": 200})))
        except JsException as e:
            if e.name == "QuotaExceededError":
                raise QuotaError(str(e)) from e
            raise

    async def delete(self, url: str) -> int:
        """Remove ``url``; the bytes freed."""
        resp = await self.cache.match(url)
        size = 0
        if isinstance(resp, JsProxy):
            meta = _meta_of(resp)
            size = int(meta.get("size", 0)) if meta else 0
        await self.cache.delete(url)
        return size

    async def entries(self) -> list[dict]:
        """The metadata of every entry (with ``url`` and ``size``)."""
        out = []
        for req in await self.cache.keys():
            resp = await self.cache.match(req)
            if not isinstance(resp, JsProxy):
                continue
            meta = _meta_of(resp)
            if meta is not None:
                meta["url"] = str(req.url)
                out.append(meta)
        return out

    async def usage(self) -> int:
        """Bytes of the stored entries."""
        return sum(int(e.get("size", 0)) for e in await self.entries())


async def open_store(name: str):
    """``(store, None)`` for the Cache API cache ``name``, or ``(None, reason)`` when the Cache API is not
    available (no ``caches`` global) or not usable (e.g. a SecurityError on an opaque origin)."""
    caches = getattr(js, "caches", None)
    if not isinstance(caches, JsProxy):
        return None, "the Cache API is not available here (no 'caches' global)"
    try:
        return CacheApiStore(await caches.open(name), name), None
    except Exception as e:
        return None, f"the Cache API is not usable here ({e})"


def _storage():
    storage = getattr(js.navigator, "storage", None)
    return storage if isinstance(storage, JsProxy) else None


async def estimate_storage(cache_bytes: int) -> dict:
    """``{"usage", "quota", "persisted"}`` from ``navigator.storage`` (None, None, False without it)."""
    storage = _storage()
    if storage is None:
        return {"usage": None, "quota": None, "persisted": False}
    est = await storage.estimate()
    persisted = bool(await storage.persisted()) if hasattr(storage, "persisted") else False
    return {"usage": int(est.usage), "quota": int(est.quota), "persisted": persisted}


async def persist_storage() -> bool:
    """``navigator.storage.persist()``; in a worker, where ``persist`` does not exist, ``persisted()``."""
    storage = _storage()
    if storage is None:
        return False
    if hasattr(storage, "persist"):
        return bool(await storage.persist())
    return bool(await storage.persisted()) if hasattr(storage, "persisted") else False


def default_host() -> str:
    """Where model repos are served when no host is named: ``webformers.configure(models=...)``, by default
    ``models/`` next to the page (or the worker's script)."""
    return config.models_url()


def location_href() -> str:
    """The URL of the global scope: the page, or the worker's script."""
    return str(js.location.href)


def absolute_url(url: str, base: str) -> str:
    """``url`` resolved against ``base`` (the browser's URL rules)."""
    return str(js.URL.new(url, base).href)


async def packages_ready() -> None:
    """Wait until Pyodide's packages (numpy) are importable. A host that boots Python before loading them
    (``webformers/pyboot.js`` with ``deferPackages``) sets ``wfPackages`` to the promise of that load; without
    it they were loaded before Python ran anything."""
    pending = getattr(js, "wfPackages", None)
    if pending is None or not hasattr(pending, "then"):
        return
    try:
        await pending
    except JsException as e:
        raise ImportError(f"Pyodide's packages (numpy) did not load: {e.message}") from None


def device_memory() -> int | None:
    """``navigator.deviceMemory`` in bytes (Chromium reports GiB, rounded, at most 8); None without it."""
    gib = getattr(js.navigator, "deviceMemory", None)
    return int(float(gib) * 2**30) if isinstance(gib, (int, float)) and gib > 0 else None
