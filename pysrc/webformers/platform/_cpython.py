"""CPython side of the platform layer: no page (events go nowhere, Stop is never requested), downloads
with urllib, a directory as the file store, hashlib."""
from __future__ import annotations

import asyncio
import errno
import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from .errors import QuotaError, RetryableError

__all__ = ["emit_page_event", "stop_requested", "reset_stop", "js_array",
           "byte_length", "byte_slice", "byte_view", "alloc_bytes", "copy_into", "finish_bytes", "sha256_hex",
           "decode_text", "open_stream", "HttpStream", "probe_url", "read_file", "open_store", "cache_dir",
           "estimate_storage", "persist_storage", "default_host", "location_href", "absolute_url", "device_memory", "DirStore",
           "run_sync", "packages_ready"]

CHUNK = 1 << 20
#: buffers larger than this are hashed in a thread, so the event loop keeps running
_HASH_IN_THREAD = 8 << 20


# --------------------------------------------------------------------------------------- page

def emit_page_event(event: dict) -> None:
    """Give ``event`` to the ``webformers.configure(on_event=...)`` callbacks and ``webformers.events()``
    iterators (there is no hosting page on CPython)."""
    from .. import config
    config.dispatch_event(event)


def stop_requested() -> bool:
    """Whether the ``stop`` source given to ``webformers.configure`` asks to stop (False without one)."""
    from .. import config
    return config.stop_is_set()


def reset_stop() -> None:
    """Clear the configured ``stop`` when it is an ``asyncio.Event``."""
    from .. import config
    config.clear_stop()


def js_array(x):
    """``(kind, numpy array)`` for a JS ArrayBuffer / typed array; None for anything else (no JS here)."""
    return None


# -------------------------------------------------------------------------------------- bytes

def byte_length(data) -> int:
    """The number of bytes in ``data`` (bytes, bytearray or memoryview)."""
    return len(data)


def byte_slice(data, start: int, end: int) -> bytes:
    """``data[start:end]`` as bytes."""
    return bytes(data[start:end])


async def sha256_hex(data) -> str:
    """The hex sha256 of ``data``."""
    if len(data) > _HASH_IN_THREAD:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


def decode_text(data) -> str:
    """``data`` decoded as UTF-8."""
    return bytes(data).decode("utf-8")


def alloc_bytes(n: int) -> bytearray:
    """A zeroed buffer of ``n`` bytes to fill with ``copy_into``."""
    return bytearray(n)


def byte_view(data, start: int, end: int) -> memoryview:
    """``data[start:end]`` without copying."""
    return memoryview(data)[start:end]


def copy_into(buf, offset: int, data) -> None:
    """Copy ``data`` into ``buf`` (from ``alloc_bytes``) at ``offset``."""
    buf[offset:offset + len(data)] = data


def finish_bytes(buf) -> bytes:
    """A buffer filled with ``copy_into`` as file bytes (``bytes``)."""
    return bytes(buf)


# ----------------------------------------------------------------------------------- transport

