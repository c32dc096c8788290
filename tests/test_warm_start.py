"""Warm start in a real browser: onnxruntime-web runs in its own worker, and a page that names the model it
is about to load (``WebformersClient({warmStart})``) gets that model's sessions created while Pyodide boots,
from the Cache API, checked against their sha256 — adopted only when the load asks for the same files."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

MODEL = "webformers/tiny-random-llama"
PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203]


def _client(context, server, warm=None):
    """A page of the site with one WebformersClient (optionally warm-starting ``warm``), booted."""
    page = context.new_page()
    page.goto(server.url + "/site.json")  # any same-origin document: the client brings its own worker
    boot = page.evaluate("""async (warm) => {
        const { WebformersClient } = await import("/wf-client.js");
        window.wf = new WebformersClient(warm ? { warmStart: warm } : {});
        return await window.wf.ready; }""", warm)
    return page, boot


def _load_and_generate(page, dtype="fp32"):
    return page.evaluate("code => window.wf.runPython(code)", f"""
from webformers import AutoModelForCausalLM
m = await AutoModelForCausalLM.from_pretrained({MODEL!r}, dtype={dtype!r}, device="wasm")
out = await m.generate({PROMPT!r}, max_new_tokens=8, eos_token_id=None)
r = {{"ids": [int(x) for x in out[0]], "timings": dict(m.load_timings), "warnings": [str(w) for w in m.warnings]}}
m.dispose()
r
""")


def _corrupt_cached(page, file):
    """Overwrite the cached copy of ``file`` (keeping its metadata header) with different bytes."""
    return page.evaluate("""async (file) => {
        const cache = await caches.open("webformers-hub-v1");
        for (const req of await cache.keys()) {
          if (!req.url.endsWith(file)) continue;
          const resp = await cache.match(req);
          const bytes = new Uint8Array(await resp.arrayBuffer());
          bytes[bytes.length >> 1] ^= 0xff;
          await cache.put(req, new Response(bytes, { headers: resp.headers }));
          return req.url;
        }
        return null; }""", file)


@pytest.fixture
def ctx(browser):
    """A fresh browser context: its own (empty) Cache API."""
    c = browser.new_context()
    yield c
    c.close()


def test_warm_start_adopts_sessions_made_during_boot(ctx, server):
    # first visit: nothing to warm-start; the load downloads, caches and remembers the variant
    page, boot = _client(ctx, server, warm=MODEL)
    assert boot["warm_start_modules"] == 0, boot
    first = _load_and_generate(page)
    assert "warm_started" not in first["timings"], first
    page.close()

    # next visit: the session exists before Python asks; same tokens
    page, boot = _client(ctx, server, warm=MODEL)
    assert boot["warm_start_modules"] == 1, boot
    again = _load_and_generate(page)
    assert again["timings"].get("warm_started") == ["model"], again
    assert again["ids"] == first["ids"]
    page.close()

    # without the option nothing is warm-started
    page, boot = _client(ctx, server)
    assert boot["warm_start_modules"] == 0
    plain = _load_and_generate(page)
    assert "warm_started" not in plain["timings"] and plain["ids"] == first["ids"]
    page.close()

    # a different variant is not adopted: it loads normally (and the unused session is freed)
    page, boot = _client(ctx, server, warm=MODEL)
    assert boot["warm_start_modules"] == 1
    q8 = _load_and_generate(page, dtype="q8")
    assert "warm_started" not in q8["timings"], q8
    # ...and the plan now names the q8 variant
    page.close()
    page, boot = _client(ctx, server, warm=MODEL)
    q8_again = _load_and_generate(page, dtype="q8")
    assert q8_again["timings"].get("warm_started") == ["model"] and q8_again["ids"] == q8["ids"]
    page.close()


def test_warm_start_skips_a_damaged_cached_file_and_the_load_heals_it(ctx, server):
    page, _ = _client(ctx, server)
    first = _load_and_generate(page)
    assert _corrupt_cached(page, "/onnx/model.onnx"), "model.onnx was not cached"
    page.close()

    page, boot = _client(ctx, server, warm=MODEL)
    assert boot["warm_start_modules"] == 1
    healed = _load_and_generate(page)
    # the damaged copy was not used by the warm start; the load evicted and re-downloaded it
    assert "warm_started" not in healed["timings"], healed
    assert any("corrupted" in w for w in healed["warnings"]), healed["warnings"]
    assert healed["ids"] == first["ids"]
    page.close()

    page, _ = _client(ctx, server, warm=MODEL)
    assert _load_and_generate(page)["timings"].get("warm_started") == ["model"]
    page.close()


def test_model_bytes_handed_to_onnxruntime_twice_is_a_clear_error(ctx, server):
    """The model bytes are transferred to onnxruntime's worker, not copied: reusing them says so."""
    page, _ = _client(ctx, server)
    got = page.evaluate("code => window.wf.runPython(code)", f"""
import js
from webformers.runtime import backend
data = js.Uint8Array.new(await (await js.fetch("/models/{MODEL}/onnx/model.onnx")).arrayBuffer())
s = await backend.create_session(data, device="wasm")
names = s.output_names
s.dispose()
try:
    await backend.create_session(data, device="wasm")
    err = None
except Exception as e:
    err = str(e)
{{"outputs": names[:1], "err": err}}
""")
    assert got["outputs"] == ["logits"], got
    assert got["err"] and "already handed to onnxruntime" in got["err"], got
    page.close()
