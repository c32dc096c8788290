"""``ModelRepo``: one model repo at one revision - its manifest, and verified, cached access to its files.

``await ModelRepo.open(model, revision=..., host=...)`` fetches ``onnx/manifest.json`` (network-first: a
cached copy serves when the network fails) and then serves the repo's files (``await repo.file(path)``,
``repo.json``, ``repo.text``; ``repo.optional_json`` for files the manifest does not list), each checked
for size and sha256 against the manifest on download *and* on every cache read; a mismatching cached copy
is evicted and fetched again, a mismatching download is never cached. Concurrent requests for one URL
share one download.

``host`` (see ``store.urls``): an http(s) prefix, a URL template or a local directory. Default: in the
browser the page origin + ``/models``; on CPython ``$WEBFORMERS_HOST``, or ``model`` itself when it is a
local directory. Local directories are read in place (verified, not copied into the cache).

Files are cached in the store of ``store.cache``: no store (no Cache API, or it throws, e.g. on an opaque
origin) -> a ``warning`` event and everything works uncached; a full quota -> a ``warning`` event and the
file is used uncached. Progress and warning events: ``store.events``.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import platform
from .cache import open_cache
from .events import LoadEvents
from .fetch import fetch_file, fetch_network_first, share
from .integrity import IntegrityError, verify
from .manifest import MANIFEST_PATH, Manifest
from .urls import default_host, is_http, local_path, resolve_url

__all__ = ["ModelRepo"]


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
        store, store_error = (await open_cache()) if use_cache else (None, None)
        events = LoadEvents(model, [progress_callback])
        if store_error:
            await events.warning(f"model files will not be cached: {store_error}")
        url = resolve_url(host, model, revision, MANIFEST_PATH)
        text, note = await fetch_network_first(url, store if is_http(url) else None, events,
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
        if self.use_cache and self._store is not None and is_http(self.url(MANIFEST_PATH)):
            return self._store.cache_name
        return None

    def __repr__(self) -> str:
        return f"ModelRepo({self.model!r}, revision={self.revision!r}, host={self.host!r})"

    # -- files
    async def json(self, path: str, *, events: LoadEvents | None = None) -> dict:
        text = await self.text(path, events=events)
        try:
            return json.loads(text)
        except ValueError as e:
            raise ValueError(f"{self.model}: {path} is not valid JSON: {e}") from e

    async def text(self, path: str, *, events: LoadEvents | None = None) -> str:
        return platform.decode_text(await self.file(path, events=events))

    async def optional_json(self, path: str) -> dict | None:
        """A JSON file the repo may lack: through the manifest when it lists ``path``, else network-first
        (e.g. ``quantization_report.json``, which the manifest cannot list); None when the repo lacks it."""
        if self.manifest.entry(path) is not None:
            return await self.json(path)
        url = self.url(path)
        try:
            text, _ = await fetch_network_first(
                url, self._store if (self.use_cache and is_http(url)) else None, self._events(),
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

    def _events(self, progress_callback=None) -> LoadEvents:
        return LoadEvents(self.model, [self.progress_callback, progress_callback])

    async def file(self, path: str, *, progress_callback=None, events: LoadEvents | None = None):
        """The verified bytes of ``path``: ``bytes`` on CPython, a JS ``Uint8Array`` in the browser."""
        entry = self.manifest.entry(path)
        if entry is None:
            listed = ", ".join(sorted(self.manifest.data["files"]))
            raise FileNotFoundError(f"{self.model}: {path!r} is not in {MANIFEST_PATH}; the repo's files: {listed}")
        events = events or self._events(progress_callback)
        url = self.url(path)
        size = entry["size"]
        return await share(url, lambda: self._load(path, url, entry, events),
                           waiting=lambda: events.file_event("initiate", path, 0, size, False),
                           joined=lambda: events.file_event("done", path, size, size, False))

    async def _load(self, path: str, url: str, entry: dict, events: LoadEvents):
        size = entry["size"]
        await events.file_event("initiate", path, 0, size, False)
        if not is_http(url):
            return await self._load_local(path, url, entry, events)
        store = self._store if self.use_cache else None
        meta = {"model": self.model, "revision": self.revision, "host": self.host, "file": path,
                "module": entry.get("module"), "dtype": entry.get("dtype"), "sha256": entry["sha256"]}
        return await fetch_file(url, entry, path=path, model=self.model, events=events, store=store, meta=meta,
                                warnings=self.warnings)

    async def _load_local(self, path: str, url: str, entry: dict, events: LoadEvents):
        size = entry["size"]
        data = await platform.read_file(local_path(url))
        if data is None:
            raise FileNotFoundError(f"{self.model}: {path} is missing: {url}")
        problem = await verify(data, entry)
        if problem is not None:
            raise IntegrityError(f"{self.model}: {url} is not the file the manifest describes: {problem}")
        await events.file_event("progress", path, size, size, False)
        await events.file_event("done", path, size, size, False)
        return data
