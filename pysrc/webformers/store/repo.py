"""The runtime model store: fetch a model repo's files, verify them against its manifest, cache them.

``await ModelRepo.open(model, revision=..., host=...)`` fetches ``onnx/manifest.json`` and then serves the
repo's files (``await repo.file(path)``, ``repo.json``, ``repo.text``), each checked for size and sha256
against the manifest on download *and* on every cache read; a mismatching cached copy is evicted and
fetched again, a mismatching download is never cached.

Where files come from (``host``):

- a URL template when ``host`` contains ``{`` - placeholders ``{model}``, ``{revision}``, ``{file}``, e.g.
  ``"https://example.org/{model}/resolve/{revision}/{file}"`` (the Hugging Face hub's layout);
- otherwise a plain prefix: ``{host}/{model}/{file}``;
- default: in the browser the page origin + ``/models``; on CPython ``$WEBFORMERS_HOST``, or ``model``
  itself when it is a local directory. On CPython a host may be an http(s) URL or a local directory.

Where files are kept:

- browser: the Cache API (``caches.open("webformers-hub-v1")``), keyed by the full file URL, with the
  model / revision / file / module / dtype recorded in an ``x-webformers`` response header; bytes stay
  in JS (a ``Uint8Array``) from the network to the session. No Cache API (no ``caches`` global, or it
  throws, e.g. on an opaque origin) -> everything works uncached. A full quota (``QuotaExceededError``)
  -> a ``warning`` event and the file is used uncached.
- CPython: a directory (``$WEBFORMERS_CACHE`` or ``~/.cache/webformers/hub``): ``data/<sha256(url)>`` +
  ``meta/<sha256(url)>.json``, written atomically (temp file + ``os.replace``). Local-directory hosts
  are read in place (verified, not copied into the cache).

The manifest itself (and ``quantization_report.json``, which the manifest does not list) are fetched
network-first and fall back to the cached copy when the network fails, so a cached model loads offline.

Concurrent requests for one URL share one download. A download that fails midway (network error,
truncated body, HTTP 5xx) is retried up to ``RETRIES`` times; nothing partial is ever cached.

Progress and warning events are dicts (see ``EVENT_KEYS``) given to ``progress_callback`` (sync or async)
and, in the browser, to ``js.wfBridge.emit`` when the worker provides it.
"""
from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path

from .. import platform
from ..dtypes import get_dtype
from ..platform import QuotaError, RetryableError, cache_dir, default_host
from .manifest import MANIFEST_PATH, Manifest

__all__ = [
    "ModelRepo", "IntegrityError", "cached_models", "delete_cached", "storage_estimate",
    "request_persistence", "resolve_url", "default_host", "cache_dir", "CACHE_NAME", "RETRIES",
]

CACHE_NAME = "webformers-hub-v1"
RETRIES = 3
EVENT_KEYS = ("status", "name", "file", "loaded", "total", "progress", "cached", "overall")
REPORT_PATH = "quantization_report.json"


class IntegrityError(ValueError):
    """A file's bytes are not what the manifest says (size or sha256)."""


# --------------------------------------------------------------------------------------------- events

async def _deliver(event: dict, callbacks) -> None:
    for cb in callbacks:
        if cb is None:
            continue
        r = cb(event)
        if inspect.isawaitable(r):
            await r
    platform.emit_page_event(event)


