"""webformers in a Pyodide it did not boot: a page that loads Pyodide itself (tests/plain_pyodide/, no
web/worker.js, no wf-client.js) micropip-installs the site's wheels and generates with the tiny model, in
the page's main thread and in a plain worker, on wasm and webgpu: the browser backend starts onnxruntime-web
itself from ``webformers.configure(assets=...)``. Tokens equal CPython onnxruntime's greedy; events reach
Python callbacks and async iterators; an asyncio.Event stops generation; missing or misplaced assets give
one error naming the file and the URL tried; no request leaves the origin."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import BOOT_TIMEOUT_MS, SITE, dump_json, origin_violations

pytestmark = pytest.mark.browser

MODEL = "webformers/tiny-random-llama"
N_NEW = 12
FIXTURE = Path(__file__).resolve().parent / "plain_pyodide"


class Session:
    """A browser context on the plain page (``mode`` "main" or "worker") with its request / console logs."""

    def __init__(self, browser, server, mode: str):
        self.server = server
        self.context = browser.new_context()
        self.requests: list[str] = []
        self.console: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("worker", lambda w: w.on("console", lambda m: self.console.append(f"worker {m.type}: {m.text}")))
        self.page.goto(f"{server.url}/index.html?mode={mode}")
        self.page.wait_for_function("window.plain && (window.plain.booted || window.plain.bootError)",
                                    timeout=BOOT_TIMEOUT_MS)
        err = self.page.evaluate("window.plain.bootError")
        assert not err, f"Pyodide did not boot: {err}"

    def run(self, code: str, timeout_ms: int = 600_000):
        self.page.set_default_timeout(timeout_ms)
        return self.page.evaluate("code => window.plain.runPython(code)", code)

    def run_error(self, code: str) -> str:
        """The message of the error ``code`` raises (fails when it raises none)."""
        return self.page.evaluate("""code => window.plain.runPython(code).then(
            () => { throw new Error("no error raised"); }, (e) => String(e.message || e))""", code)


def _wheels() -> list[str]:
    site = json.loads((SITE / "site.json").read_text())
    return [w["file"] for w in site["wheels"]]


@pytest.fixture(scope="module")
def plain_root(tmp_path_factory, site_dir):
    """The fixture page and worker, with the site's pyodide/, wheels/, webformers/ and models/ beside them;
    broken/: the assets without onnxruntime-web's wasm."""
    root = tmp_path_factory.mktemp("plain-pyodide")
    for f in FIXTURE.iterdir():
        shutil.copy(f, root / f.name)
    for d in ("pyodide", "wheels", "webformers", "models"):
        os.symlink(site_dir / d, root / d)
    broken = root / "broken"
    for p in (site_dir / "webformers").rglob("*"):
        rel = p.relative_to(site_dir / "webformers")
        if p.is_file() and p.name != "ort-wasm-simd-threaded.asyncify.wasm":
            (broken / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(p, broken / rel)
    # misconf/: the wasm's URL answers with a page (a folder holding index.html: an HTML fallback)
    misconf = root / "misconf"
    for p in (site_dir / "webformers").rglob("*"):
        rel = p.relative_to(site_dir / "webformers")
        if p.is_file() and p.name != "ort-wasm-simd-threaded.asyncify.wasm":
            (misconf / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(p, misconf / rel)
    fallback = misconf / "ort" / "ort-wasm-simd-threaded.asyncify.wasm"
    fallback.mkdir()
    (fallback / "index.html").write_text("<!doctype html><p>not found</p>")
    return root


@pytest.fixture(scope="module")
def plain_server(plain_root):
    from buildtools.server import SiteServer

    s = SiteServer(plain_root).start()
    yield s
    s.stop()


def _install() -> str:
    """Python that installs the site's wheels with micropip (from this origin only)."""
    return f"""
import js, micropip
await micropip.install([str(js.URL.new("wheels/" + f, js.location.href).href) for f in {_wheels()!r}])
import webformers
"""


def _prompt() -> list[int]:
    from webformers.text.tokenizer import Tokenizer
    repo = SITE / "models" / MODEL
    tok_cfg = repo / "tokenizer_config.json"
    tok = Tokenizer.from_json((repo / "tokenizer.json").read_text(),
                              json.loads(tok_cfg.read_text()) if tok_cfg.exists() else {})
    return list(tok.encode("Once upon a time, in a small village"))


def _generate(prompt, devices, **configure) -> str:
    return _install() + f"""
import asyncio, json
from webformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer
from webformers.runtime.backend import _ortweb
seen = []
webformers.configure(on_event=lambda ev: seen.append(ev["status"]), **{configure!r})
import time
t0 = time.perf_counter()
await _ortweb.runtime()  # what the first load does: check the assets, start onnxruntime-web
start_ms = round((time.perf_counter() - t0) * 1000)
result = {{}}
for device in {list(devices)!r}:
    stream = webformers.events(until={{"ready"}})
    model = await AutoModelForCausalLM.from_pretrained({MODEL!r}, dtype="fp32", device=device)
    streamed = [ev async for ev in stream]
    out = await model.generate({prompt!r}, max_new_tokens={N_NEW}, eos_token_id=None)
    tok = await AutoTokenizer.from_pretrained({MODEL!r})
    st = TextIteratorStreamer(tok)
    task = asyncio.ensure_future(model.generate({prompt!r}, max_new_tokens={N_NEW}, eos_token_id=None, streamer=st))
    pieces = [p async for p in st]
    streamed_out = (await task)[0].tolist()
    result[device] = {{"tokens": out[0].tolist(), "device": model.device, "events": [e["status"] for e in streamed],
                       "pieces": pieces, "text": tok.decode(streamed_out[{len(prompt)}:], skip_special_tokens=True),
                       "streamed_tokens": streamed_out}}
    model.dispose()
payload = json.dumps({{"result": result, "start_ms": start_ms, "seen": sorted(set(seen)), "info": _ortweb.runtime_info(),
                      "settings": {{k: v for k, v in webformers.config.settings().items()
                                   if k in ("assets", "models", "started")}}}})
payload
"""


@pytest.mark.parametrize("mode", ["main", "worker"])
def test_plain_pyodide_generates_like_onnxruntime(browser, plain_server, mode):
    from webformers.toolchain import reference_greedy

    prompt = _prompt()
    ref = [int(t) for t in reference_greedy(SITE / "models" / MODEL, "fp32", prompt, N_NEW)][-N_NEW:]
    s = Session(browser, plain_server, mode)
    try:
        res = json.loads(s.run(_generate(prompt, ["wasm", "webgpu"])))
        dump_json(f"plain_pyodide_{mode}.json", {"runtime_start_ms": res["start_ms"], "info": res["info"]})
        assert res["info"]["mode"] == "worker"  # onnxruntime-web in a worker of its own, started by Python
        assert res["settings"]["assets"] == plain_server.url + "/webformers/"
        assert res["settings"]["models"] == plain_server.url + "/models"
        for device in ("wasm", "webgpu"):
            r = res["result"][device]
            assert r["device"] == device
            assert r["tokens"][:len(prompt)] == prompt and r["tokens"][len(prompt):] == ref, device
            assert r["streamed_tokens"] == r["tokens"]
            assert len(r["pieces"]) >= 2 and "".join(r["pieces"]) == r["text"]
            # the load's events reached the async iterator, ending with the load's "ready"
            assert r["events"][-1] == "ready" and "done" in r["events"], r["events"]
        assert {"done", "ready"} <= set(res["seen"])  # and the configure(on_event=) callback
        assert not origin_violations(s), origin_violations(s)
    finally:
        s.context.close()


@pytest.mark.parametrize("why", ["configured", "no-worker"])
def test_plain_pyodide_in_thread_and_stop(browser, plain_server, why):
    """onnxruntime-web in the page's thread, asked for (configure(ort_worker=False)) or because ``Worker``
    does not exist; an asyncio.Event stops generation (per call, and as the configured stop source
    platform.stop_requested asks)."""
    from webformers.toolchain import reference_greedy

    prompt = _prompt()
    ref = [int(t) for t in reference_greedy(SITE / "models" / MODEL, "fp32", prompt, N_NEW)][-N_NEW:]
    s = Session(browser, plain_server, "main")
    try:
        if why == "no-worker":
            s.page.evaluate("delete globalThis.Worker")
            err = s.run_error(_install() + f"""
webformers.configure(ort_worker=True)
await webformers.AutoModelForCausalLM.from_pretrained({MODEL!r}, dtype="fp32", device="wasm")
""")
            assert "ValueError" in err and "has no Worker" in err and "ort_worker=False" in err, err
            s.run("webformers.config.reset()")
        res = json.loads(s.run(_generate(prompt, ["wasm"], **({"ort_worker": False} if why == "configured" else {}))
                               + f"""
from webformers import platform
model = await AutoModelForCausalLM.from_pretrained({MODEL!r}, dtype="fp32", device="wasm")
ev = asyncio.Event()
seen = []
class Count:
    def put(self, ids): seen.append(1)
    def end(self): pass
async def stopper():
    while len(seen) < 4:  # the prompt + 3 tokens
        await asyncio.sleep(0)
    ev.set()
    return len(seen) - 1
stop_task = asyncio.ensure_future(stopper())
out = await model.generate({prompt!r}, max_new_tokens=200, eos_token_id=None, streamer=Count(), cancel=ev)
at_stop = await stop_task
reason = model.last_generation_stats["stop_reason"]
# the configured stop source: platform.stop_requested asks it (there is no wfBridge here)
ev2 = asyncio.Event()
webformers.configure(stop=ev2)
before = platform.stop_requested()
ev2.set()
after = platform.stop_requested()
out2 = await model.generate({prompt!r}, max_new_tokens=50, eos_token_id=None, cancel=platform.stop_requested)
platform.reset_stop()
json.dumps({{**json.loads(payload), "new": len(out[0]) - {len(prompt)}, "at_stop": at_stop, "reason": reason,
            "before": before, "after": after, "new2": len(out2[0]) - {len(prompt)}, "cleared": not ev2.is_set()}})
"""))
        assert res["info"]["mode"] == "in-thread"
        if why == "no-worker":
            assert res["info"]["threads"] == 1  # no Worker: no WASM threads either
        assert res["result"]["wasm"]["tokens"][len(prompt):] == ref
        assert res["reason"] == "cancelled" and res["at_stop"] <= res["new"] <= res["at_stop"] + 1
        assert (res["before"], res["after"]) == (False, True) and res["new2"] <= 1 and res["cleared"]
        assert not origin_violations(s), origin_violations(s)
    finally:
        s.context.close()


@pytest.mark.parametrize("mode", ["main", "worker"])
def test_plain_pyodide_missing_assets_are_named(browser, plain_server, mode):
    """A wrong assets URL, assets without onnxruntime-web's wasm, a wasm URL answering with a page: one error
    naming the file and the URL tried, raised in Python and shown by the page (its console, the error event)."""
    s = Session(browser, plain_server, mode)
    base = plain_server.url
    try:
        wrong = s.run_error(_install() + """
events = []
webformers.configure(assets="nowhere/", on_event=events.append)
from webformers import AutoModelForCausalLM
try:
    await AutoModelForCausalLM.from_pretrained("webformers/tiny-random-llama", dtype="fp32", device="wasm")
except webformers.config.AssetsError as e:
    assert events and events[-1]["status"] == "error" and events[-1]["message"] == str(e), events
    raise
""")
        assert "runtime.js" in wrong and f"{base}/nowhere/runtime.js" in wrong and "HTTP 404" in wrong, wrong
        assert "configure(assets=" in wrong
        missing = s.run_error("""
webformers.configure(assets="broken/")
await AutoModelForCausalLM.from_pretrained("webformers/tiny-random-llama", dtype="fp32", device="wasm")
""")
        wasm = "ort/ort-wasm-simd-threaded.asyncify.wasm"
        assert f"{wasm} is missing: {base}/broken/{wasm} answered HTTP 404" in missing, missing
        assert "AssetsError" in missing
        assert any(wasm in line and "error" in line for line in s.console), s.console
        html = s.run_error("""
webformers.configure(assets="misconf/")
await AutoModelForCausalLM.from_pretrained("webformers/tiny-random-llama", dtype="fp32", device="wasm")
""")
        assert f"{wasm} is misconfigured: {base}/misconf/{wasm} is served as" in html and "text/html" in html, html
        assert not origin_violations(s), origin_violations(s)
    finally:
        s.context.close()
