"""Where a repo's files are kept, and managing them.

The store comes from the platform layer: in the browser the Cache API cache ``CACHE_NAME``, keyed by the
full file URL, each entry's model / revision / host / file / module / dtype in its metadata; on CPython a
directory (``cache_dir()``: ``$WEBFORMERS_CACHE`` or ``~/.cache/webformers/hub``). ``await open_cache()``
-> ``(store, None)`` or ``(None, why there is no cache)``; the store is a ``ChunkedStore``
(``store.chunked``): a file larger than ``CHUNK_BYTES`` (None: the platform store's ``chunk_bytes`` -
64 MB in the browser, whose Cache API refuses entries of 256 MB; no limit on CPython) is kept as chunks.

Management: ``cached_models()``, ``delete_cached(model, dtype=, module=, revision=)``,
``storage_estimate()``, ``request_persistence()``.
"""
from __future__ import annotations

from .. import platform
from ..dtypes import get_dtype
from ..platform import cache_dir
from .chunked import ChunkedStore

__all__ = ["CACHE_NAME", "CHUNK_BYTES", "cache_dir", "open_cache", "cached_models", "delete_cached",
           "storage_estimate", "request_persistence"]

CACHE_NAME = "webformers-hub-v1"
#: the size of a stored chunk (files up to it are one entry); None: the platform store's ``chunk_bytes``
CHUNK_BYTES: int | None = None


async def open_cache():
    """``(ChunkedStore, None)``, or ``(None, reason)`` when files cannot be cached here."""
    store, reason = await platform.open_store(CACHE_NAME)
    if store is None:
        return None, reason
    return ChunkedStore(store, CHUNK_BYTES if CHUNK_BYTES is not None else store.chunk_bytes), None


def _variant_key(meta: dict):
    return meta.get("module"), meta.get("dtype")


async def cached_models() -> list[dict]:
    """The cached models: ``[{"model", "revision", "host", "bytes", "files", "variants": [{"module",
    "dtype", "bytes", "files"}], "other_bytes"}]`` (``other_bytes``: config, tokenizer, manifest...; a
    download that broke off counts with the bytes it stored)."""
    store, _ = await open_cache()
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
    store, _ = await open_cache()
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
    store, _ = await open_cache()
    cache_bytes = await store.usage() if store is not None else 0
    return {**await platform.estimate_storage(cache_bytes), "cache_bytes": cache_bytes}


async def request_persistence() -> bool:
    """Ask the browser to keep the cache under storage pressure (``navigator.storage.persist``). In a worker,
    where ``persist`` does not exist, this reports ``persisted()`` - the page must ask. CPython: True."""
    return await platform.persist_storage()
