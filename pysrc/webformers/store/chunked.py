"""Files in an entry store, a large one as chunks: ``ChunkedStore(store, chunk_bytes)``.

A platform store (``platform.open_store``) keeps entries by URL. A file of up to ``chunk_bytes`` bytes is
one entry at its URL. A larger one is kept as

- chunks: ``chunk_url(url, k)`` holds the bytes ``[k * chunk_bytes, (k + 1) * chunk_bytes)`` (metadata:
  ``chunk_of`` - the file URL -, ``offset`` and the chunk's ``sha256``);
- an index at ``url``: JSON ``{"format", "size", "sha256", "complete", "chunks": [{"url", "offset",
  "size", "sha256"}]}`` (a chunk's ``sha256`` is null while it is not stored), metadata: the file's
  (model, revision, host, file, module, dtype, sha256) plus ``layout`` ("chunked"), ``file_size``,
  ``chunk_bytes``, ``complete`` and ``stored`` (bytes of the stored chunks).

A download writes the index as it stores each chunk (``ChunkWriter.put_chunk``), so one that broke off -
even on a page that was closed - leaves the chunks it got; ``commit`` marks the index complete once the
whole file matched its sha256. ``read`` gives back what is stored, every chunk checked against its
sha256 (a bad or missing one is evicted), in one buffer of the file's size with each chunk copied into
its place, and says which chunks are missing, so they can be fetched alone. The onnxruntime worker
(``webformers/assets/ort-host.js``, warm start) reads complete indexes the same way.

``get``, ``put``, ``delete``, ``entries`` and ``usage`` work on whole files, like a platform store's;
``entries`` lists a file whose chunks are stored without a complete index with ``partial`` True, its
``size`` the bytes stored and its ``sha256`` None.
"""
from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field

from .. import platform
from .integrity import verify

__all__ = ["ChunkedStore", "ChunkWriter", "Stored", "chunk_url", "spans_of", "FORMAT", "LAYOUT"]

FORMAT = "webformers-chunked/1"
#: ``layout`` in the metadata of an index entry
LAYOUT = "chunked"


def chunk_url(url: str, k: int) -> str:
    """Where chunk ``k`` of the file at ``url`` is stored."""
    return f"{url}{'&' if '?' in url else '?'}webformers-chunk={k}"


def spans_of(size: int, chunk_bytes: int | None) -> list[tuple[int, int]]:
    """The chunks of a ``size``-byte file as ``(start, end)``: one span when it fits one entry."""
    if not chunk_bytes or size <= chunk_bytes:
        return [(0, size)]
    return [(o, min(size, o + chunk_bytes)) for o in range(0, size, chunk_bytes)]


@dataclass
class Stored:
    """What ``ChunkedStore.read`` found of a file."""
    #: the file's chunks as ``(start, end)`` (one span for a file stored whole)
    spans: list
    #: per chunk: whether it is in ``data``, checked
    have: list
    #: per chunk: its sha256 (None where it is missing)
    sha256: list
    #: a buffer of the file's size holding the chunks of ``have`` (None when it holds none)
    data: object = None
    #: ``(chunk number, what was wrong)`` of every chunk that failed its check and was evicted
    problems: list = field(default_factory=list)
    #: chunks read and matching their sha256
    verified: int = 0
    #: whether the whole file's sha256 was checked as well (a file stored whole)
    file_checked: bool = False

    @property
    def complete(self) -> bool:
        return all(self.have)

    @property
    def stored_bytes(self) -> int:
        return sum(end - start for (start, end), h in zip(self.spans, self.have) if h)


