"""Getting a file's bytes: from the store and the network, with bounded retries, resumed downloads and
one download per URL.

- ``await fetch_file(url, entry, path=, model=, events=, store=, meta=, warnings=)``: the checked bytes
  of a file the manifest lists (``entry``: its size and sha256). ``store`` (a ``ChunkedStore``) gives
  what it holds, every chunk checked against its sha256; a bad or missing chunk is fetched again alone
  (an HTTP ``Range`` request), and so is the rest of a download that broke off earlier. The network's
  bytes go straight into one buffer of the file's size. A download that breaks off resumes from the last
  whole chunk (a ``Range`` request from that offset; the whole file again from a server that ignores
  ranges); a large file's chunks are stored as they arrive, so a later load - on another page too -
  resumes as well. Tries that fail in a row (a try that got a new chunk starts the count again) are
  bounded by ``RETRIES`` (a warning event per retry), then ``ConnectionError``; HTTP 401/403/404/410
  give ``FileNotFoundError``; bytes that are not the file (size, sha256 - checked over the whole
  buffer at the end; an HTML page) give ``IntegrityError`` and are not cached (when some chunks came
  from the store, the file is downloaded once more from scratch first). An ``entry`` without a sha256
  (or size) - a discovered repo - is downloaded whole, and what it got is recorded in ``entry`` and in
  the stored metadata. File events (``store.events``) count the bytes from the store and the network,
  the ``done`` event the chunks checked, bad and downloaded.
- ``await fetch_network_first(...)``: the manifest and the quantization report, from the network when it
  answers, else from the cache, so a cached model loads offline.
- ``await share(url, start, waiting=, joined=)``: concurrent requests for one URL share one download;
  ``in_flight()`` lists the URLs being downloaded.
"""
from __future__ import annotations

import asyncio
import json
import re

from .. import platform
from ..platform import QuotaError, RetryableError
from .integrity import IntegrityError, looks_html, verify
from .urls import is_http, local_path

__all__ = ["RETRIES", "fetch_file", "fetch_network_first", "share", "in_flight"]

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


class _Counts:
    """Where one file's bytes came from, chunk by chunk."""

    def __init__(self, count: int):
        self.count = count
        self.from_cache = 0
        self.from_network = 0
        self.verified = 0
        self.bad = 0
        self.downloaded = 0

    def chunks(self) -> dict:
        return {"count": self.count, "verified": self.verified, "bad": self.bad, "downloaded": self.downloaded}


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$")


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes a-b/n`` answer, or None."""
    m = _CONTENT_RANGE.match(content_range or "")
    return int(m.group(1)) if m else None


async def _read_body(stream, on_piece=None):
    """The rest of ``stream``'s body in one buffer (the file bytes of the platform)."""
    pieces, n = [], 0
    while (piece := await stream.read()) is not None:
        pieces.append(piece)
        n += platform.byte_length(piece)
        if on_piece is not None:
            await on_piece(n)
    buf = platform.alloc_bytes(n)
    pos = 0
    for piece in pieces:
        platform.copy_into(buf, pos, piece)
        pos += platform.byte_length(piece)
    return platform.finish_bytes(buf)


