"""A repo without ``onnx/manifest.json`` (an onnx-community / transformers.js export): a manifest of the
same shape, made from what the host shows.

``await discover(model=, revision=, host=, url_of=, store=, events=, config=, config_entry=)`` ->
``(Manifest, notes)``. The modules come from config.json (``layout.repo_modules``), the defaults from its
``transformers.js_config`` (``layout.config_defaults``). Where the files come from
(``Manifest.discovered``):

- ``"directory"``: a local repo directory, walked (sizes from the file system);
- ``"listing"``: ``files.json`` in the repo (``LISTING_PATH``, fetched network-first): a JSON list of
  paths or of ``{"path", "size", "sha256"}`` objects (or ``{"files": [...]}``); the Hugging Face hub's
  tree answer (``{"type", "path", "size", "lfs": {"oid"}}``) works as is;
- ``"probe"``: otherwise, as transformers.js' ``get_available_dtypes`` does: a one-byte range request
  (``platform.probe_url``) for ``onnx/{module}{suffix}.onnx`` of every module and dtype; the external
  data files are the ones ``use_external_data_format`` names, or, when the config does not say,
  ``.onnx_data``, ``.onnx_data_1``, ... while they exist; an HTML answer counts as missing (a site that
  serves its index page for every path);
- ``"cache"``: probing failed on the network: the files this store cached earlier.

Trusted sha256: ``ModelRepo`` records a file's sha256 at its first download in the cached entry's
metadata; the entries the store holds for this repo give them back here, so every later read is checked
against them. A cached file whose size or ETag on the server has changed since is not trusted (it is
downloaded again; a note says so). A listing's sha256 is trusted from the start; config.json's comes
from the copy just fetched (``config_entry``).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

from .. import platform
from ..dtypes import CPU_MATMUL_ON_WEBGPU, DTYPES, onnx_file
from ..platform import RetryableError
from .fetch import RETRIES, fetch_network_first
from .integrity import looks_html
from .layout import MAX_DATA_CHUNKS, config_defaults, data_chunks, data_files, group_variants, repo_modules
from .manifest import FORMAT, MANIFEST_PATH, Manifest
from .urls import is_http, local_path

__all__ = ["LISTING_PATH", "discover", "parse_listing"]

#: where a host may list a repo's files
LISTING_PATH = "files.json"


def parse_listing(data, what: str = LISTING_PATH) -> dict[str, dict]:
    """``{path: {"size", "sha256"}}`` (None where the listing does not say) from a listing's JSON."""
    items = data.get("files") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise ValueError(f"{what} must be a JSON list of paths or of {{'path', 'size', 'sha256'}} objects "
                         f"(or {{'files': [...]}}), got {type(items).__name__}")
    out: dict[str, dict] = {}
    for item in items:
        if isinstance(item, str):
            out[item] = {"size": None, "sha256": None}
            continue
        if not isinstance(item, Mapping) or not isinstance(item.get("path"), str):
            raise ValueError(f"{what}: every item must be a path or an object with a 'path', got {item!r}")
        if item.get("type", "file") != "file":
            continue
        size = item.get("size")
        sha = item.get("sha256") or (item.get("lfs") or {}).get("oid")
        ok_sha = isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha.lower())
        out[item["path"].lstrip("/")] = {"size": size if isinstance(size, int) and size >= 0 else None,
                                         "sha256": sha.lower() if ok_sha else None}
    return out