class ChunkWriter:
    """Stores the chunks of one file as a download gets them and keeps its index current."""

    def __init__(self, chunked: "ChunkedStore", url: str, size: int, spans, sha256s, meta: dict):
        self.chunked = chunked
        self.url = url
        self.size = size
        self.spans = list(spans)
        #: per chunk: the sha256 of the stored chunk, None while it is not stored
        self.sha256s = list(sha256s)
        self.meta = dict(meta)

    def _index(self, complete: bool) -> tuple[bytes, dict]:
        """The index entry: (body, metadata)."""
        chunks = [{"url": chunk_url(self.url, k), "offset": s, "size": e - s, "sha256": h}
                  for k, ((s, e), h) in enumerate(zip(self.spans, self.sha256s))]
        body = {"format": FORMAT, "size": self.size, "sha256": self.meta.get("sha256"), "complete": complete,
                "chunks": chunks}
        stored = sum(c["size"] for c in chunks if c["sha256"] is not None)
        meta = {**self.meta, "layout": LAYOUT, "file_size": self.size, "complete": complete, "stored": stored,
                "chunk_bytes": self.spans[0][1] - self.spans[0][0]}
        return json.dumps(body).encode(), meta

    async def put_chunk(self, k: int, data, sha256: str) -> None:
        """Store chunk ``k`` (``data``, whose sha256 is ``sha256``), then list it in the index."""
        start, _ = self.spans[k]
        store = self.chunked.store
        await store.put(chunk_url(self.url, k), data, {"chunk_of": self.url, "offset": start, "sha256": sha256})
        self.sha256s[k] = sha256
        await self.save()

    async def save(self) -> None:
        """Write the index as it stands (not complete)."""
        await self.chunked.store.put(self.url, *self._index(False))

    async def commit(self, sha256: str) -> None:
        """Mark the file complete: every chunk stored, the whole file's sha256 is ``sha256``."""
        self.meta["sha256"] = sha256
        await self.chunked.store.put(self.url, *self._index(True))

    async def discard(self) -> None:
        """Remove the index and every chunk."""
        await self.chunked.delete(self.url)