class _Download:
    """Fills ``data`` (a buffer of ``size`` bytes) with the chunks of ``spans`` that ``have`` lacks, from the
    network; ``await on_chunk(k)`` when chunk ``k`` is in place. ``size`` None: the file is downloaded
    whole into a new buffer (``data``) and ``size`` set from it."""

    def __init__(self, url: str, *, path: str, model: str, events, size, spans, have, data, counts: _Counts,
                 on_chunk):
        self.url, self.path, self.model, self.events = url, path, model, events
        self.size, self.spans, self.have, self.data = size, spans, have, data
        self.counts, self.on_chunk = counts, on_chunk
        #: False once the server showed that it does not answer Range requests
        self.ranges = True
        self.content_type = ""

    def _loaded(self, partial: int = 0) -> int:
        return sum(e - s for (s, e), h in zip(self.spans, self.have) if h) + partial

    async def _progress(self, loaded: int) -> None:
        await self.events.file_event("progress", self.path, loaded, self.size or loaded, False,
                                     from_cache=self.counts.from_cache, from_network=self.counts.from_network)

    async def run(self) -> str | None:
        """Fetch what is missing: None, or what is wrong with the bytes the server sent (not retried)."""
        failures, last = 0, None
        while not all(self.have):
            before = sum(self.have)
            try:
                problem = await self._try()
            except RetryableError as e:
                last = e
            else:
                if problem is not None:
                    return problem
                continue
            failures = 1 if sum(self.have) > before else failures + 1
            if failures >= RETRIES:
                raise ConnectionError(f"{self.model}: downloading {self.path} failed {RETRIES} times: {last}")
            await self.events.warning(f"{last}; retrying ({failures}/{RETRIES - 1})", self.path)
            await asyncio.sleep(0.1 * failures)
        return None

    async def _try(self) -> str | None:
        k = self.have.index(False)
        end = k
        while end < len(self.spans) and not self.have[end]:
            end += 1
        start, stop = self.spans[k][0], self.spans[end - 1][1]
        if self.size is None or (start == 0 and stop == self.size) or not self.ranges:
            asked = None
        else:
            asked = (start, stop)
        stream = await platform.open_stream(self.url, asked)
        try:
            status = stream.status
            if status in (401, 403, 404, 410):
                raise FileNotFoundError(f"{self.model}: {self.path} is not available at {self.url} (HTTP {status})")
            if status == 206:
                got = _range_start(stream.header("content-range"))
                if got != (start if asked else 0):
                    self.ranges = False
                    raise RetryableError(f"{self.url} answered the bytes from {got}, not from {start}")
            elif status == 416 and asked is not None:
                self.ranges = False
                raise RetryableError(f"{self.url} answered HTTP 416 to a range request")
            elif status != 200:
                raise RetryableError(f"{self.url} answered HTTP {status}")
            self.content_type = stream.header("content-type") or ""
            if self.size is None:
                self.data = await _read_body(stream, self._network_piece)
                self.size = platform.byte_length(self.data)
                self.spans, self.have = [(0, self.size)], [True]
                self.counts.downloaded += 1
                return None
            if status == 200 and asked is not None:  # the server ignores Range: the whole file comes
                self.ranges = False
                asked = None
            if asked is None:
                start, stop, k = 0, self.size, 0
            return await self._fill(stream, start, stop, k, whole=asked is None)
        finally:
            await stream.close()

    async def _network_piece(self, loaded: int) -> None:
        self.counts.from_network = loaded
        await self._progress(loaded)

    async def _fill(self, stream, start: int, stop: int, k: int, whole: bool) -> str | None:
        pos, extra = start, 0
        while whole or pos < stop:
            piece = await stream.read()
            if piece is None:
                break
            n = platform.byte_length(piece)
            self.counts.from_network += n
            room = max(0, min(n, self.size - pos))
            if room < n:
                extra += n - room
            if room:
                platform.copy_into(self.data, pos, platform.byte_view(piece, 0, room) if room < n else piece)
                pos += room
            while k < len(self.spans) and pos >= self.spans[k][1]:
                if not self.have[k]:
                    self.have[k] = True
                    self.counts.downloaded += 1
                    await self.on_chunk(k)
                k += 1
            partial = pos - self.spans[k][0] if k < len(self.spans) and not self.have[k] else 0
            await self._progress(self._loaded(partial))
        if extra:
            return f"{pos + extra} bytes instead of {self.size}"
        if pos < stop:  # the body ended, complete by its own length, before the file did
            return f"{pos} bytes instead of {self.size}" if start == 0 else \
                f"the bytes from {start} ended at {pos} instead of {stop}"
        return None