class _Events:
    """Events for one model load: per-file progress plus an ``overall`` byte count."""

    def __init__(self, name: str, callbacks=(), sizes: dict | None = None):
        self.name = name
        self.callbacks = []
        for c in callbacks:  # the same callable given to open() and load_sessions() gets each event once
            if c is not None and all(c is not d and c != d for d in self.callbacks):
                self.callbacks.append(c)
        self.sizes = dict(sizes or {})
        self.loaded: dict[str, int] = {}
        self._last_pct: dict[str, int] = {}

    def overall(self) -> dict:
        return {"loaded": sum(self.loaded.values()), "total": sum(self.sizes.values())}

    async def file_event(self, status: str, path: str, loaded: int, total: int, cached: bool) -> None:
        self.sizes.setdefault(path, total)
        self.loaded[path] = loaded
        pct = round(100.0 * loaded / total, 1) if total else (100.0 if status == "done" else 0.0)
        if status == "progress":  # at most one event per whole percent
            whole = int(pct)
            if self._last_pct.get(path) == whole and loaded < total:
                return
            self._last_pct[path] = whole
        await _deliver({"status": status, "name": self.name, "file": path, "loaded": loaded, "total": total,
                        "progress": pct, "cached": cached, "overall": self.overall()}, self.callbacks)

    async def warning(self, message: str, file: str | None = None) -> None:
        ev = {"status": "warning", "name": self.name, "message": message}
        if file is not None:
            ev["file"] = file
        await _deliver(ev, self.callbacks)

    async def ready(self, **extra) -> None:
        await _deliver({"status": "ready", "name": self.name, "overall": self.overall(), **extra}, self.callbacks)


# ----------------------------------------------------------------------------------------------- URLs

_PLACEHOLDERS = ("{model}", "{revision}", "{file}")


def resolve_url(host: str, model: str, revision: str, path: str) -> str:
    """The URL (or local path) of ``path`` in ``model`` at ``revision`` under ``host``."""
    if "{" in host:
        out = host
        for key, value in (("{model}", model), ("{revision}", revision), ("{file}", path)):
            out = out.replace(key, value)
        if "{" in out or "}" in out:
            raise ValueError(f"host template {host!r} has an unknown placeholder; valid placeholders: "
                             f"{', '.join(_PLACEHOLDERS)}")
        return out
    return f"{host.rstrip('/')}/{model.strip('/')}/{path}"


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _local_path(url: str) -> Path:
    return Path(url[len("file://"):] if url.startswith("file://") else url)


# --------------------------------------------------------------------------------------------- bytes

def _looks_html(data, content_type: str) -> bool:
    if "html" in (content_type or "").lower():
        return True
    head = platform.byte_slice(data, 0, 256).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


async def _verify(data, entry: dict) -> str | None:
    """None when ``data`` matches the manifest entry, else what is wrong."""
    n = platform.byte_length(data)
    if n != entry["size"]:
        return f"{n} bytes instead of {entry['size']}"
    got = await platform.sha256_hex(data)
    if got != entry["sha256"]:
        return f"sha256 {got[:16]}... instead of {entry['sha256'][:16]}..."
    return None


# ----------------------------------------------------------------------------------------------- stores

async def _get_store():
    """(store or None, reason it is unavailable)."""
    return await platform.open_store(CACHE_NAME)


# ------------------------------------------------------------------------------------------ the repo

_inflight: dict[str, asyncio.Future] = {}


