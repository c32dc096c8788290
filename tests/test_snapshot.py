"""The Python memory snapshot (webformers/pyboot.js) in a real browser: a first visit boots fresh and leaves a
snapshot in the Cache API; the next visit restores it and generates the same tokens; a snapshot that is
corrupted, stale (made for other wheels) or fails to restore is evicted and the page boots fresh with a
warning. Every visit stays on the page's origin. Boot times are printed (not asserted)."""
from __future__ import annotations

import json
import time

import pytest
from helpers import PageSession, origin_violations, run_py

pytestmark = pytest.mark.browser

MODEL = "webformers/tiny-random-llama"
CACHE = "webformers-pysnapshot"

# tokenizer + chat template + greedy generation + the random module (reseeded after a restore)
GENERATE = f"""
import json, random
from webformers import AutoModelForCausalLM, AutoTokenizer
tok = await AutoTokenizer.from_pretrained({MODEL!r})
ids = tok.apply_chat_template([{{"role": "user", "content": "Hello there, snapshot"}}], add_generation_prompt=True,
                              tokenize=True)
m = await AutoModelForCausalLM.from_pretrained({MODEL!r}, dtype="fp32", device="wasm")
out = await m.generate([ids], max_new_tokens=8, eos_token_id=None)
m.dispose()
json.dumps({{"ids": [int(x) for x in out[0]], "text": tok.decode(out[0][len(ids):]), "random": random.random()}})
"""

# the same, run before numpy has loaded (runPython's beforePackages): the tokenizer loads at once and says so,
# the model's load waits for numpy
EARLY = f"""
import json, random, sys
from webformers import AutoModelForCausalLM, AutoTokenizer
from webformers.platform import emit_page_event
tok = await AutoTokenizer.from_pretrained({MODEL!r})
numpy_at_tokenizer = "numpy" in sys.modules
emit_page_event({{"status": "test-tokenizer-ready"}})
ids = tok.apply_chat_template([{{"role": "user", "content": "Hello there, snapshot"}}], add_generation_prompt=True,
                              tokenize=True)
m = await AutoModelForCausalLM.from_pretrained({MODEL!r}, dtype="fp32", device="wasm")
out = await m.generate([ids], max_new_tokens=8, eos_token_id=None)
m.dispose()
json.dumps({{"ids": [int(x) for x in out[0]], "text": tok.decode(out[0][len(ids):]), "random": random.random(),
            "numpy_at_tokenizer": numpy_at_tokenizer}})
"""
NUMPY_WHEEL = "**/pyodide/numpy-*.whl"


@pytest.fixture
def ctx(browser):
    """A fresh browser context: its own (empty) Cache API, shared by the visits of one test."""
    c = browser.new_context()
    yield c
    c.close()


def _visit(ctx, server, path="/index.html"):
    s = PageSession(ctx.browser, server, path, context=ctx)
    return s, s.page.evaluate("window.wf.timings")


