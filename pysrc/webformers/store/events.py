"""Progress and warning events of a model load.

An event is a dict (keys: ``EVENT_KEYS``; a warning has ``status`` "warning", ``name``, ``message`` and
maybe ``file``) given to every callback (sync or async) and to the hosting page
(``platform.emit_page_event``). ``status``: initiate, download, progress, done (per file), ready (the
load), warning. A file event's ``loaded`` bytes are ``from_cache`` (read from the store, checked) plus
the ones downloaded so far (``from_network`` counts every byte received, also of a try that broke off);
``cached`` is True when all came from the store. A file's ``done`` event may carry ``chunks``:
``{"count", "verified" (read from the store, sha256 checked), "bad" (failed the check: evicted and
fetched again), "downloaded"}``.
"""
from __future__ import annotations

import inspect

from .. import platform

__all__ = ["EVENT_KEYS", "LoadEvents"]

EVENT_KEYS = ("status", "name", "file", "loaded", "total", "progress", "cached", "from_cache", "from_network",
              "chunks", "overall")


async def _deliver(event: dict, callbacks) -> None:
    for cb in callbacks:
        r = cb(event)
        if inspect.isawaitable(r):
            await r
    platform.emit_page_event(event)


class LoadEvents:
    """Events for one model load (``name``: the model): per-file progress plus an ``overall`` byte count
    over ``sizes`` ({file: bytes}, grown by every file an event names)."""

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

    async def file_event(self, status: str, path: str, loaded: int, total: int, cached: bool, *,
                         from_cache: int | None = None, from_network: int = 0, chunks: dict | None = None) -> None:
        """A file's event; ``from_cache`` defaults to ``loaded`` when ``cached``, else 0."""
        self.sizes.setdefault(path, total)
        self.loaded[path] = loaded
        pct = round(100.0 * loaded / total, 1) if total else (100.0 if status == "done" else 0.0)
        if status == "progress":  # at most one event per whole percent
            whole = int(pct)
            if self._last_pct.get(path) == whole and loaded < total:
                return
            self._last_pct[path] = whole
        event = {"status": status, "name": self.name, "file": path, "loaded": loaded, "total": total,
                 "progress": pct, "cached": cached,
                 "from_cache": (loaded if cached else 0) if from_cache is None else from_cache,
                 "from_network": from_network, "overall": self.overall()}
        if chunks is not None:
            event["chunks"] = chunks
        await _deliver(event, self.callbacks)

    async def warning(self, message: str, file: str | None = None) -> None:
        ev = {"status": "warning", "name": self.name, "message": message}
        if file is not None:
            ev["file"] = file
        await _deliver(ev, self.callbacks)

    async def ready(self, **extra) -> None:
        await _deliver({"status": "ready", "name": self.name, "overall": self.overall(), **extra}, self.callbacks)