class ChunkedStore:
    """Files in the platform store ``store``; one larger than ``chunk_bytes`` as chunks (see the module
    docstring). ``chunk_bytes`` None: every file is one entry."""

    def __init__(self, store, chunk_bytes: int | None):
        if chunk_bytes is not None and (not isinstance(chunk_bytes, int) or isinstance(chunk_bytes, bool)
                                        or chunk_bytes <= 0):
            raise ValueError(f"chunk_bytes must be a positive number of bytes or None, got {chunk_bytes!r}")
        self.store = store
        self.chunk_bytes = chunk_bytes

    @property
    def cache_name(self) -> str | None:
        """The browser Cache API cache holding the files (None for a directory)."""
        return self.store.cache_name

    def spans(self, size: int) -> list[tuple[int, int]]:
        """The chunks a new copy of a ``size``-byte file is stored as."""
        return spans_of(size, self.chunk_bytes)

    def writer(self, url: str, size: int, spans, meta: dict, sha256s=None) -> ChunkWriter:
        """A ``ChunkWriter`` for the file at ``url`` (``sha256s``: of the chunks already stored)."""
        return ChunkWriter(self, url, size, spans, sha256s or [None] * len(spans), meta)

    async def _lookup(self, url: str):
        """``(meta, index)``: ``(None, None)`` when nothing is stored at ``url``, ``(meta, None)`` for a file
        stored whole, the index as well for a chunked file (``{}`` when it is unreadable)."""
        meta = await self.store.meta(url)
        if meta is None or meta.get("layout") != LAYOUT:
            return meta, None
        body = await self.store.get(url)
        try:
            index = json.loads(platform.decode_text(body)) if body is not None else None
        except ValueError:
            index = None
        if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("chunks"), list):
            index = {}
        return meta, index

    async def read(self, url: str, size: int, sha256: str) -> Stored | None:
        """What is stored of the file at ``url`` (``size`` bytes, sha256 ``sha256``), every chunk checked
        (see ``Stored``); None when nothing of this file is stored (a stored copy of another version of
        it is removed)."""
        meta, index = await self._lookup(url)
        if meta is None:
            return None
        if index is None:  # stored whole: its check is the file's
            data = await self.store.get(url)
            if data is None:
                return None
            problem = await verify(data, {"size": size, "sha256": sha256})
            if problem is not None:
                await self.store.delete(url)
                return Stored([(0, size)], [False], [None], problems=[(None, problem)])
            return Stored([(0, size)], [True], [sha256], data=data, verified=1, file_checked=True)
        if index.get("size") != size or index.get("sha256") not in (sha256, None) or not index.get("chunks"):
            await self.delete(url)  # another version of the file, or an unreadable index
            return None
        chunks = index["chunks"]
        spans = [(c["offset"], c["offset"] + c["size"]) for c in chunks]
        out = Stored(spans, [False] * len(chunks), [None] * len(chunks))
        todo = [(k, c) for k, c in enumerate(chunks) if c.get("sha256") is not None]
        # the next chunk is read while this one is checked and copied
        ahead = asyncio.ensure_future(self.store.get(todo[0][1]["url"])) if todo else None
        for i, (k, c) in enumerate(todo):
            part = await ahead
            ahead = asyncio.ensure_future(self.store.get(todo[i + 1][1]["url"])) if i + 1 < len(todo) else None
            problem = "missing" if part is None else await verify(part, c)
            if problem is not None:
                await self.store.delete(c["url"])
                out.problems.append((k, problem))
                continue
            if out.data is None:
                out.data = platform.alloc_bytes(size)
            platform.copy_into(out.data, c["offset"], part)
            out.have[k], out.sha256[k] = True, c["sha256"]
            out.verified += 1
        if out.problems:  # the index no longer lists the evicted chunks
            file_meta = {k: v for k, v in meta.items()
                         if k not in ("layout", "file_size", "complete", "stored", "chunk_bytes", "url", "size")}
            file_meta["sha256"] = sha256
            await self.writer(url, size, spans, file_meta, out.sha256).save()
        return out

    async def meta(self, url: str) -> dict | None:
        """The metadata of the file stored at ``url`` (its index entry's for a chunked one), or None."""
        meta, _ = await self._lookup(url)
        return meta

    async def get(self, url: str):
        """The stored bytes of the file at ``url`` (every chunk checked), or None (also when a chunk is bad
        or missing)."""
        meta, index = await self._lookup(url)
        if meta is None:
            return None
        if index is None:
            return await self.store.get(url)
        if not index.get("complete"):
            return None
        stored = await self.read(url, index.get("size"), index.get("sha256"))
        return stored.data if stored is not None and stored.complete else None

    async def put(self, url: str, data, meta: dict) -> None:
        """Store the whole file ``data`` for ``url`` with ``meta``: one entry, or chunks and an index."""
        size = platform.byte_length(data)
        spans = self.spans(size)
        if len(spans) == 1:
            await self.store.put(url, data, meta)
            return
        w = self.writer(url, size, spans, meta)
        try:
            for k, (start, end) in enumerate(spans):
                view = platform.byte_view(data, start, end)
                await w.put_chunk(k, view, await platform.sha256_hex(view))
            await w.commit(meta.get("sha256") or await platform.sha256_hex(data))
        except BaseException:
            await w.discard()
            raise

    async def delete(self, url: str) -> int:
        """Remove the file at ``url`` (its chunks too); the bytes freed."""
        meta, index = await self._lookup(url)
        if meta is None:
            return 0
        if index is None:
            return await self.store.delete(url)
        size, step = meta.get("file_size"), meta.get("chunk_bytes")
        urls = {c["url"] for c in index.get("chunks", []) if isinstance(c, dict) and "url" in c}
        if isinstance(size, int) and isinstance(step, int) and step > 0:
            urls.update(chunk_url(url, k) for k in range(math.ceil(size / step)))
        freed = 0
        for u in sorted(urls):
            freed += await self.store.delete(u)
        await self.store.delete(url)
        return freed

    async def entries(self) -> list[dict]:
        """The metadata of every stored file (with ``url`` and ``size``; see the module docstring)."""
        out = []
        for m in await self.store.entries():
            if "chunk_of" in m:
                continue
            if m.get("layout") == LAYOUT:
                complete = bool(m.get("complete"))
                e = {k: v for k, v in m.items() if k not in ("layout", "file_size", "complete", "stored", "chunk_bytes")}
                e["size"] = int(m.get("file_size", 0)) if complete else int(m.get("stored", 0))
                if not complete:
                    e["partial"], e["sha256"] = True, None
                out.append(e)
            else:
                out.append(m)
        return out

    async def usage(self) -> int:
        """Bytes the store takes."""
        return await self.store.usage()
