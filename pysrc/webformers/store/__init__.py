"""The model store: a model repo's files fetched, verified against its manifest and cached.

- ``repo``: ``ModelRepo`` (open a repo, verify every read, heal a bad cached copy, one download per URL);
- ``fetch``: getting a file's bytes from the store and the network - every chunk checked, a bad one
  fetched again alone (HTTP Range), downloads resumed from the last whole chunk, bounded retries
  (``RETRIES``), network-first JSON files, shared in-flight downloads;
- ``cache``: where files are kept (``CACHE_NAME``, ``cache_dir``, ``CHUNK_BYTES``) and managing them
  (``cached_models``, ``delete_cached``, ``storage_estimate``, ``request_persistence``);
- ``chunked``: a large file in the store as chunks plus an index (``ChunkedStore``);
- ``urls``: where files are (``resolve_url``, ``default_host``);
- ``integrity``: is a file the one the manifest describes (``IntegrityError``);
- ``events``: progress and warning events (``LoadEvents``, ``EVENT_KEYS``);
- ``manifest``: the ``onnx/manifest.json`` format (``Manifest``, ``MANIFEST_PATH``, ``REPORT_PATH``);
- ``discover``: the manifest of a repo without one (onnx-community / transformers.js exports), from a
  listing (``LISTING_PATH``), the directory or probes;
- ``layout``: the transformers.js repo layout (modules of a config, external data files,
  ``transformers.js_config`` defaults).

The platform layer (``webformers.platform``) provides the transports, stores and byte helpers.
"""
from .cache import (CACHE_NAME, cache_dir, cached_models, delete_cached, request_persistence,
                    storage_estimate)
from .discover import LISTING_PATH
from .events import EVENT_KEYS, LoadEvents
from .fetch import RETRIES
from .integrity import IntegrityError
from .manifest import MANIFEST_PATH, REPORT_PATH, Manifest
from .repo import ModelRepo
from .urls import default_host, resolve_url

__all__ = ["ModelRepo", "IntegrityError", "cached_models", "delete_cached", "storage_estimate",
           "request_persistence", "resolve_url", "default_host", "cache_dir", "CACHE_NAME", "RETRIES",
           "REPORT_PATH", "MANIFEST_PATH", "LISTING_PATH", "Manifest", "LoadEvents", "EVENT_KEYS"]