class ModelRepo:
    """One model repo at one revision: its manifest, and verified, cached access to its files."""

    def __init__(self, model: str, revision: str, host: str, manifest: Manifest, *, progress_callback=None,
                 use_cache: bool = True, store=None, store_error: str | None = None):
        self.model = model
        self.revision = revision
        self.host = host
        self.manifest = manifest
        self.progress_callback = progress_callback
        self.use_cache = use_cache
        self._store = store
        self.store_error = store_error
        self.warnings: list[str] = []

    # -- opening
    @classmethod
    async def open(cls, model: str, *, revision: str = "main", host: str | None = None,
                   progress_callback=None, use_cache: bool = True) -> "ModelRepo":
        if not model or not isinstance(model, str):
            raise ValueError(f"model must be a repo name like 'org/name', got {model!r}")
        if host is None:
            host = default_host()
            if host is None:
                if Path(model).is_dir():
                    model_path = Path(model).resolve()
                    host, model = str(model_path.parent), model_path.name
                else:
                    raise ValueError(
                        f"no host for model {model!r}: pass host= (an http(s) URL prefix, a URL template with "
                        f"{{model}}/{{revision}}/{{file}}, or a local directory), set WEBFORMERS_HOST, or pass "
                        f"a local repo directory as model")
        store, store_error = (await _get_store()) if use_cache else (None, None)
        events = _Events(model, [progress_callback])
        if store_error:
            await events.warning(f"model files will not be cached: {store_error}")
        url = resolve_url(host, model, revision, MANIFEST_PATH)
        text, note = await _fetch_network_first(url, store if _is_http(url) else None, events,
                                                 {"model": model, "revision": revision, "host": host,
                                                  "file": MANIFEST_PATH},
                                                 f"{model}: {MANIFEST_PATH}", required=True)
        try:
            manifest = Manifest.from_json(text, repo=model)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{model}: {MANIFEST_PATH} at {url} is not a webformers manifest: {e}") from e
        repo = cls(model, revision, host, manifest, progress_callback=progress_callback, use_cache=use_cache,
                   store=store, store_error=store_error)
        if note:
            repo.warnings.append(note)
        return repo

    def url(self, path: str) -> str:
        return resolve_url(self.host, self.model, self.revision, path)

    @property
    def cache_name(self) -> str | None:
        """The browser Cache API cache that holds this repo's files (None off the browser or uncached)."""
        if self.use_cache and self._store is not None and _is_http(self.url(MANIFEST_PATH)):
            return self._store.cache_name
        return None

    def __repr__(self) -> str:
        return f"ModelRepo({self.model!r}, revision={self.revision!r}, host={self.host!r})"

    # -- files
    async def json(self, path: str, *, events: _Events | None = None) -> dict:
        text = await self.text(path, events=events)
        try:
            return json.loads(text)
        except ValueError as e:
            raise ValueError(f"{self.model}: {path} is not valid JSON: {e}") from e

    async def text(self, path: str, *, events: _Events | None = None) -> str:
        return platform.decode_text(await self.file(path, events=events))

    async def optional_json(self, path: str) -> dict | None:
        """A JSON file the manifest does not list (e.g. ``quantization_report.json``), or None if absent."""
        if self.manifest.entry(path) is not None:
            return await self.json(path)
        url = self.url(path)
        try:
            text, _ = await _fetch_network_first(
                url, self._store if (self.use_cache and _is_http(url)) else None, self._events(),
                {"model": self.model, "revision": self.revision, "host": self.host, "file": path},
                f"{self.model}: {path}", required=False)
        except FileNotFoundError:
            return None
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as e:
            raise ValueError(f"{self.model}: {path} at {url} is not valid JSON: {e}") from e

    def _events(self, progress_callback=None) -> _Events:
        return _Events(self.model, [self.progress_callback, progress_callback])

    async def file(self, path: str, *, progress_callback=None, events: _Events | None = None):
        """The verified bytes of ``path``: ``bytes`` on CPython, a JS ``Uint8Array`` in the browser."""
        entry = self.manifest.entry(path)
        if entry is None:
            listed = ", ".join(sorted(self.manifest.data["files"]))
            raise FileNotFoundError(f"{self.model}: {path!r} is not in {MANIFEST_PATH}; the repo's files: {listed}")
        events = events or self._events(progress_callback)
        url = self.url(path)
        fut = _inflight.get(url)
        if fut is not None and not fut.done():
            await events.file_event("initiate", path, 0, entry["size"], False)
            try:
                data = await asyncio.shield(fut)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if fut.cancelled() and not (task and task.cancelling()):
                    # the load we joined was cancelled, not us: load it ourselves
                    return await self.file(path, progress_callback=progress_callback, events=events)
                raise
            await events.file_event("done", path, entry["size"], entry["size"], False)
            return data
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        _inflight[url] = fut
        try:
            data = await self._load(path, url, entry, events)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # mark retrieved: the waiters (if any) re-raise it
            raise
        else:
            fut.set_result(data)
            return data
        finally:
            if _inflight.get(url) is fut:
                del _inflight[url]

    async def _load(self, path: str, url: str, entry: dict, events: _Events):
        size = entry["size"]
        await events.file_event("initiate", path, 0, size, False)
        if not _is_http(url):
            return await self._load_local(path, url, entry, events)
        store = self._store if self.use_cache else None
        if store is not None:
            try:
                cached = await store.get(url)
            except Exception as e:  # a broken cache must not break loading
                cached = None
                await events.warning(f"could not read the cached copy of {path}: {e}", path)
            if cached is not None:
                problem = await _verify(cached, entry)
                if problem is None:
                    await events.file_event("progress", path, size, size, True)
                    await events.file_event("done", path, size, size, True)
                    return cached
                await store.delete(url)
                msg = f"cached copy of {path} is corrupted ({problem}): evicted, downloading it again"
                self.warnings.append(msg)
                await events.warning(msg, path)
        await events.file_event("download", path, 0, size, False)

        async def on_progress(loaded, total):
            await events.file_event("progress", path, loaded, total or size, False)

        last = None
        for attempt in range(1, RETRIES + 1):
            try:
                status, ctype, data = await platform.fetch_bytes(url, on_progress, size)
            except RetryableError as e:
                last = e
                if attempt < RETRIES:
                    await events.warning(f"{e}; retrying ({attempt}/{RETRIES - 1})", path)
                    await asyncio.sleep(0.1 * attempt)
                continue
            if status in (401, 403, 404, 410):
                raise FileNotFoundError(f"{self.model}: {path} is not available at {url} (HTTP {status})")
            if status != 200:
                last = RetryableError(f"{url} answered HTTP {status}")
                if attempt < RETRIES:
                    await events.warning(f"{last}; retrying ({attempt}/{RETRIES - 1})", path)
                    await asyncio.sleep(0.1 * attempt)
                continue
            problem = await _verify(data, entry)
            if problem is not None:
                what = (" - the server answered with an HTML page (wrong host or URL template?)"
                        if _looks_html(data, ctype) else "")
                raise IntegrityError(
                    f"{self.model}: {path} downloaded from {url} is not the file the manifest describes: "
                    f"{problem} (content-type {ctype or 'unknown'}){what}; it was not cached")
            if store is not None:
                meta = {"model": self.model, "revision": self.revision, "host": self.host, "file": path,
                        "module": entry.get("module"), "dtype": entry.get("dtype"), "sha256": entry["sha256"]}
                try:
                    await store.put(url, data, meta)
                except QuotaError as e:
                    msg = f"storage quota exceeded (QuotaExceededError: {e}): {path} is used without caching"
                    self.warnings.append(msg)
                    await events.warning(msg, path)
                except Exception as e:
                    msg = f"could not cache {path} ({e}): it is used without caching"
                    self.warnings.append(msg)
                    await events.warning(msg, path)
            await events.file_event("done", path, size, size, False)
            return data
        raise ConnectionError(f"{self.model}: downloading {path} failed {RETRIES} times: {last}")

    async def _load_local(self, path: str, url: str, entry: dict, events: _Events):
        size = entry["size"]
        data = await platform.read_file(_local_path(url))
        if data is None:
            raise FileNotFoundError(f"{self.model}: {path} is missing: {url}")
        problem = await _verify(data, entry)
        if problem is not None:
            raise IntegrityError(f"{self.model}: {url} is not the file the manifest describes: {problem}")
        await events.file_event("progress", path, size, size, False)
        await events.file_event("done", path, size, size, False)
        return data