async def fetch_file(url: str, entry: dict, *, path: str, model: str, events, store=None, meta: dict | None = None,
                     warnings: list | None = None, check=None, described: str = "the file the manifest describes"):
    """The checked bytes of ``url`` (``path`` of ``model``, manifest ``entry``), from ``store`` and the
    network (see the module docstring); ``meta`` is stored with it, ``warnings`` gets what went wrong
    on the way. ``await check(data, content_type)`` (what is wrong, or None) replaces the size and sha256
    check of a download (for a file without a sha256); ``described`` names what the bytes should be in
    an ``IntegrityError``. A JS ``Uint8Array`` in the browser, bytes on CPython."""
    warnings = [] if warnings is None else warnings
    meta = dict(meta or {})
    size, sha = entry.get("size"), entry.get("sha256")

    async def warn(msg: str) -> None:
        warnings.append(msg)
        await events.warning(msg, path)

    stored = None
    if store is not None:
        if size is not None and sha is not None:
            try:
                stored = await store.read(url, size, sha)
            except Exception as e:  # a broken cache must not break loading
                await events.warning(f"could not read the cached copy of {path}: {e}", path)
        else:  # nothing to check a stored copy against: the download replaces it
            try:
                await store.delete(url)
            except Exception:
                pass
    if stored is not None:
        n = len(stored.spans)
        for k, problem in stored.problems:
            if k is None:
                await warn(f"cached copy of {path} is corrupted ({problem}): evicted, downloading it again")
            else:
                await warn(f"cached copy of {path} is corrupted (chunk {k + 1} of {n}: {problem}): that chunk "
                           f"was evicted, fetching it again")
        if stored.complete:
            problem = None if stored.file_checked else await verify(stored.data, entry)
            counts = _Counts(n)
            counts.verified = stored.verified
            if problem is None:
                await events.file_event("progress", path, size, size, True)
                await events.file_event("done", path, size, size, True, chunks=counts.chunks())
                return platform.finish_bytes(stored.data)
            await store.delete(url)
            await warn(f"cached copy of {path} is corrupted ({problem}): evicted, downloading it again")
            stored = None

    for again in (False, True):
        if size is None:
            spans = [(0, None)]
        elif stored is not None:
            spans = stored.spans
        else:
            spans = store.spans(size) if store is not None else [(0, size)]
        counts = _Counts(len(spans))
        have = list(stored.have) if stored is not None else [False] * len(spans)
        data = stored.data if stored is not None else None
        if data is None and size is not None:
            data = platform.alloc_bytes(size)
        if stored is not None:
            counts.from_cache, counts.verified, counts.bad = (stored.stored_bytes, stored.verified,
                                                              len(stored.problems))
        writer = (store.writer(url, size, spans, {**meta, "sha256": sha}, stored.sha256 if stored else None)
                  if store is not None and len(spans) > 1 else None)
        state = {"pending": None, "error": None}

        async def store_chunk(k, view, writer=writer, state=state):
            try:
                await writer.put_chunk(k, view, await platform.sha256_hex(view))
            except Exception as e:
                state["error"] = e

        async def on_chunk(k, writer=writer, state=state, spans=spans):
            if writer is None or state["error"] is not None:
                return
            if state["pending"] is not None:
                await state["pending"]
            state["pending"] = asyncio.ensure_future(store_chunk(k, platform.byte_view(dl.data, *spans[k])))

        dl = _Download(url, path=path, model=model, events=events, size=size, spans=spans, have=have, data=data,
                       counts=counts, on_chunk=on_chunk)
        await events.file_event("download", path, counts.from_cache, size or 0, False,
                                from_cache=counts.from_cache)
        try:
            problem = await dl.run()
        except FileNotFoundError:
            if writer is not None:
                await _quietly(writer.discard())
            raise
        finally:
            if state["pending"] is not None:
                await state["pending"]
        data, size = dl.data, dl.size
        if problem is None:
            problem = await (check(data, dl.content_type) if check is not None else verify(data, entry))
        if problem is None:
            break
        if writer is not None:
            await _quietly(writer.discard())
        if counts.from_cache and not again:  # a stored chunk was not the file's: everything from scratch
            await warn(f"cached copy of {path} is corrupted ({problem}): evicted, downloading it again")
            stored = None
            continue
        what = (" - the server answered with an HTML page (wrong host or URL template?)"
                if looks_html(data, dl.content_type) else "")
        raise IntegrityError(
            f"{model}: {path} downloaded from {url} is not {described}: {problem} "
            f"(content-type {dl.content_type or 'unknown'}){what}; it was not cached")

    if entry.get("sha256") is None:  # a discovered repo's file: what its first download got is trusted
        entry["sha256"] = await platform.sha256_hex(data)
    if entry.get("size") is None:
        entry["size"] = size
    meta["sha256"] = entry["sha256"]
    error = state["error"]
    if store is not None and error is None:
        try:
            if writer is not None:
                await writer.commit(entry["sha256"])
            else:
                await store.put(url, data, meta)
        except Exception as e:
            error = e
    if error is not None:
        if writer is not None:
            await _quietly(writer.discard())
        if isinstance(error, QuotaError):
            await warn(f"storage quota exceeded (QuotaExceededError: {error}): {path} is used without caching")
        else:
            await warn(f"could not cache {path} ({error}): it is used without caching")
    await events.file_event("done", path, size, size, False, from_cache=counts.from_cache,
                            from_network=counts.from_network, chunks=counts.chunks())
    return platform.finish_bytes(data)


async def _quietly(aw) -> None:
    """Await ``aw``, ignoring its errors (cleaning up after another error)."""
    try:
        await aw
    except Exception:
        pass


async def _get(url: str, *, no_cache: bool = False):
    """``(status, content_type, body)`` of a GET, the body only for HTTP 200."""
    stream = await platform.open_stream(url, no_cache=no_cache)
    try:
        ctype = stream.header("content-type") or ""
        if stream.status != 200:
            return stream.status, ctype, None
        return 200, ctype, await _read_body(stream)
    finally:
        await stream.close()


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
            status, ctype, data = await _get(url, no_cache=True)
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