def _walk(root: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = {"size": p.stat().st_size, "sha256": None}
    return out


async def _probe(url: str):
    """``(size, etag)`` when ``url`` exists, None when it does not; ``RetryableError`` when the network
    fails ``RETRIES`` times (HTTP 5xx included)."""
    last = None
    for attempt in range(1, RETRIES + 1):
        try:
            status, size, ctype, etag = await platform.probe_url(url)
        except RetryableError as e:
            last = e
        else:
            if status < 500:
                return (size, etag) if status == 200 and not looks_html(b"", ctype) else None
            last = RetryableError(f"{url} answered HTTP {status}")
        if attempt < RETRIES:
            await asyncio.sleep(0.1 * attempt)
    raise last


async def _probe_data(url_of, path: str, module: str, config: dict) -> list[tuple[str, int | None, str | None]] | None:
    """The external data files of ``path`` as ``(file, size, etag)``; None when a file the config names
    is missing."""
    chunks = data_chunks(config, path, module)
    if chunks is not None:
        names = data_files(path, chunks)
        found = await asyncio.gather(*(_probe(url_of(n)) for n in names))
        if any(f is None for f in found):
            return None
        return [(n, *f) for n, f in zip(names, found)]
    out = []
    for n in data_files(path, MAX_DATA_CHUNKS):
        f = await _probe(url_of(n))
        if f is None:
            break
        out.append((n, *f))
    return out


async def _probe_files(url_of, modules, config, notes: list[str]) -> dict[str, dict]:
    candidates = [onnx_file(m, d) for m in modules for d in DTYPES]
    found = await asyncio.gather(*(_probe(url_of(p)) for p in candidates))
    mains = [(p, f) for p, f in zip(candidates, found) if f is not None]
    module_of = {onnx_file(m, d): m for m in modules for d in DTYPES}
    datas = await asyncio.gather(*(_probe_data(url_of, p, module_of[p], config) for p, _ in mains))
    files: dict[str, dict] = {}
    for (path, (size, etag)), data in zip(mains, datas):
        if data is None:
            notes.append(f"{path} left out: an external data file that transformers.js_config names is missing")
            continue
        files[path] = {"size": size, "sha256": None, "etag": etag}
        for name, dsize, detag in data:
            files[name] = {"size": dsize, "sha256": None, "etag": detag}
    return files


async def _records(store, model: str, revision: str, host: str) -> dict[str, dict]:
    """The metadata of this repo's cached files that carry a recorded sha256, by repo path."""
    if store is None:
        return {}
    try:
        metas = await store.entries()
    except Exception:  # a broken cache must not break loading
        return {}
    return {m["file"]: m for m in metas
            if m.get("model") == model and m.get("revision") == revision and m.get("host") == host
            and isinstance(m.get("file"), str) and isinstance(m.get("sha256"), str)}


def _trust_records(files: dict, records: dict, notes: list[str]) -> None:
    """Give the listed files without a sha256 the one their first download recorded, unless the file on
    the server changed since (size or ETag)."""
    for path, entry in files.items():
        rec = records.get(path)
        if rec is None or entry.get("sha256") is not None:
            continue
        size_changed = entry.get("size") is not None and rec.get("size") != entry["size"]
        etag_changed = bool(entry.get("etag") and rec.get("etag") and entry["etag"] != rec["etag"])
        if size_changed or etag_changed:
            notes.append(f"{path} changed on the server since it was cached: it is downloaded again")
            continue
        entry["sha256"] = rec["sha256"]
        if entry.get("size") is None:
            entry["size"] = rec.get("size")


async def discover(*, model: str, revision: str, host: str, url_of, store, events, config: dict,
                   config_entry: dict) -> tuple[Manifest, list[str]]:
    """The manifest of a repo without one (see the module docstring) and notes on what was left out."""
    modules = repo_modules(config)
    defaults, notes = config_defaults(config)
    records: dict[str, dict] = {}
    if not is_http(url_of("config.json")):
        source, files = "directory", _walk(local_path(url_of("config.json")).parent)
    else:
        records = await _records(store, model, revision, host)
        source, files = "listing", None
        listing_url = url_of(LISTING_PATH)
        try:
            text, _ = await fetch_network_first(
                listing_url, store, events, {"model": model, "revision": revision, "host": host,
                                             "file": LISTING_PATH}, f"{model}: {LISTING_PATH}", required=False)
        except (ValueError, FileNotFoundError) as e:  # e.g. an HTML page: the host has no listing
            notes.append(f"{LISTING_PATH} ignored: {e}")
            text = None
        if text is not None:
            files = parse_listing(json.loads(text), f"{model}: {listing_url}")
            unsized = [p for p in files if files[p]["size"] is None and p.startswith("onnx/")]
            try:
                sizes = await asyncio.gather(*(_probe(url_of(p)) for p in unsized))
                for p, found in zip(unsized, sizes):
                    if found is not None:
                        files[p].update(size=found[0], etag=found[1])
            except RetryableError as e:
                notes.append(f"the sizes {LISTING_PATH} leaves out could not be probed ({e})")
        else:
            source = "probe"
            try:
                files = await _probe_files(url_of, modules, config, notes)
            except RetryableError as e:
                if not records:
                    raise ConnectionError(f"{model}: the repo has no {MANIFEST_PATH} and its files could not be "
                                          f"probed ({e}); nothing of it is cached") from e
                notes.append(f"{model}: could not probe the repo's files ({e}): using the {len(records)} "
                             f"cached files")
                source = "cache"
                files = {p: {"size": r.get("size"), "sha256": r["sha256"], "etag": r.get("etag")}
                         for p, r in records.items()}
        if source == "probe":  # files probing does not look for (tokenizer, ...) that were read before
            for p, r in records.items():
                if r.get("module") is None:
                    files.setdefault(p, {"size": r.get("size"), "sha256": None, "etag": r.get("etag")})
        _trust_records(files, records, notes)
    files["config.json"] = dict(config_entry)
    mods: dict[str, dict] = {}
    for module, variants in group_variants(files, modules).items():
        for dtype, group in variants.items():
            unsized = [f for f in group if not isinstance(files[f].get("size"), int)]
            if unsized:
                notes.append(f"{module} {dtype} left out: the host did not say the size of {', '.join(unsized)}")
                continue
            for f in group:
                files[f].update(module=module, dtype=dtype)
            mods.setdefault(module, {})[dtype] = {
                "files": group, "bytes": sum(files[f]["size"] for f in group), "ops": [],
                "cpu_matmul_on_webgpu": dtype in CPU_MATMUL_ON_WEBGPU}
    if not mods:
        looked = ", ".join(f"onnx/{m}{{suffix}}.onnx" for m in modules)
        raise FileNotFoundError(
            f"{model}: the repo has no {MANIFEST_PATH} and no ONNX model files were found ({source}): looked for "
            f"{looked} with the suffixes {', '.join(repr(d.suffix) for d in DTYPES.values())}")
    data = {"format": FORMAT, "modules": mods, "files": files, "defaults": defaults, "discovered": source}
    return Manifest(data, repo=model), notes
