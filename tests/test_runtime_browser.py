"""The model store and session loading in the page (Pyodide worker + onnxruntime-web + Cache API).

A 2-module fixture repo (tests/make_fixture_repo.py) is served under /fixtures/; outputs are compared
with CPython onnxruntime on the same files. Each test gets a fresh browser context (empty Cache API).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import run_py
from make_fixture_repo import make_repo, reference
from webformers.dtypes import onnx_file

pytestmark = pytest.mark.browser

MODEL = "rt/tiny2"
ENC, DEC = "encoder_model", "decoder_model_merged"
IDS = [[3, 1, 4, 1, 5, 9, 2]]


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("rt") / "tiny2")


@pytest.fixture
def page(server, wf_page, repo_dir):
    server.add_root(f"/fixtures/{MODEL}/", repo_dir)
    host = server.url + "/fixtures"
    run_py(wf_page, f"""
import json
import numpy as np
import js
from pyodide.code import run_js
from webformers import store as hub
from webformers.store import ModelRepo
from webformers.runtime.load import load_sessions
from webformers.platform import sha256_hex
HOST = {host!r}
MODEL = {MODEL!r}
IDS = np.array({IDS!r}, dtype=np.int64)
events = []

async def load(dtype, device="wasm", modules=None, **kw):
    repo = await ModelRepo.open(MODEL, host=HOST, progress_callback=events.append)
    return await load_sessions(repo, modules, dtype=dtype, device=device, **kw)

async def run_both(loaded, fetch=None):
    out = {{}}
    if "{ENC}" in loaded.sessions:
        r = await loaded["{ENC}"].run({{"input_ids": IDS}})
        out["enc"] = r["last_hidden_state"].tolist()
        h = r["last_hidden_state"]
    else:
        h = np.tanh(np.linspace(-2, 2, IDS.size * 64, dtype=np.float32)).reshape(1, IDS.shape[1], 64)
    if "{DEC}" in loaded.sessions:
        r = await loaded["{DEC}"].run({{"encoder_hidden_states": h}}, fetch=fetch)
        out["logits"] = r["logits"].tolist()
        out["present_location"] = str(getattr(r["present.0.key"], "location", "numpy"))
    return out
"done"
""")
    wf_page.repo_url = f"{host}/{MODEL}/"
    return wf_page


def model_requests(page, since=0):
    """Repo files the page requested (paths relative to the repo), manifest/report excluded."""
    return [u[len(page.repo_url):] for u in page.requests[since:]
            if u.startswith(page.repo_url) and u[len(page.repo_url):].startswith("onnx/")
            and not u.endswith("manifest.json")]


def check_outputs(repo_dir, out, enc_dtype, dec_dtype, atol=1e-4):
    ids = np.array(IDS, dtype=np.int64)
    if enc_dtype:
        ref = reference(repo_dir, ENC, enc_dtype, {"input_ids": ids})["last_hidden_state"]
        np.testing.assert_allclose(np.array(out["enc"], dtype=np.float32), ref, atol=atol)
        h = ref
    else:
        h = np.tanh(np.linspace(-2, 2, ids.size * 64, dtype=np.float32)).reshape(1, ids.shape[1], 64)
    if dec_dtype:
        if enc_dtype:
            h = np.array(out["enc"], dtype=np.float32)
        ref = reference(repo_dir, DEC, dec_dtype, {"encoder_hidden_states": h})["logits"]
        np.testing.assert_allclose(np.array(out["logits"], dtype=np.float32), ref, atol=atol)


def manifest(repo_dir):
    return json.loads((repo_dir / "onnx/manifest.json").read_text())


def test_mapping_files_cache_reuse_offline_and_management(page, repo_dir):
    man = manifest(repo_dir)
    want = set(man["modules"][ENC]["q4"]["files"]) | set(man["modules"][DEC]["fp32"]["files"])
    res = json.loads(run_py(page, f"""