def _wait_snapshot_saved(s, timeout_s=180):
    """Wait for the snapshot the fresh boot makes in the background (or the warning that it failed)."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        for e in s.page.evaluate("window.wf.events"):
            if e.get("status") == "python-snapshot":
                return e
            if e.get("status") == "warning" and "snapshot" in e.get("message", ""):
                raise AssertionError(e["message"])
        time.sleep(0.5)
    raise AssertionError("no Python snapshot was saved")


def _wait_event(s, status, timeout_s=120):
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if any(e.get("status") == status for e in s.page.evaluate("window.wf.events")):
            return
        time.sleep(0.2)
    raise AssertionError(f"no {status} event")


def _entry(s):
    """The snapshot entry of this site: {url, key, sha256, bytes} or None."""
    return s.page.evaluate("""async (name) => {
        const cache = await caches.open(name);
        const keys = await cache.keys();
        if (!keys.length) return null;
        const resp = await cache.match(keys[0]);
        return { url: keys[0].url, n: keys.length, key: resp.headers.get("x-wf-key"),
                 sha256: resp.headers.get("x-wf-sha256"), bytes: (await resp.arrayBuffer()).byteLength }; }""", CACHE)


def _tamper(s, how):
    """Rewrite the cached snapshot: "corrupt" flips a byte in the middle (headers kept); "stale" keeps the
    bytes but records another sha256 for the webformers wheel in what the snapshot was made from (as after a
    site update) and a key that no longer matches."""
    return s.page.evaluate("""async ([name, how]) => {
        const cache = await caches.open(name);
        const [req] = await cache.keys();
        const resp = await cache.match(req);
        const bytes = new Uint8Array(await resp.arrayBuffer());
        const headers = new Headers(resp.headers);
        if (how === "corrupt") {
          bytes[bytes.length >> 1] ^= 0xff;
        } else {
          const inputs = JSON.parse(headers.get("x-wf-inputs"));
          for (const w of inputs.wheels) if (w[0].startsWith("webformers-")) w[1] = "0".repeat(64);
          headers.set("x-wf-inputs", JSON.stringify(inputs));
          headers.set("x-wf-key", "f".repeat(64));
        }
        await cache.put(req, new Response(bytes, { headers }));
        return true; }""", [CACHE, how])


def _print_boot(label, t):
    keys = ["path", "snapshot_check", "pyodide", "numpy", "numpy_load", "numpy_import", "wheel", "ort", "total"]
    print(f"\n[snapshot] {label}: " + ", ".join(f"{k}={t[k]}" for k in keys if k in t))


def test_second_visit_restores_the_snapshot_and_generates_the_same_tokens(ctx, server):
    first, t1 = _visit(ctx, server)
    assert t1["path"] == "fresh" and "warnings" not in t1, t1
    assert "fresh Python boot" in first.locator("#boot-status").inner_text()
    saved = _wait_snapshot_saved(first)
    entry = _entry(first)
    assert entry and entry["n"] == 1 and entry["bytes"] == saved["bytes"] > 1_000_000, (entry, saved)
    ref = json.loads(run_py(first, GENERATE))
    assert len(ref["ids"]) > 8
    first.page.close()

    again, t2 = _visit(ctx, server)
    assert t2["path"] == "snapshot" and "warnings" not in t2, (t2["path"], t2.get("warnings"))
    assert t2["snapshot_mb"] > 1 and t2["snapshot_check"] >= 0
    assert "restored from its snapshot" in again.locator("#boot-status").inner_text()
    rows = again.locator("#boot-timings tbody tr th").all_text_contents()
    assert rows[:4] == ["pyodide", "numpy", "wheel", "ort"] and "path" in rows, rows
    # the tokenizer's regex caches came with the snapshot (text/tokenizer/prewarm.py)
    warm = run_py(again, "from webformers.text.tokenizer import regex, prewarm\n"
                         "[regex.category_ranges.cache_info().currsize, regex.compile_regex.cache_info().currsize,"
                         " len(prewarm.COMMON_PATTERNS)]")
    assert warm[0] == 1 and warm[1] >= warm[2], warm
    got = json.loads(run_py(again, GENERATE))
    assert got["ids"] == ref["ids"] and got["text"] == ref["text"], (got, ref)
    # numpy (not in the snapshot) and our wheels work; the snapshot entry was kept
    assert run_py(again, "import numpy, webformers\n[numpy.__version__, webformers.__version__]") == ["2.0.2", "0.1.0"]
    assert _entry(again)["sha256"] == entry["sha256"]
    again.page.close()

    # a third visit restores the same snapshot and is ready before numpy has loaded: with numpy's wheel held
    # back, importing numpy says why it fails, the tokenizer loads, and the model's load waits for numpy;
    # then the same tokens, and `random` is reseeded, not replayed
    held = []
    ctx.route(NUMPY_WHEEL, lambda route: held.append(route))
    third, t3 = _visit(ctx, server)
    assert t3["path"] == "snapshot" and t3["packages"] == "background" and "numpy" not in t3, t3
    with pytest.raises(Exception, match="numpy is still loading"):
        third.page.evaluate("code => window.wf.runPython(code, { beforePackages: true })", "import numpy")
    third.page.evaluate("code => { window.earlyRun = window.wf.runPython(code, { beforePackages: true }); }", EARLY)
    _wait_event(third, "test-tokenizer-ready")
    assert len(held) == 1 and "loading" in third.locator("#boot-timings").text_content(), held
    held[0].continue_()
    ctx.unroute(NUMPY_WHEEL)
    rnd = json.loads(third.page.evaluate("() => window.earlyRun"))
    assert rnd["ids"] == ref["ids"] and rnd["text"] == ref["text"] and rnd["random"] != got["random"], (rnd, ref)
    assert rnd["numpy_at_tokenizer"] is False
    t3 = third.page.evaluate("() => window.wf.bootTimings()")
    assert t3["numpy_load"] >= 0 and t3["numpy_import"] >= 0 and t3["bridge"] >= 0, t3
    third.page.wait_for_function("!document.querySelector('#boot-timings').textContent.includes('loading')")
    # ?snapshot=0: a fresh boot, and the same tokens
    plain, t4 = _visit(ctx, server, "/index.html?snapshot=0")
    assert t4["path"] == "fresh" and "warnings" not in t4, t4
    assert json.loads(run_py(plain, GENERATE))["ids"] == ref["ids"]
    for s in (first, again, third, plain):
        assert origin_violations(s) == [], origin_violations(s)
    for label, t in (("first visit (fresh)", t1), ("second visit", t2), ("third visit", t3), ("?snapshot=0", t4)):
        _print_boot(label, t)


@pytest.mark.parametrize("how", ["corrupt", "stale"])
def test_bad_snapshot_is_evicted_and_the_page_boots_fresh(ctx, server, how):
    first, _ = _visit(ctx, server)
    _wait_snapshot_saved(first)
    good = _entry(first)
    ref = json.loads(run_py(first, GENERATE))
    _tamper(first, how)
    first.page.close()

    bad, t = _visit(ctx, server)
    assert t["path"] == "fresh", t
    want = {"corrupt": "is corrupted", "stale": "is stale (made for other wheels: webformers-"}[how]
    assert len(t.get("warnings", [])) == 1 and want in t["warnings"][0] and "evicted" in t["warnings"][0], t
    # the page shows the warning and works
    assert want in bad.locator("#warnings").inner_text()
    assert json.loads(run_py(bad, GENERATE))["ids"] == ref["ids"]
    # the bad entry is gone; the fresh boot made a new, valid one
    saved = _wait_snapshot_saved(bad)
    entry = _entry(bad)
    assert entry["n"] == 1 and entry["key"] == good["key"] and entry["bytes"] == saved["bytes"], (entry, good)
    bad.page.close()

    healed, t2 = _visit(ctx, server)
    assert t2["path"] == "snapshot" and "warnings" not in t2, (t2["path"], t2.get("warnings"))
    assert json.loads(run_py(healed, GENERATE))["ids"] == ref["ids"]
    for s in (first, bad, healed):
        assert origin_violations(s) == [], origin_violations(s)
    _print_boot(f"after a {how} snapshot", t)


def test_snapshot_that_fails_to_restore_is_evicted(ctx, server):
    """A snapshot whose bytes match their sha256 but do not restore (here: not a Pyodide snapshot at all,
    as from another build) -> evicted, fresh boot with a warning."""
    first, _ = _visit(ctx, server)
    _wait_snapshot_saved(first)
    first.page.evaluate("""async (name) => {
        const cache = await caches.open(name);
        const [req] = await cache.keys();
        const resp = await cache.match(req);
        const bytes = new Uint8Array(await resp.arrayBuffer());
        bytes.fill(7, 0, 64);  // magic number and build id overwritten
        const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
        const headers = new Headers(resp.headers);
        headers.set("x-wf-sha256", Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""));
        await cache.put(req, new Response(bytes, { headers })); }""", CACHE)
    first.page.close()
    s, t = _visit(ctx, server)
    assert t["path"] == "fresh", t
    assert len(t["warnings"]) == 1 and "did not restore" in t["warnings"][0] and "evicted" in t["warnings"][0], t
    assert run_py(s, "import numpy, webformers\nnumpy.arange(3).sum().item()") == 3
    assert origin_violations(s) == []