class HttpStream:
    """An HTTP response whose body is read piece by piece (urllib, reads in a thread)."""

    def __init__(self, url: str, resp):
        self.url = url
        self._resp = resp
        #: the HTTP status
        self.status = resp.status if hasattr(resp, "status") else resp.code
        clen = resp.headers.get("Content-Length") if resp.headers else None
        #: the body's length in bytes (Content-Length; None when unknown)
        self.length = int(clen) if clen and clen.isdigit() else None
        self.received = 0
        self._headers = resp.headers

    def header(self, name: str) -> str | None:
        return self._headers.get(name) if self._headers else None

    async def read(self):
        """The next piece of the body (bytes), None at its end. Raises ``RetryableError`` when the body
        breaks off (a network error, or fewer bytes than its Content-Length)."""
        if self._resp is None:
            return None
        try:
            piece = await asyncio.to_thread(self._resp.read, CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise RetryableError(f"download of {self.url} broke off after {self.received} bytes: {e}") from e
        if not piece:
            await self.close()
            if self.length is not None and self.received < self.length:
                raise RetryableError(f"download of {self.url} broke off after {self.received} of "
                                     f"{self.length} bytes")
            return None
        self.received += len(piece)
        return piece

    async def close(self) -> None:
        """Stop reading and close the connection."""
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()


async def open_stream(url: str, byte_range: tuple[int, int] | None = None, *, no_cache: bool = False):
    """GET ``url``: an ``HttpStream`` (any status). ``byte_range`` ``(start, end)`` asks for the bytes
    ``[start, end)`` (an HTTP ``Range`` request; the server may answer 206 or the whole body with 200).
    ``no_cache`` asks to bypass an HTTP cache (urllib keeps none). Raises ``RetryableError`` on network
    errors."""
    headers = {"Accept-Encoding": "identity"}
    if byte_range is not None:
        headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"

    def _open():
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
        except urllib.error.HTTPError as e:
            return e
    try:
        resp = await asyncio.to_thread(_open)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise RetryableError(f"could not fetch {url}: {e}") from e
    return HttpStream(url, resp)


def _range_total(content_range: str | None) -> int | None:
    """The total size in a ``Content-Range`` header (``bytes 0-0/12345``, ``bytes */0``), or None."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


async def probe_url(url: str):
    """Whether ``url`` exists and how big it is, without downloading it: a GET of its first byte
    (``Range: bytes=0-0``; the size comes from ``Content-Range``, the uncompressed size, or from
    ``Content-Length`` when the server ignores the range). ``(status, size or None, content_type,
    etag or None)``; ``RetryableError`` on network errors."""
    def _open():
        req = urllib.request.Request(url, headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"})
        try:
            return urllib.request.urlopen(req, timeout=60)
        except urllib.error.HTTPError as e:
            return e
    try:
        resp = await asyncio.to_thread(_open)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise RetryableError(f"could not fetch {url}: {e}") from e
    try:
        status = resp.status if hasattr(resp, "status") else resp.code
        headers = resp.headers or {}
        size = _range_total(headers.get("Content-Range"))
        if status == 200 and size is None:
            clen = headers.get("Content-Length")
            size = int(clen) if clen and clen.isdigit() else None
        if status in (206, 416):  # 416: an empty file has no first byte
            status = 200
        return status, size, headers.get("Content-Type", ""), headers.get("ETag")
    finally:
        resp.close()


async def read_file(path) -> bytes | None:
    """The bytes of the local file ``path``, or None when it does not exist."""
    try:
        return await asyncio.to_thread(Path(path).read_bytes)
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------------------- store

def cache_dir() -> Path:
    """The directory that holds cached model files: ``$WEBFORMERS_CACHE`` or ``~/.cache/webformers/hub``."""
    return Path(os.environ.get("WEBFORMERS_CACHE") or Path.home() / ".cache" / "webformers" / "hub")


class DirStore:
    """The entry store on CPython: per URL one data file and one metadata file (``data/<sha256(url)>``,
    ``meta/<sha256(url)>.json``), written atomically (temp file + ``os.replace``)."""

    #: the browser Cache API cache holding the files (none: this store is a directory)
    cache_name = None
    #: the largest entry to put (None: any size, so every file is one entry)
    chunk_bytes = None

    def __init__(self, root):
        self.root = Path(root)

    def paths(self, url: str) -> tuple[Path, Path]:
        """(data file, metadata file) of ``url``."""
        key = hashlib.sha256(url.encode()).hexdigest()
        return self.root / "data" / key, self.root / "meta" / (key + ".json")

    async def get(self, url: str):
        """The stored bytes of ``url``, or None."""
        data_p, meta_p = self.paths(url)
        if not (data_p.exists() and meta_p.exists()):
            return None
        try:
            return await asyncio.to_thread(data_p.read_bytes)
        except OSError:
            return None

    async def meta(self, url: str) -> dict | None:
        """The metadata of ``url``, or None when it is not stored."""
        data_p, meta_p = self.paths(url)
        if not data_p.exists():
            return None
        try:
            return json.loads(meta_p.read_text())
        except (OSError, ValueError):
            return None

    async def put(self, url: str, data, meta: dict) -> None:
        """Store ``data`` for ``url`` with ``meta`` (plus ``url`` and ``size``); ``QuotaError`` when the disk
        is full (nothing is left behind)."""
        data_p, meta_p = self.paths(url)
        try:
            for p, payload in ((data_p, bytes(data)),
                               (meta_p, json.dumps({**meta, "url": url, "size": len(data)}).encode())):
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_name(f".{p.name}.{os.getpid()}.{id(payload)}.tmp")
                await asyncio.to_thread(tmp.write_bytes, payload)
                os.replace(tmp, p)
        except OSError as e:
            for p in (data_p, meta_p):
                p.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QuotaError(str(e)) from e
            raise

    async def delete(self, url: str) -> int:
        """Remove ``url``; the bytes freed."""
        data_p, meta_p = self.paths(url)
        size = data_p.stat().st_size if data_p.exists() else 0
        data_p.unlink(missing_ok=True)
        meta_p.unlink(missing_ok=True)
        return size

    async def entries(self) -> list[dict]:
        """The metadata of every entry (with ``url`` and ``size``)."""
        out = []
        meta_dir = self.root / "meta"
        if not meta_dir.is_dir():
            return out
        for p in sorted(meta_dir.glob("*.json")):
            try:
                meta = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            data_p = self.root / "data" / p.name[: -len(".json")]
            if data_p.exists():
                meta["size"] = data_p.stat().st_size
                out.append(meta)
        return out

    async def usage(self) -> int:
        """Bytes the store takes on disk."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.exists() else 0


async def open_store(name: str):
    """``(store, None)``: the ``DirStore`` at ``cache_dir()`` (``name`` names the browser's Cache API cache;
    CPython keeps one directory)."""
    return DirStore(cache_dir()), None


async def estimate_storage(cache_bytes: int) -> dict:
    """``{"usage", "quota", "persisted"}``: the store's bytes, those plus the disk's free space, True."""
    probe = cache_dir()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return {"usage": cache_bytes, "quota": cache_bytes + free, "persisted": True}


async def persist_storage() -> bool:
    """Files on disk stay until deleted: True."""
    return True


def default_host() -> str | None:
    """Where model repos are served when no host is named: ``$WEBFORMERS_HOST`` (None when unset)."""
    return os.environ.get("WEBFORMERS_HOST") or None


def run_sync(coro):
    """Run ``coro`` to completion from synchronous code (CPython only): ``asyncio.run`` here, or in a fresh
    thread when this thread already runs an event loop (e.g. under Playwright's sync API)."""
    import asyncio
    import threading

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def location_href() -> None:
    """None: CPython has no page location (URLs stay as given)."""
    return None


def absolute_url(url: str, base: str) -> str:
    """``url`` resolved against ``base``."""
    from urllib.parse import urljoin

    return urljoin(base, url)


async def packages_ready() -> None:
    """Nothing to wait for on CPython: numpy is imported like any package."""


def device_memory() -> int | None:
    """The physical memory in bytes (``os.sysconf``); None where it is not known."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None