loaded = await load({{"{ENC}": "q4", "{DEC}": "fp32"}})
out = await run_both(loaded)
json.dumps({{"dtypes": loaded.dtypes, "device": loaded.device, "files": loaded.files, "out": out,
            "statuses": sorted({{e["status"] for e in events}})}})
"""))
    assert res["dtypes"] == {ENC: "q4", DEC: "fp32"} and res["device"] == "wasm"
    assert sorted(model_requests(page)) == sorted(want)  # exactly the variant files, once each
    assert set(res["files"]) == want and "onnx/decoder_model_merged.onnx_data" in want
    assert {"initiate", "download", "progress", "done", "ready"} <= set(res["statuses"])
    check_outputs(repo_dir, res["out"], "q4", "fp32")
    # the same events reached the page (js.wfBridge.emit -> worker -> window.wf.events)
    page_events = page.evaluate("window.wf.events")
    # (config.json, read for the memory plan, has its own events)
    done = [e for e in page_events if e.get("status") == "done" and e.get("name") == MODEL
            and e["file"].startswith("onnx/")]
    assert {e["file"] for e in done} == want and all(e["cached"] is False for e in done)
    ready = [e for e in page_events if e.get("status") == "ready" and e.get("name") == MODEL]
    total = sum(man["files"][f]["size"] for f in want)
    assert ready and ready[-1]["overall"] == {"loaded": total, "total": total}

    # second load: zero model-file requests, all from the Cache API
    n = len(page.requests)
    res = json.loads(run_py(page, f"""
events.clear()
loaded = await load({{"{ENC}": "q4", "{DEC}": "fp32"}})
out = await run_both(loaded)
json.dumps({{"out": out, "cached": [e["cached"] for e in events
                                    if e["status"] == "done" and e["file"].startswith("onnx/")]}})
"""))
    assert model_requests(page, n) == []
    assert res["cached"] == [True, True, True]
    check_outputs(repo_dir, res["out"], "q4", "fp32")

    # offline: every request fails; the manifest and files come from the cache
    page.context.route("**/*", lambda route: route.abort())
    try:
        n = len(page.requests)
        res = json.loads(run_py(page, f"""
events.clear()
loaded = await load({{"{ENC}": "q4", "{DEC}": "fp32"}})
out = await run_both(loaded)
json.dumps({{"out": out, "warnings": loaded.warnings}})
"""))
        assert model_requests(page, n) == []
        assert any("using the cached copy" in w for w in res["warnings"])
        check_outputs(repo_dir, res["out"], "q4", "fp32")
    finally:
        page.context.unroute("**/*")

    # management API: the cached variants with sizes, delete one, storage estimate
    res = json.loads(run_py(page, """
before = await hub.cached_models()
freed = await hub.delete_cached(MODEL, dtype="q4")
after = await hub.cached_models()
est = await hub.storage_estimate()
json.dumps({"before": before, "freed": freed, "after": after, "est": est,
            "persist": await hub.request_persistence()})
"""))
    # the page's own UI may have cached other repos' manifests: look at this test's model only
    (before,) = [m for m in res["before"] if m["model"] == MODEL]
    (after,) = [m for m in res["after"] if m["model"] == MODEL]
    assert {(v["module"], v["dtype"]): v["bytes"] for v in before["variants"]} == {
        (ENC, "q4"): man["modules"][ENC]["q4"]["bytes"], (DEC, "fp32"): man["modules"][DEC]["fp32"]["bytes"]}
    assert res["freed"] == man["modules"][ENC]["q4"]["bytes"]
    assert [(v["module"], v["dtype"]) for v in after["variants"]] == [(DEC, "fp32")]
    assert res["est"]["quota"] > res["est"]["usage"] > 0
    assert res["est"]["cache_bytes"] >= after["bytes"] > 0
    assert isinstance(res["persist"], bool)


def test_fp16_fallback_on_swiftshader_and_strict(page, repo_dir):
    res = json.loads(run_py(page, f"""
