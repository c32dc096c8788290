"""``ModelRepo``: one model repo at one revision - its manifest, and verified, cached access to its files.

``await ModelRepo.open(model, revision=..., host=...)`` fetches ``onnx/manifest.json`` (network-first: a
cached copy serves when the network fails) and then serves the repo's files (``await repo.file(path)``,
``repo.json``, ``repo.text``; ``repo.optional_json`` for files the manifest does not list), each checked
for size and sha256 against the manifest on download *and* on every cache read; a mismatching cached copy
is evicted and fetched again, a mismatching download is never cached. Concurrent requests for one URL
share one download.

A repo without a manifest (404, or offline with none cached; an onnx-community / transformers.js export)
is opened from its config.json (network-first) and a manifest that ``store.discover`` makes from a
listing, the directory, probes or, offline, the files cached before. Its files are checked on download
for the size the host reported and for not being an HTML page; the sha256 of the first download is
recorded in the cached entry's metadata, and every later read is checked against it like a manifest's
(a local directory's files: against the first read, for the life of the ``ModelRepo``). Files it does not list (e.g. ``tokenizer.json`` of a probed repo) are fetched and
recorded the same way when first asked for. ``webformers manifest REPO_DIR`` writes a full manifest into
such a repo instead.

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
from .discover import discover
from .events import LoadEvents
from .fetch import fetch_file, fetch_network_first, share
from .integrity import IntegrityError, looks_html, verify
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
        meta = {"model": model, "revision": revision, "host": host}
        notes = []
        try:
            text, note = await fetch_network_first(url, store if is_http(url) else None, events,
                                                    {**meta, "file": MANIFEST_PATH}, f"{model}: {MANIFEST_PATH}",
                                                    required=True)
        except FileNotFoundError as missing:
            manifest, notes, note = await cls._discover(model, revision, host, store, events, missing)
        except ConnectionError as offline:  # no cached manifest: a repo without one may be cached
            if store is None or not is_http(url):
                raise
            try:
                manifest, notes, note = await cls._discover(model, revision, host, store, events, offline)
            except ConnectionError:
                raise offline from None
        else:
            try:
                manifest = Manifest.from_json(text, repo=model)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{model}: {MANIFEST_PATH} at {url} is not a webformers manifest: {e}") from e
        repo = cls(model, revision, host, manifest, progress_callback=progress_callback, use_cache=use_cache,
                   store=store, store_error=store_error)
        for n in ([note] if note else []) + notes:
            repo.warnings.append(n)
        for n in notes:
            await events.warning(n)
        return repo

    @staticmethod
    async def _discover(model: str, revision: str, host: str, store, events, why: Exception):
        """(manifest, notes, config.json's network note) of a repo without a manifest (``why``: what the
        manifest's fetch answered; see ``store.discover``)."""
        url_of = lambda path: resolve_url(host, model, revision, path)  # noqa: E731
        config_url = url_of("config.json")
        try:
            text, note = await fetch_network_first(
                config_url, store if is_http(config_url) else None, events,
                {"model": model, "revision": revision, "host": host, "file": "config.json"},
                f"{model}: config.json", required=True)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{model}: neither {MANIFEST_PATH} nor config.json found under {host} "
                                    f"({why}; {e})") from e
        config = json.loads(text)
        if not isinstance(config, dict):
            raise ValueError(f"{model}: config.json at {config_url} is not a JSON object")
        raw = text.encode("utf-8")
        config_entry = {"size": len(raw), "sha256": await platform.sha256_hex(raw)}
        manifest, notes = await discover(model=model, revision=revision, host=host, url_of=url_of,
                                         store=store if is_http(config_url) else None, events=events,
                                         config=config, config_entry=config_entry)
        return manifest, notes, note

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

    # -- forms derived from a file (e.g. the tokenizer's compact form), kept beside it in the store
    def _derived_url(self, path: str, kind: str) -> str:
        url = self.url(path)
        return f"{url}{'&' if '?' in url else '?'}webformers-derived={kind}"

    def _derived_store(self):
        return self._store if self.use_cache and self._store is not None and is_http(self.url(MANIFEST_PATH)) \
            else None

    async def derived(self, path: str, kind: str):
        """Bytes stored by ``put_derived(path, kind, ...)`` from the file ``path`` the repo has now, or None.

        A stored form is used only while its recorded source sha256 is the manifest's for ``path`` and its
        own sha256 matches; otherwise it is evicted and None is returned.
        """
        store = self._derived_store()
        entry = self.manifest.entry(path)
        if store is None or entry is None or not entry.get("sha256"):
            return None
        url = self._derived_url(path, kind)
        meta = await store.meta(url)
        if meta is None:
            return None
        data = await store.get(url) if meta.get("derived_from") == entry["sha256"] else None
        if data is None or await verify(data, {"size": meta.get("size"), "sha256": meta.get("sha256")}) is not None:
            await store.delete(url)
            return None
        return data

    async def put_derived(self, path: str, kind: str, data: bytes) -> bool:
        """Keep ``data``, derived from the verified file ``path``, for ``derived(path, kind)``; False when
        there is no store or ``path`` has no recorded sha256."""
        store = self._derived_store()
        entry = self.manifest.entry(path)
        if store is None or entry is None or not entry.get("sha256"):
            return False
        meta = {"model": self.model, "revision": self.revision, "host": self.host, "file": f"{path}#{kind}",
                "derived_from": entry["sha256"], "sha256": await platform.sha256_hex(data)}
        await store.put(self._derived_url(path, kind), data, meta)
        return True

    def _events(self, progress_callback=None) -> LoadEvents:
        return LoadEvents(self.model, [self.progress_callback, progress_callback])

    async def file(self, path: str, *, progress_callback=None, events: LoadEvents | None = None):
        """The verified bytes of ``path``: ``bytes`` on CPython, a JS ``Uint8Array`` in the browser."""
        entry = self.manifest.entry(path)
        if entry is None:
            if not self.manifest.discovered:
                listed = ", ".join(sorted(self.manifest.data["files"]))
                raise FileNotFoundError(f"{self.model}: {path!r} is not in {MANIFEST_PATH}; the repo's files: {listed}")
            entry = {"size": None, "sha256": None}  # listed once read (see _record)
        events = events or self._events(progress_callback)
        url = self.url(path)
        size = entry.get("size") or 0
        return await share(url, lambda: self._load(path, url, entry, events),
                           waiting=lambda: events.file_event("initiate", path, 0, size, False),
                           joined=lambda: events.file_event("done", path, size, size, False))

    async def _check_new(self, path: str, data, ctype: str, entry: dict) -> str | None:
        """For a file of a discovered repo without a recorded sha256: what is wrong with a download, or
        None (then its size and sha256 are recorded in ``entry``)."""
        n = platform.byte_length(data)
        if entry.get("size") is not None and n != entry["size"]:
            return f"{n} bytes instead of the {entry['size']} the host reported"
        if looks_html(data, ctype):
            return "an HTML page"
        self._record(path, entry, n, await platform.sha256_hex(data))
        return None

    def _record(self, path: str, entry: dict, size: int, sha256: str) -> None:
        entry.update(size=size, sha256=sha256)
        if self.manifest.entry(path) is None:
            self.manifest.add_file(path, entry)

    async def _load(self, path: str, url: str, entry: dict, events: LoadEvents):
        size = entry.get("size") or 0
        await events.file_event("initiate", path, 0, size, False)
        if not is_http(url):
            return await self._load_local(path, url, entry, events)
        store = self._store if self.use_cache else None
        meta = {"model": self.model, "revision": self.revision, "host": self.host, "file": path,
                "module": entry.get("module"), "dtype": entry.get("dtype"), "sha256": entry.get("sha256")}
        if entry.get("etag"):
            meta["etag"] = entry["etag"]
        if entry.get("sha256") is None:  # a cached copy is not trusted; the download's sha256 is recorded
            check = lambda data, ctype: self._check_new(path, data, ctype, entry)  # noqa: E731
            described = "the file the host reported"
        else:
            check = None
            described = ("the file the manifest describes" if not self.manifest.discovered else
                         "the file whose sha256 the listing gave or its first download recorded")
        return await fetch_file(url, entry, path=path, model=self.model, events=events, store=store, meta=meta,
                                warnings=self.warnings, check=check, described=described)

    async def _load_local(self, path: str, url: str, entry: dict, events: LoadEvents):
        data = await platform.read_file(local_path(url))
        if data is None:
            raise FileNotFoundError(f"{self.model}: {path} is missing: {url}")
        if entry.get("sha256") is None:
            problem = await self._check_new(path, data, "", entry)
        else:
            problem = await verify(data, entry)
        if problem is not None:
            described = ("the file the manifest describes" if not self.manifest.discovered else
                         "the file first read")
            raise IntegrityError(f"{self.model}: {url} is not {described}: {problem}")
        size = entry["size"]
        await events.file_event("progress", path, size, size, False)
        await events.file_event("done", path, size, size, False)
        return data
