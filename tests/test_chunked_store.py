"""Large files in the store as chunks (``store.chunked``), resumed downloads and chunk-wise repair.

The browser's Cache API refuses an entry of 256 MB or more, so a file above the chunk size is stored as
chunks plus an index; each chunk is checked against its sha256 on every read, a bad one is fetched again
alone with an HTTP Range request, and a download that breaks off resumes from the last whole chunk.
The tests set a small chunk size (``store.cache.CHUNK_BYTES``) on the tiny demo model, and run the real
chunk size once on SmolLM2's fp32 file (538 MB). The site server (``buildtools/server.py``) logs every
request with its Range header and breaks answers off on demand (``server.fail_after``).
"""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import SITE, PageSession, run_async, run_py

TINY = "webformers/tiny-random-llama"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
FILE = "onnx/model.onnx"
PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203]
MB = 1 << 20


def _manifest_entry(model, path=FILE):
    return json.loads((SITE / "models" / model / "onnx" / "manifest.json").read_text())["files"][path]


def _reference(model, n):
    from webformers.toolchain import reference_greedy
    return [int(t) for t in reference_greedy(SITE / "models" / model, "fp32", PROMPT, n)][-n:]


# ------------------------------------------------------------------------------- CPython (DirStore)

@pytest.fixture
def cpython_store(tmp_path, monkeypatch):
    """A site server over a copy of the tiny model (CPython side), a fresh cache directory, 1 MB chunks."""
    from buildtools.server import SiteServer
    from webformers.store import cache

    repo = tmp_path / "site" / "models" / TINY
    shutil.copytree(SITE / "models" / TINY, repo)
    monkeypatch.setenv("WEBFORMERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "CHUNK_BYTES", MB)
    server = SiteServer(tmp_path / "site").start()
    yield server, repo
    server.stop()


def _open_and_read(server, events=None):
    from webformers.store import ModelRepo

    async def go():
        repo = await ModelRepo.open(TINY, host=server.url + "/models",
                                    progress_callback=events.append if events is not None else None)
        return await repo.file(FILE), repo
    return run_async(go())


def test_cpython_chunks_resume_and_refetch_one_chunk(cpython_store):
    import hashlib

    from webformers.platform import DirStore
    from webformers.store import cache_dir, cached_models
    from webformers.store.chunked import chunk_url

    server, repo_dir = cpython_store
    url_path = f"/models/{TINY}/{FILE}"
    entry = _manifest_entry(TINY)
    n_chunks = -(-entry["size"] // MB)
    # the first answer breaks off after 3.5 chunks: the retry asks for the rest from chunk 3
    server.fail_after(url_path, 3 * MB + MB // 2)
    events = []
    data, repo = _open_and_read(server, events)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert [r["range"] for r in server.requests_for(url_path)] == [None, f"bytes={3 * MB}-{entry['size'] - 1}"]
    assert any("broke off" in e["message"] and "retrying" in e["message"] for e in events if e["status"] == "warning")
    (done,) = [e for e in events if e["status"] == "done" and e["file"] == FILE]
    assert done["chunks"] == {"count": n_chunks, "verified": 0, "bad": 0, "downloaded": n_chunks}
    assert done["from_network"] == entry["size"] + MB // 2 and done["from_cache"] == 0
    (model,) = [m for m in run_async(cached_models()) if m["model"] == TINY]
    assert model["variants"] == [{"module": "model", "dtype": "fp32", "bytes": entry["size"], "files": 1}]

    # a chunk damaged on disk: only that chunk is fetched again
    data_p, _ = DirStore(cache_dir()).paths(chunk_url(repo.url(FILE), 4))
    bad = bytearray(data_p.read_bytes())
    bad[7] ^= 0xFF
    data_p.write_bytes(bytes(bad))
    n = len(server.requests_for(url_path))
    events = []
    data, _ = _open_and_read(server, events)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert [r["range"] for r in server.requests_for(url_path)[n:]] == [f"bytes={4 * MB}-{5 * MB - 1}"]
    assert any("chunk 5 of" in e["message"] and "corrupted" in e["message"] for e in events
               if e["status"] == "warning")
    (done,) = [e for e in events if e["status"] == "done" and e["file"] == FILE]
    assert done["chunks"] == {"count": n_chunks, "verified": n_chunks - 1, "bad": 1, "downloaded": 1}
    assert done["from_network"] == MB and done["from_cache"] == entry["size"] - MB


def test_cpython_download_that_gave_up_resumes_in_a_later_load(cpython_store):
    import hashlib

    from webformers.store import RETRIES, cached_models

    server, _ = cpython_store
    url_path = f"/models/{TINY}/{FILE}"
    entry = _manifest_entry(TINY)
    server.fail_after(url_path, 2 * MB + 10)        # chunks 0 and 1 arrive
    server.fail_after(url_path, 100, times=RETRIES - 1)  # then tries that get no new chunk
    with pytest.raises(ConnectionError, match=f"failed {RETRIES} times"):
        _open_and_read(server)
    (partial,) = [m for m in run_async(cached_models()) if m["model"] == TINY]
    assert partial["variants"][0]["bytes"] == 2 * MB  # the two chunks it got are kept
    n = len(server.requests_for(url_path))
    events = []
    data, _ = _open_and_read(server, events)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert [r["range"] for r in server.requests_for(url_path)[n:]] == [f"bytes={2 * MB}-{entry['size'] - 1}"]
    (done,) = [e for e in events if e["status"] == "done" and e["file"] == FILE]
    assert done["from_cache"] == 2 * MB and done["chunks"]["verified"] == 2


def test_cpython_server_without_ranges_and_quota(cpython_store, monkeypatch):
    """A server that ignores Range sends the whole file again (200); a full disk while storing a chunk: a
    warning, the file is used, nothing of it stays cached."""
    import hashlib

    from webformers.platform import DirStore, QuotaError
    from webformers.store import cached_models

    server, _ = cpython_store
    url_path = f"/models/{TINY}/{FILE}"
    entry = _manifest_entry(TINY)
    real_get = server.RequestHandlerClass.do_GET

    def no_ranges(handler):
        if "Range" in handler.headers:
            del handler.headers["Range"]
        return real_get(handler)
    monkeypatch.setattr(server.RequestHandlerClass, "do_GET", no_ranges)
    server.fail_after(url_path, 3 * MB + 5)
    data, _ = _open_and_read(server)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(server.requests_for(url_path)) == 2

    # a full disk on the third chunk
    from webformers.store import delete_cached
    run_async(delete_cached(TINY))
    real_put = DirStore.put

    async def put(self, url, data, meta):
        if "webformers-chunk=2" in url:
            raise QuotaError("QuotaExceededError: the disk is full")
        return await real_put(self, url, data, meta)
    monkeypatch.setattr(DirStore, "put", put)
    events = []
    data, _ = _open_and_read(server, events)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert any("QuotaExceededError" in e["message"] and e.get("file") == FILE for e in events
               if e["status"] == "warning")
    assert [m for m in run_async(cached_models()) if m["model"] == TINY and m["variants"]] == []


# ----------------------------------------------------------------------------------------- browser

def _load_py(model, chunk_bytes=None, n=8):
    set_chunks = f"cache.CHUNK_BYTES = {chunk_bytes!r}\n" if chunk_bytes else ""
    return f"""
import json, time
from webformers import AutoModelForCausalLM
from webformers.store import cache
{set_chunks}events = []
t0 = time.perf_counter()
m = await AutoModelForCausalLM.from_pretrained({model!r}, dtype="fp32", device="wasm", progress_callback=events.append)
load_s = time.perf_counter() - t0
out = await m.generate({PROMPT!r}, max_new_tokens={n}, eos_token_id=None)
r = {{"ids": [int(x) for x in out[0]][-{n}:], "timings": dict(m.load_timings), "warnings": [str(w) for w in m.warnings],
      "load_s": round(load_s, 2),
      "done": [e for e in events if e["status"] == "done" and e["file"] == {FILE!r}],
      "warning_events": [e["message"] for e in events if e["status"] == "warning"]}}
m.dispose()
json.dumps(r)
"""


@pytest.fixture
def ctx(browser):
    """A fresh browser context: its own (empty) Cache API."""
    c = browser.new_context()
    yield c
    c.close()


def _page(browser, server, ctx):
    """A booted page in ``ctx`` (close it with ``.page.close()``: ``PageSession.close`` closes ``ctx``)."""
    return PageSession(browser, server, context=ctx)


def _chunk_keys(page, file):
    return page.evaluate("""async (file) => {
        const c = await caches.open("webformers-hub-v1");
        return (await c.keys()).map((r) => r.url).filter((u) => u.includes(file)); }""", file)


@pytest.mark.browser
def test_corrupted_chunk_is_refetched_alone(browser, server, ctx):
    url_path = f"/models/{TINY}/{FILE}"
    entry = _manifest_entry(TINY)
    n_chunks = -(-entry["size"] // MB)
    ref = _reference(TINY, 8)
    page = _page(browser, server, ctx)
    first = json.loads(run_py(page, _load_py(TINY, MB)))
    assert first["ids"] == ref
    keys = _chunk_keys(page, FILE)
    assert len(keys) == n_chunks + 1  # the index and every chunk
    # damage chunk 3 in the Cache API, keeping its headers
    damaged = page.evaluate("""async (url) => {
        const c = await caches.open("webformers-hub-v1");
        const resp = await c.match(url);
        const bytes = new Uint8Array(await resp.arrayBuffer());
        bytes[bytes.length >> 1] ^= 0xff;
        await c.put(url, new Response(bytes, { headers: resp.headers }));
        return url; }""", [k for k in keys if k.endswith("webformers-chunk=2")][0])
    assert damaged
    n = len(server.requests_for(url_path))
    again = json.loads(run_py(page, _load_py(TINY, MB)))
    assert again["ids"] == ref
    assert [r["range"] for r in server.requests_for(url_path)[n:]] == [f"bytes={2 * MB}-{3 * MB - 1}"]
    assert any("corrupted" in w and "chunk 3 of" in w for w in again["warnings"]), again["warnings"]
    (done,) = again["done"]
    assert done["chunks"] == {"count": n_chunks, "verified": n_chunks - 1, "bad": 1, "downloaded": 1}
    assert done["from_network"] == MB and done["from_cache"] == entry["size"] - MB
    page.page.close()


@pytest.mark.browser
def test_aborted_download_resumes_from_the_last_chunk(browser, server, ctx):
    from webformers.store import RETRIES

    url_path = f"/models/{TINY}/{FILE}"
    entry = _manifest_entry(TINY)
    ref = _reference(TINY, 8)
    page = _page(browser, server, ctx)
    # the first answer breaks off after 3.5 chunks: the retry asks for the rest from chunk 3's start
    n = len(server.requests_for(url_path))
    server.fail_after(url_path, 3 * MB + MB // 2)
    res = json.loads(run_py(page, _load_py(TINY, MB)))
    assert res["ids"] == ref
    ranges = [r["range"] for r in server.requests_for(url_path)[n:]]
    assert ranges == [None, f"bytes={3 * MB}-{entry['size'] - 1}"], ranges
    assert any("retrying" in w for w in res["warning_events"])
    (done,) = res["done"]
    assert done["chunks"]["downloaded"] == done["chunks"]["count"] and done["from_cache"] == 0
    run_py(page, f'from webformers.store import delete_cached\nawait delete_cached({TINY!r})')

    # a load that gives up keeps the chunks it got; the next page resumes from there
    server.fail_after(url_path, 2 * MB + 10)
    server.fail_after(url_path, 100, times=RETRIES - 1)
    err = run_py(page, f"""
from webformers import AutoModelForCausalLM
from webformers.store import cache
cache.CHUNK_BYTES = {MB}
try:
    await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype="fp32", device="wasm")
    err = None
except ConnectionError as e:
    err = str(e)
err
""")
    assert err and f"failed {RETRIES} times" in err
    page.page.close()
    page = _page(browser, server, ctx)  # a new page, same origin storage
    n = len(server.requests_for(url_path))
    res = json.loads(run_py(page, _load_py(TINY, MB)))
    assert res["ids"] == ref
    assert [r["range"] for r in server.requests_for(url_path)[n:]] == [f"bytes={2 * MB}-{entry['size'] - 1}"]
    (done,) = res["done"]
    assert done["from_cache"] == 2 * MB and done["chunks"]["verified"] == 2
    page.page.close()


@pytest.mark.browser
def test_warm_start_reads_chunked_files(browser, server, ctx):
    """The onnxruntime worker's warm start assembles a chunked file from the Cache API."""
    def client(warm):
        page = ctx.new_page()
        page.goto(server.url + "/site.json")
        boot = page.evaluate("""async (warm) => {
            const { WebformersClient } = await import("/wf-client.js");
            window.wf = new WebformersClient({ warmStart: warm });
            return await window.wf.ready; }""", warm)
        return page, boot

    ref = _reference(TINY, 8)
    page, _ = client(TINY)
    first = json.loads(run_py(page, _load_py(TINY, MB)))
    assert first["ids"] == ref and "warm_started" not in first["timings"]
    page.close()
    page, boot = client(TINY)
    assert boot["warm_start_modules"] == 1
    again = json.loads(run_py(page, _load_py(TINY, MB)))
    assert again["timings"].get("warm_started") == ["model"], again
    assert again["ids"] == ref
    page.close()


@pytest.mark.browser
@pytest.mark.slow
def test_smollm2_fp32_is_cached_as_chunks_and_loads_offline(browser, server, ctx):
    """538 MB (above the Cache API's 256 MB entry limit) at the real chunk size: the second load takes no
    model byte from the network and checks every chunk."""
    from webformers.store.cache import CHUNK_BYTES

    assert CHUNK_BYTES is None
    url_path = f"/models/{SMOL}/{FILE}"
    entry = _manifest_entry(SMOL)
    if not (SITE / "models" / SMOL / FILE).exists():
        pytest.fail(f"{SITE / 'models' / SMOL} is not built: run python3 build.py build")
    ref = _reference(SMOL, 4)
    page = _page(browser, server, ctx)
    chunk = run_py(page, "from webformers import platform\nplatform.CacheApiStore.chunk_bytes")
    n_chunks = -(-entry["size"] // chunk)
    first = json.loads(run_py(page, _load_py(SMOL, n=4), timeout_ms=900_000))
    assert first["ids"] == ref
    assert not [w for w in first["warnings"] if "cach" in w], first["warnings"]
    (done,) = first["done"]
    assert done["from_network"] == entry["size"] and done["chunks"]["downloaded"] == n_chunks
    n = len(server.requests_for(url_path))
    again = json.loads(run_py(page, _load_py(SMOL, n=4), timeout_ms=900_000))
    assert again["ids"] == ref
    assert server.requests_for(url_path)[n:] == []
    (done,) = again["done"]
    assert done["cached"] is True and done["from_network"] == 0 and done["from_cache"] == entry["size"]
    assert done["chunks"] == {"count": n_chunks, "verified": n_chunks, "bad": 0, "downloaded": 0}
    print(f"\nSmolLM2 fp32 ({entry['size']} bytes, {n_chunks} chunks of {chunk}): first load {first['load_s']} s "
          f"(files {first['timings']['files']} ms), cached load {again['load_s']} s "
          f"(files {again['timings']['files']} ms)")
    page.page.close()
