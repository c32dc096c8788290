"""Where webformers finds its files in the browser, where its events go and what stops generation.

``configure(...)`` (also ``webformers.configure``) sets them; ``settings()`` reads them back. In a Pyodide
that is not the demo's worker (your page's main thread, a plain worker, a JupyterLite kernel) the browser
backend starts onnxruntime-web itself on first use, from the ``assets`` folder (``runtime.js``,
``ort-host.js``, ``ort/``; a ``webformers site`` folder serves them at ``webformers/``). Relative URLs are
resolved against the location of the global scope (the page, or the worker's script).

Events (load progress, warnings, and the page events ``platform.emit_page_event`` sends) go to every
``on_event`` callback, to every open ``events()`` iterator and to the host's ``wfBridge.emit`` when the
host (the demo's worker) provides one. Stop: ``platform.stop_requested()`` asks the host's ``wfBridge``
when there is one, else the ``stop`` source set here; ``generate`` and the pipelines also take
``cancel=`` (an ``asyncio.Event`` or a callable) per call.
"""
from __future__ import annotations

import asyncio
import inspect

__all__ = ["configure", "settings", "events", "EventStream", "AssetsError", "resolve_url", "assets_url",
           "models_url", "stop_source", "dispatch_event", "mark_started"]

_DEFAULTS = {"assets": "webformers/", "models": "models/", "threads": None, "ort_worker": None}
_settings = dict(_DEFAULTS)
_listeners: list = []
_streams: list = []
_stop = None
#: set by the browser backend once onnxruntime-web runs: the settings it was started with are fixed
_started: dict | None = None


class AssetsError(RuntimeError):
    """webformers' browser runtime files are missing or misconfigured; the message names each file and the
    URL tried."""


def _check_stop(stop) -> None:
    if stop is not None and not callable(getattr(stop, "is_set", None)) and not callable(stop):
        raise TypeError(f"stop must have an is_set() method (like asyncio.Event) or be a callable returning "
                        f"True to stop; got {type(stop).__name__}")


def configure(*, assets: str | None = None, models: str | None = None, threads: int | None = None,
              ort_worker: bool | None = None, on_event=None, stop=None) -> dict:
    """Set where webformers finds its files in the browser, where its events go and what stops generation.

    Call it before the first model load; arguments left out (None) keep their current value.

    Args:
        assets: the URL of the folder holding webformers' browser runtime (``runtime.js``, ``ort-host.js``,
            ``ort-core.js``, ``rpc.js``, ``sha256.js``, ``exec-form.js`` and onnxruntime-web in ``ort/``).
            Default ``"webformers/"``, resolved against the page's (or worker's) location. Fixed once
            onnxruntime-web has started.
        models: where model repos are served when a load names no ``host``: a URL prefix (``{models}/{repo
            id}/{file}``) or a template with ``{model}``, ``{revision}`` and ``{file}``. Default
            ``"models/"``, resolved like ``assets``.
        threads: onnxruntime-web's WASM threads (default: up to 4 when the page is cross-origin isolated,
            else 1). Fixed once onnxruntime-web has started.
        ort_worker: True runs onnxruntime-web in a worker of its own (a ValueError at the first load where
            ``Worker`` does not exist), False in the calling thread; None (default): a worker where
            ``Worker`` exists. Fixed once onnxruntime-web has started.
        on_event: a callable receiving every event (a dict with ``status``: initiate, download, progress,
            done, ready, warning, ... see ``webformers.store.events``); added to the ones given before
            (``settings()["on_event"]`` lists them). Coroutine functions are scheduled on the running loop.
        stop: what ``platform.stop_requested()`` asks when the host has no Stop button of its own: an
            object with ``is_set()`` (an ``asyncio.Event``) or a callable returning True to stop.

    Returns:
        The settings now in force (see ``settings()``).

    Raises:
        ValueError: ``assets``, ``threads`` or ``ort_worker`` changed after onnxruntime-web started, or
            ``threads`` is not a positive integer.
        TypeError: ``on_event`` is not callable, or ``stop`` is neither an Event-like object nor a callable.
    """
    global _stop
    new = {}
    if assets is not None:
        new["assets"] = str(assets)
    if models is not None:
        new["models"] = str(models)
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        new["threads"] = threads
    if ort_worker is not None:
        new["ort_worker"] = bool(ort_worker)
    if on_event is not None and not callable(on_event):
        raise TypeError(f"on_event must be callable (it receives each event dict); got {type(on_event).__name__}")
    _check_stop(stop)
    if _started is not None:
        fixed = [k for k in ("assets", "threads", "ort_worker")
                 if k in new and (_folder(resolve_url(new[k])) if k == "assets" else new[k]) != _started[k]]
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change once onnxruntime-web has started (started with "
                             + ", ".join(f"{k}={_started[k]!r}" for k in fixed) + "); call configure() first")
    _settings.update(new)
    if on_event is not None and on_event not in _listeners:
        _listeners.append(on_event)
    if stop is not None:
        _stop = stop
    return settings()