async def _fetch_network_first(url: str, store, events: _Events, meta: dict, what: str, required: bool):
    """(text, note): the network copy (cached on success) or, when the network fails, the cached copy."""
    if not _is_http(url):
        data = await platform.read_file(_local_path(url))
        if data is None:
            if required:
                raise FileNotFoundError(f"{what} is missing: {url}")
            return None, None
        return platform.decode_text(data), None
    failure = None
    for attempt in range(1, RETRIES + 1):
        try:
            status, ctype, data = await platform.fetch_bytes(url, _noop_progress, None, no_cache=True)
        except RetryableError as e:
            failure = str(e)
            await asyncio.sleep(0.05 * attempt)
            continue
        if status == 200:
            text = platform.decode_text(data)
            if _looks_html(data, ctype):
                failure = f"{url} answered with an HTML page, not JSON (wrong host or URL template?)"
                break
            try:
                json.loads(text)
            except ValueError as e:
                failure = f"{url} did not answer JSON: {e}"
                break
            if store is not None:
                try:
                    await store.put(url, data, meta)
                except Exception as e:
                    await events.warning(f"could not cache {meta['file']} ({e})", meta["file"])
            return text, None
        failure = f"{url} answered HTTP {status}"
        if status < 500:
            break
    if store is not None:
        try:
            cached = await store.get(url)
        except Exception:
            cached = None
        if cached is not None:
            note = f"{what}: using the cached copy ({failure})"
            await events.warning(note, meta["file"])
            return platform.decode_text(cached), note
    if not required and failure and ("HTTP 404" in failure or "HTTP 410" in failure):
        return None, None
    if failure and "HTTP 4" in failure:
        raise FileNotFoundError(f"{what} not found: {failure}")
    if failure and ("HTML" in failure or "JSON" in failure):
        raise ValueError(f"{what} is not usable: {failure}")
    if required:
        raise ConnectionError(f"{what} could not be loaded and no cached copy exists: {failure}")
    return None, None