from webformers.runtime import backend
info = await backend.adapter_info()
events.clear()
loaded = await load({{"{ENC}": "fp16", "{DEC}": "q4f16"}}, device="auto")
out = await run_both(loaded, fetch=["logits"])
try:
    await load("q4f16", device="webgpu", strict=True)
    strict = None
except ValueError as e:
    strict = str(e)
json.dumps({{"info": info, "dtypes": loaded.dtypes, "device": loaded.device, "out": out, "strict": strict,
            "warnings": [e["message"] for e in events if e["status"] == "warning"]}})
""", timeout_ms=900_000))
    assert res["info"]["webgpu"] and "shader-f16" not in res["info"]["features"]
    assert res["device"] == "webgpu"
    assert res["dtypes"] == {ENC: "fp32", DEC: "q4"}
    assert any(w.startswith(f"{ENC}: fp16 replaced by fp32") and "shader-f16" in w for w in res["warnings"])
    assert any(w.startswith(f"{DEC}: q4f16 replaced by q4") and "shader-f16" in w for w in res["warnings"])
    assert res["strict"] and "shader-f16" in res["strict"] and "strict=True" in res["strict"]
    page_warnings = [e["message"] for e in page.evaluate("window.wf.events") if e.get("status") == "warning"]
    assert any("q4f16 replaced by q4" in w for w in page_warnings)
    # the KV-style output stayed on the GPU (keep_on_device default under WebGPU)
    assert res["out"]["present_location"] == "gpu-buffer"
    check_outputs(repo_dir, res["out"], "fp32", "q4", atol=1e-3)
    assert not [u for u in page.requests if "_fp16.onnx" in u or "_q4f16.onnx" in u]


def test_corrupted_cache_entry_is_evicted_and_refetched(page, repo_dir):
    run_py(page, f'loaded = await load("q4", modules=["{DEC}"]); "ok"')
    url = page.repo_url + onnx_file(DEC, "q4")
    # overwrite the cached copy from page JS with bytes of the right size but wrong content
    size = manifest(repo_dir)["files"][onnx_file(DEC, "q4")]["size"]
    page.evaluate("""async ([url, size]) => {
        const c = await caches.open("webformers-hub-v1");
        const old = await c.match(url);
        const headers = new Headers(old.headers);
        const bad = new Uint8Array(size).fill(7);
        await c.put(url, new Response(bad, {headers}));
    }""", [url, size])
    n = len(page.requests)
    res = json.loads(run_py(page, f"""
events.clear()
loaded = await load("q4", modules=["{DEC}"])
out = await run_both(loaded)
c = await js.caches.open(hub.CACHE_NAME)
r = await c.match({url!r})
data = js.Uint8Array.new(await r.arrayBuffer())
json.dumps({{"out": out, "warnings": loaded.warnings, "sha": await sha256_hex(data)}})
"""))
    assert model_requests(page, n) == [onnx_file(DEC, "q4")]
    assert any("corrupted" in w and "sha256" in w for w in res["warnings"])
    assert res["sha"] == manifest(repo_dir)["files"][onnx_file(DEC, "q4")]["sha256"]
    check_outputs(repo_dir, res["out"], None, "q4")


def test_download_aborted_midway_is_retried_nothing_partial_cached(page, repo_dir):
    target = onnx_file(ENC, "q4")
    data = (repo_dir / target).read_bytes()
    seen = []

    def handler(route):
        seen.append(route.request.url)
        if len(seen) == 1:  # the first try breaks off after a third of the body
            route.fulfill(status=200, body=data[: len(data) // 3],
                          headers={"content-type": "application/octet-stream", "content-length": str(len(data))})
        elif len(seen) == 2:
            route.abort("connectionreset")
        else:
            route.continue_()
    page.context.route(f"**/{target}", handler)
    res = json.loads(run_py(page, f"""
