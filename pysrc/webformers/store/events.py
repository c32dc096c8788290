"""Progress and warning events of a model load.

An event is a dict (keys: ``EVENT_KEYS``; a warning has ``status`` "warning", ``name``, ``message`` and
maybe ``file``) given to every callback (sync or async) and to the hosting page
(``platform.emit_page_event``). ``status``: initiate, download, progress, done (per file), ready (the
load), warning.
"""
from __future__ import annotations

import inspect

from .. import platform

__all__ = ["EVENT_KEYS", "LoadEvents"]

EVENT_KEYS = ("status", "name", "file", "loaded", "total", "progress", "cached", "overall")


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
