"""What the demo page asks about the browser it runs in, whichever model it shows: the device and the
model cache. Called in the worker through ``WebformersClient.runPython`` (``callPage`` in web/ui/util.js);
the same functions run on CPython.

    await browser.environment()                          -> adapter, backend, devices, dtype registry
    await browser.cache_list()                           -> cached models/variants + storage estimate
    await browser.cache_delete(model_id, dtype=None, module=None) -> bytes freed + the new listing
"""
from __future__ import annotations

from ..dtypes import DEVICES, DTYPES
from ..runtime import backend
from ..store import cached_models, delete_cached, storage_estimate

__all__ = ["environment", "cache_list", "cache_delete"]


async def environment() -> dict:
    """The adapter (WebGPU features, fallback adapter?), cross-origin isolation, devices and dtypes."""
    adapter = await backend.adapter_info()
    return {
        "adapter": adapter,
        "backend": backend.backend_name,
        "devices": list(DEVICES),
        "dtypes": {n: {"bits": d.bits, "description": d.description, "requires": sorted(d.requires),
                       "fallback": d.fallback, "native_on": list(d.native_on)} for n, d in DTYPES.items()},
    }


async def cache_list() -> dict:
    """Cached models with their variants and sizes, and the storage estimate (usage, quota, persisted)."""
    return {"models": await cached_models(), "storage": await storage_estimate()}


async def cache_delete(model_id: str, dtype: str | None = None, module: str | None = None) -> dict:
    """Delete one cached variant (``dtype``, optionally of one ``module``) or the whole model."""
    if not model_id or not isinstance(model_id, str):
        raise ValueError(f"model_id must be a repo id like 'org/name', got {model_id!r}")
    freed = await delete_cached(model_id, dtype=dtype, module=module)
    return {"freed": freed, **(await cache_list())}