events.clear()
loaded = await load("q4", modules=["{ENC}"])
out = await run_both(loaded)
c = await js.caches.open(hub.CACHE_NAME)
r = await c.match({page.repo_url + target!r})
data = js.Uint8Array.new(await r.arrayBuffer())
json.dumps({{"out": out, "sha": await sha256_hex(data), "n": data.length,
            "warnings": [e["message"] for e in events if e["status"] == "warning"]}})
"""))
    page.context.unroute(f"**/{target}")
    assert len(seen) == 3
    assert sum("retrying" in w for w in res["warnings"]) == 2
    assert res["n"] == len(data) and res["sha"] == manifest(repo_dir)["files"][target]["sha256"]
    check_outputs(repo_dir, res["out"], "q4", None)


def test_html_with_200_is_a_clear_error_and_not_cached(page):
    target = onnx_file(ENC, "fp32")
    page.context.route(f"**/{target}", lambda route: route.fulfill(
        status=200, body="<!DOCTYPE html><html><body>Not the model</body></html>",
        headers={"content-type": "text/html"}))
    res = json.loads(run_py(page, f"""
try:
    await load("fp32", modules=["{ENC}"])
    err = None
except Exception as e:
    err = f"{{type(e).__name__}}: {{e}}"
c = await js.caches.open(hub.CACHE_NAME)
r = await c.match({page.repo_url + target!r})
json.dumps({{"err": err, "cached": r is not None}})
"""))
    page.context.unroute(f"**/{target}")
    assert res["err"].startswith("IntegrityError") and target in res["err"] and "HTML" in res["err"]
    assert res["cached"] is False


def test_quota_error_and_no_cache_api(page, repo_dir):
    res = json.loads(run_py(page, f"""
run_js('''Cache.prototype.put = function () {{
    return Promise.reject(new DOMException("The quota has been exceeded.", "QuotaExceededError"));
}};''')
events.clear()
loaded = await load("q8", modules=["{DEC}"])
out = await run_both(loaded)
json.dumps({{"out": out, "warnings": [e["message"] for e in events if e["status"] == "warning"],
            "cached": [m for m in await hub.cached_models() if m["model"] == MODEL]}})
"""))
    assert any("QuotaExceededError" in w and onnx_file(DEC, "q8") in w for w in res["warnings"])
    assert res["cached"] == []
    check_outputs(repo_dir, res["out"], None, "q8")
    # no Cache API at all (e.g. an opaque origin): same results, uncached
    res = json.loads(run_py(page, f"""
run_js('Object.defineProperty(self, "caches", {{value: undefined, configurable: true}})')
events.clear()
loaded = await load("q4", modules=["{DEC}"])
out = await run_both(loaded)
json.dumps({{"out": out, "warnings": [e["message"] for e in events if e["status"] == "warning"],
            "cached": [m for m in await hub.cached_models() if m["model"] == MODEL]}})
"""))
    assert any("not be cached" in w and "Cache API" in w for w in res["warnings"])
    assert res["cached"] == []
    check_outputs(repo_dir, res["out"], None, "q4")


def test_error_messages_in_python(page, repo_dir):
    res = json.loads(run_py(page, """
msgs = {}
for key, kw in {"dtype": dict(dtype="q5"), "device": dict(dtype="q4", device="cuda"),
                "variant": dict(dtype="bnb4")}.items():
    try:
        await load(**kw)
        msgs[key] = None
    except ValueError as e:
        msgs[key] = str(e)
json.dumps(msgs)
"""))
    assert "'q5'" in res["dtype"] and "q4f16" in res["dtype"] and "fp32" in res["dtype"]
    assert "'cuda'" in res["device"] and "webgpu" in res["device"] and "wasm" in res["device"]
    have = ", ".join(manifest(repo_dir)["modules"][ENC])
    assert "'bnb4'" in res["variant"] and f"{ENC}: {have}" in res["variant"]