def settings() -> dict:
    """The settings in force: ``assets`` and ``models`` (absolute URLs in the browser), ``threads``,
    ``ort_worker``, ``on_event`` (the callbacks), ``stop`` and ``started`` (the runtime's settings once
    onnxruntime-web runs, else None)."""
    return {"assets": assets_url(), "models": models_url(), "threads": _settings["threads"],
            "ort_worker": _settings["ort_worker"], "on_event": list(_listeners), "stop": _stop,
            "started": None if _started is None else dict(_started)}


def mark_started(**facts) -> None:
    """Record that onnxruntime-web runs, with ``facts`` (``assets``, ``threads``, ``ort_worker``, ``mode``,
    ``ort_threads``): from then on ``configure`` refuses to change the first three (the browser backend calls
    this once the runtime has started)."""
    global _started
    _started = dict(facts)


def reset() -> None:
    """Back to the defaults (callbacks and stop removed); the running runtime, if any, stays."""
    global _stop
    _settings.clear()
    _settings.update(_DEFAULTS)
    _listeners.clear()
    _stop = None


def resolve_url(url: str) -> str:
    """``url`` made absolute against the global scope's location (the page, or the worker's script) in the
    browser; unchanged on CPython or when it is a template (contains ``{``)."""
    from .platform import absolute_url, location_href  # the platform imports this module

    base = location_href()
    if base is None or "{" in url:
        return url
    return absolute_url(url, base)


def _folder(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def assets_url() -> str:
    """The absolute URL of the assets folder, ending in ``/``."""
    return _folder(resolve_url(_settings["assets"]))


def models_url() -> str:
    """Where model repos are served when a load names no host (absolute in the browser, no trailing ``/``)."""
    url = resolve_url(_settings["models"])
    return url if "{" in url else url.rstrip("/")


def stop_source():
    """The ``stop`` given to ``configure`` (None when none was)."""
    return _stop


def stop_is_set() -> bool:
    """Whether the configured ``stop`` asks to stop (False without one)."""
    if _stop is None:
        return False
    check = getattr(_stop, "is_set", None)
    return bool(check() if callable(check) else _stop())


def clear_stop() -> None:
    """Clear the configured ``stop`` when it can be cleared (an ``asyncio.Event``)."""
    clear = getattr(_stop, "clear", None)
    if callable(clear):
        clear()


def dispatch_event(event: dict) -> None:
    """Give ``event`` to the ``on_event`` callbacks and the open ``events()`` iterators."""
    for cb in list(_listeners):
        r = cb(event)
        if inspect.isawaitable(r):
            asyncio.ensure_future(r)
    for s in list(_streams):
        s._put(event)


class EventStream:
    """An async iterator over the events from the moment it was made: ``async for ev in webformers.events()``.

    ``statuses`` keeps only those statuses (e.g. ``{"progress", "done"}``); ``until`` ends the iteration
    after an event with one of those statuses (e.g. ``{"ready"}``). ``close()`` (or leaving an ``async with``
    block) ends it too; events not yet read are dropped.
    """

    def __init__(self, statuses=None, until=None):
        self.statuses = None if statuses is None else set(statuses)
        self.until = set(until or ())
        self._queue: asyncio.Queue = asyncio.Queue()
        self._closed = False
        _streams.append(self)

    def _put(self, event: dict) -> None:
        if self._closed or (self.statuses is not None and event.get("status") not in self.statuses
                            and event.get("status") not in self.until):
            return
        self._queue.put_nowait(dict(event))
        if event.get("status") in self.until:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self in _streams:
                _streams.remove(self)
            self._queue.put_nowait(None)

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()


def events(statuses=None, until=None) -> EventStream:
    """An async iterator over the events from now on (see ``EventStream``)."""
    return EventStream(statuses, until)