async def _noop_progress(loaded, total):
    return None


# -------------------------------------------------------------------------------------- management

def _variant_key(meta: dict):
    return meta.get("module"), meta.get("dtype")


async def cached_models() -> list[dict]:
    """The cached models: ``[{"model", "revision", "host", "bytes", "files", "variants": [{"module",
    "dtype", "bytes", "files"}], "other_bytes"}]`` (``other_bytes``: config, tokenizer, manifest...)."""
    store, _ = await _get_store()
    if store is None:
        return []
    groups: dict[tuple, dict] = {}
    for meta in await store.entries():
        key = (meta.get("model"), meta.get("revision"), meta.get("host"))
        g = groups.setdefault(key, {"model": key[0], "revision": key[1], "host": key[2], "bytes": 0, "files": 0,
                                    "variants": {}, "other_bytes": 0})
        size = int(meta.get("size", 0))
        g["bytes"] += size
        g["files"] += 1
        module, dtype = _variant_key(meta)
        if module and dtype:
            v = g["variants"].setdefault((module, dtype), {"module": module, "dtype": dtype, "bytes": 0, "files": 0})
            v["bytes"] += size
            v["files"] += 1
        else:
            g["other_bytes"] += size
    out = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        g = groups[key]
        g["variants"] = sorted(g["variants"].values(), key=lambda v: (v["module"], v["dtype"]))
        out.append(g)
    return out


async def delete_cached(model: str, dtype: str | None = None, module: str | None = None,
                        revision: str = "main") -> int:
    """Delete cached files of ``model`` at ``revision``: everything, or only one dtype variant (optionally of
    one module), or all variants of one module. Returns the bytes freed."""
    if dtype is not None:
        dtype = get_dtype(dtype).name
    store, _ = await _get_store()
    if store is None:
        return 0
    freed = 0
    for meta in await store.entries():
        if meta.get("model") != model or meta.get("revision") != revision:
            continue
        if dtype is not None and meta.get("dtype") != dtype:
            continue
        if module is not None and meta.get("module") != module:
            continue
        freed += await store.delete(meta["url"])
    return freed


async def storage_estimate() -> dict:
    """``{"usage", "quota", "persisted", "cache_bytes"}`` (browser: ``navigator.storage``; CPython: the cache
    directory's bytes and the disk's free space)."""
    store, _ = await _get_store()
    cache_bytes = await store.usage() if store is not None else 0
    return {**await platform.estimate_storage(cache_bytes), "cache_bytes": cache_bytes}


async def request_persistence() -> bool:
    """Ask the browser to keep the cache under storage pressure (``navigator.storage.persist``). In a worker,
    where ``persist`` does not exist, this reports ``persisted()`` - the page must ask. CPython: True."""
    return await platform.persist_storage()
