"""Interop: transformers.js (npm @huggingface/transformers, served from this site, no remote models)
loads our converted model repos and its greedy output equals webformers' on the same variant.

transformers.js runs in a worker of ``bench.html`` (web/bench/tjs-host.js) on the site's onnxruntime-web (the
runtime webformers uses, so outputs must be identical token for token); webformers runs in the booted
demo page. Which variants: every dtype of the repo's manifest that transformers.js has a name for, on
the tiny model; the default dtype q4 (and q8) also on SmolLM2 when it is built.
"""
from __future__ import annotations

import json

import pytest

from helpers import SITE, PageSession, dump_json, run_py

TINY = "webformers/tiny-random-llama"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: dtype names transformers.js 4.3.1 accepts (its own API: `dtype` option of from_pretrained).
TJS_DTYPES = ("fp32", "fp16", "q8", "int8", "uint8", "q4", "q4f16", "bnb4", "q2", "q2f16", "q1", "q1f16")
PROMPT = "Once upon a time"
NEW_TOKENS = 12
RESULTS: dict = {}


def _manifest_dtypes(model: str) -> list[str]:
    p = SITE / "models" / model / "onnx" / "manifest.json"
    if not p.is_file():
        return []
    return list(json.loads(p.read_text())["modules"]["model"])


def _prompt_ids(model: str) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(SITE / "models" / model / "tokenizer.json"))
    return tok.encode(PROMPT, add_special_tokens=False).ids


def _cases():
    cases = [(TINY, d) for d in _manifest_dtypes(TINY) if d in TJS_DTYPES]
    cases += [(SMOLLM2, d) for d in ("q4", "q8") if d in _manifest_dtypes(SMOLLM2)]
    return cases or [(TINY, "fp32")]  # no models built: the test then fails, naming the missing repo


@pytest.fixture(scope="module")
def tjs_page(browser, server):
    s = PageSession(browser, server, path="/bench.html", boot=False)
    s.page.wait_for_function("!!(window.runBench && window.BenchTjsWorker)", timeout=60_000)
    yield s
    s.close()
    if RESULTS:
        dump_json("interop.json", RESULTS)


def _webformers_greedy(page, model, dtype, ids):
    return run_py(page, f"""
from webformers import AutoModelForCausalLM
_m = await AutoModelForCausalLM.from_pretrained({model!r}, dtype={dtype!r}, device="wasm", strict=True)
try:
    _out = await _m.generate({ids!r}, max_new_tokens={NEW_TOKENS}, do_sample=False)
finally:
    _m.dispose()
[int(x) for x in _out[0, {len(ids)}:]]
""")


def _tjs_run(page, model, dtype, ids):
    cfg = {"lib": "transformers.js", "model": model, "dtype": dtype, "device": "wasm", "threads": 1,
           "max_new_tokens": NEW_TOKENS, "ids": ids, "tjs_ort": "site", "agent_memory": False}
    try:
        return page.page.evaluate("cfg => runBench(cfg)", cfg)
    except Exception as e:  # the JS error text names the failing op / file
        return {"error": str(e)}


@pytest.mark.parametrize("model,dtype", _cases())
def test_transformers_js_greedy_equals_webformers(model, dtype, tjs_page, shared_page):
    ids = _prompt_ids(model)
    try:
        ours = _webformers_greedy(shared_page, model, dtype, ids)
    except Exception as e:
        ours = None
        ours_error = str(e)
    tjs = _tjs_run(tjs_page, model, dtype, ids)
    RESULTS[f"{model}:{dtype}"] = {"webformers": ours, "transformers.js": tjs.get("ids"), "error": tjs.get("error")}
    if ours is None:
        pytest.fail(f"webformers itself cannot run {model} {dtype} (a model/runtime problem, not interop); "
                    f"transformers.js: {'ok' if 'error' not in tjs else 'fails too'}. webformers error: "
                    f"{ours_error[-600:]}")
    assert "error" not in tjs, f"transformers.js could not run our {model} {dtype} variant: {tjs['error'][:800]}"
    assert tjs["prompt_ids"] == ids
    assert len(ours) >= 1
    assert tjs["ids"] == ours, f"{model} {dtype}: transformers.js {tjs['ids']} != webformers {ours}"


def test_transformers_js_forward_feeds_num_logits_to_keep(tjs_page):
    """Our decoder has the extra scalar int64 input num_logits_to_keep: transformers.js feeds it —
    0 (all positions) in a plain forward call, 1 in generate (covered above). A forward call must
    return logits for every position, and the last position's argmax is the first greedy token."""
    ids = _prompt_ids(TINY)
    got = tjs_page.page.evaluate("""async ({ids}) => {
      const w = new BenchTjsWorker();
      await w.alive;
      try {
        await w.call("init", { threads: 1, ort: "site" });
        await w.call("load", { model: "webformers/tiny-random-llama", dtype: "fp32", device: "wasm" });
        return await w.call("forward", { ids });
      } finally { w.worker.terminate(); }
    }""", {"ids": ids})
    assert "num_logits_to_keep" in got["input_names"]
    cfg = json.loads((SITE / "models" / TINY / "config.json").read_text())
    assert got["dims"] == [1, len(ids), cfg["vocab_size"]]
    from webformers.toolchain.evaluate import reference_greedy

    ref = reference_greedy(SITE / "models" / TINY, "fp32", ids, 1)
    assert got["argmax"][-1] == ref[0]


def test_transformers_js_tokenizer_matches_ours(tjs_page, shared_page):
    """The same tokenizer.json gives the same ids in transformers.js and in webformers."""
    texts = ["Once upon a time", "Héllo, wörld! 123 — emoji 🤖 and\ttabs\n\nnewlines", "  leading spaces"]
    got = tjs_page.page.evaluate("""async ({texts}) => {
      const w = new BenchTjsWorker();
      await w.alive;
      try {
        await w.call("init", { threads: 1, ort: "site" });
        await w.call("load", { model: "webformers/tiny-random-llama", dtype: "fp32", device: "wasm" });
        const out = [];
        for (const text of texts) out.push(await w.call("encode", { text }));
        return out;
      } finally { w.worker.terminate(); }
    }""", {"texts": texts})
    ours = run_py(shared_page, f"""
from webformers import AutoTokenizer
_t = await AutoTokenizer.from_pretrained({TINY!r})
[_t.encode(s) for s in {texts!r}]
""")
    assert got == ours
