"""Getting bytes from the network: bounded retries, network-first JSON files, one download per URL.

- ``await download(url, path=, size=, events=, model=)``: ``(content_type, body)`` of HTTP 200, retried
  up to ``RETRIES`` times on network errors, truncated bodies and HTTP 5xx (a warning event per retry);
  ``FileNotFoundError`` on HTTP 401/403/404/410, ``ConnectionError`` when every try failed. Nothing here
  verifies or caches: the repo does.
- ``await fetch_network_first(...)``: the manifest and the quantization report, from the network when it
  answers, else from the cache, so a cached model loads offline.
- ``await share(url, start, waiting=, joined=)``: concurrent requests for one URL share one download;
  ``in_flight()`` lists the URLs being downloaded.
"""
from __future__ import annotations

import asyncio
import json

from .. import platform
from ..platform import RetryableError
from .integrity import looks_html
from .urls import is_http, local_path

__all__ = ["RETRIES", "download", "fetch_network_first", "share", "in_flight"]

RETRIES = 3

_running: dict[str, asyncio.Future] = {}


def in_flight() -> list[str]:
    """The URLs whose download is running now."""
    return [url for url, fut in _running.items() if not fut.done()]


async def share(url: str, start, *, waiting=None, joined=None):
    """``await start()``, or, while that already runs for ``url``, its result: one download per URL.
    Joining a running download awaits ``waiting()`` before and ``joined()`` after it (both optional).
    When the joined download is cancelled (and this caller is not), this caller starts its own."""
    fut = _running.get(url)
    if fut is not None and not fut.done():
        if waiting is not None:
            await waiting()
        try:
            data = await asyncio.shield(fut)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if fut.cancelled() and not (task and task.cancelling()):
                return await share(url, start, waiting=waiting, joined=joined)
            raise
        if joined is not None:
            await joined()
        return data
    fut = asyncio.get_running_loop().create_future()
    _running[url] = fut
    try:
        data = await start()
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
        if _running.get(url) is fut:
            del _running[url]


async def download(url: str, *, path: str, size: int, events, model: str):
    """``(content_type, body)`` of ``url`` (``path`` of ``model``, ``size`` bytes expected), with progress
    events for ``path`` and bounded retries (see the module docstring)."""
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
            raise FileNotFoundError(f"{model}: {path} is not available at {url} (HTTP {status})")
        if status != 200:
            last = RetryableError(f"{url} answered HTTP {status}")
            if attempt < RETRIES:
                await events.warning(f"{last}; retrying ({attempt}/{RETRIES - 1})", path)
                await asyncio.sleep(0.1 * attempt)
            continue
        return ctype, data
    raise ConnectionError(f"{model}: downloading {path} failed {RETRIES} times: {last}")


async def fetch_network_first(url: str, store, events, meta: dict, what: str, required: bool):
    """``(text, note)`` of a JSON file the manifest cannot describe (the manifest itself, the report): the
    network copy (put in ``store`` with ``meta`` on success) or, when the network fails, the cached copy
    (``note`` says so; also a warning event). A local ``url`` is read in place. ``(None, None)`` when a
    file that is not ``required`` does not exist; ``what`` names the file in errors."""
    if not is_http(url):
        data = await platform.read_file(local_path(url))
        if data is None:
            if required:
                raise FileNotFoundError(f"{what} is missing: {url}")
            return None, None
        return platform.decode_text(data), None
    failure = None  # what went wrong last
    status = None  # the HTTP status of the last answer (None: no answer)
    bad_content = False  # the last answer was not JSON
    for attempt in range(1, RETRIES + 1):
        try:
            status, ctype, data = await platform.fetch_bytes(url, _no_progress, None, no_cache=True)
        except RetryableError as e:
            failure, status = str(e), None
            await asyncio.sleep(0.05 * attempt)
            continue
        if status == 200:
            text = platform.decode_text(data)
            bad_content = True
            if looks_html(data, ctype):
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
    if not required and status in (404, 410):
        return None, None
    if status is not None and 400 <= status < 500:
        raise FileNotFoundError(f"{what} not found: {failure}")
    if bad_content:
        raise ValueError(f"{what} is not usable: {failure}")
    if required:
        raise ConnectionError(f"{what} could not be loaded and no cached copy exists: {failure}")
    return None, None


async def _no_progress(loaded, total):
    return None
