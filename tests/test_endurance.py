"""Long sessions in a real browser: nothing grows, leaks or corrupts.

- a dispose loop (load, generate, ``dispose()``, ten times, on WebGPU) keeps the device, gives
  the same tokens every time and frees what it made;
- a 50-turn chat (SmolLM2) with the KV cache reused between turns grows no memory beyond its KV cache's
  own growth and a small bound;
- two tabs of one origin loading the same model at once both get it right, and the cache they filled
  serves a third load with no model byte downloaded.

The pages run the webformers worker with the benchmark's probes (``bench/probe.js`` as its hooks module):
``benchMemory`` reports both workers' WebAssembly memories, the live GPU buffer bytes and the JS heap.
Memory figures go to test-artifacts/endurance.json.
"""
from __future__ import annotations

import json

import pytest

from helpers import SITE, PageSession, dump_json, origin_violations, run_py

pytestmark = pytest.mark.browser

TINY = "webformers/tiny-random-llama"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203]
NEW = 8
#: new tokens per round of the WebGPU dispose loop (software-rendered WebGPU: ~3 s per decode step here)
NEW_LOOP = 3
MB = 1 << 20
FIGURES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _write_figures():
    yield
    if FIGURES:
        dump_json("endurance.json", FIGURES)


def _probed_page(browser, server, context=None) -> PageSession:
    """A page of the site running a webformers worker with the probes installed (window.wf)."""
    s = PageSession(browser, server, path="/bench.html", boot=False, context=context)
    s.page.wait_for_function("!!window.runBench", timeout=60_000)
    s.page.evaluate("""async () => {
        const { WebformersClient } = await import("/wf-client.js");
        window.wf = new WebformersClient({ hooks: new URL("/bench/probe.js", location.href).href });
        await window.wf.ready;
    }""")
    return s


def _memory(s: PageSession) -> dict:
    return s.page.evaluate("() => window.wf.call('benchMemory')")


def _reference(dtype: str, new: int = NEW) -> list[int]:
    from webformers.toolchain import reference_greedy
    return [int(t) for t in reference_greedy(SITE / "models" / TINY, dtype, PROMPT, new)][-new:]


def test_dispose_loop_keeps_the_device_and_frees_what_it_made(browser, server):
    device, dtype = "webgpu", "q4"
    s = _probed_page(browser, server)
    try:
        want = _reference(dtype, NEW_LOOP)
        rows = []
        for i in range(10):
            got = run_py(s, f"""
from webformers import AutoModelForCausalLM
_m = await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype={dtype!r}, device={device!r}, strict=True)
try:
    _out = await _m.generate({PROMPT!r}, max_new_tokens={NEW_LOOP}, do_sample=False)
    _dev = _m.device
finally:
    _m.dispose()
[_dev, [int(x) for x in _out[0, {len(PROMPT)}:]]]
""")
            assert got == [device, want], f"round {i}: {got} != {[device, want]}"
            rows.append(_memory(s))
        FIGURES[f"dispose_loop_{device}"] = rows
        # after the first rounds (allocators warm), ten loads and disposals grow nothing
        assert rows[-1]["gpu_live_bytes"] <= rows[1]["gpu_live_bytes"] + 1 * MB, rows
        assert rows[-1]["wasm_bytes"] <= rows[1]["wasm_bytes"] + 16 * MB, rows
        assert rows[1]["gpu_peak_bytes"] > 0, "no GPU buffer was made: the WebGPU path did not run"
        assert not origin_violations(s)
    finally:
        s.close()


def test_fifty_chat_turns_reuse_the_cache_and_grow_nothing(browser, server):
    """SmolLM2 q4 (its greedy replies re-tokenize to the tokens generated, so every turn extends the kept
    cache; the tiny random model's do not)."""
    cfg = json.loads((SITE / "models" / SMOL / "config.json").read_text())
    kv_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * \
        (cfg["hidden_size"] // cfg["num_attention_heads"]) * 4
    s = _probed_page(browser, server)
    try:
        run_py(s, f"""
from webformers import pipeline
_pipe = await pipeline("text-generation", {SMOL!r}, dtype="q4", device="wasm", strict=True)
_chat = []
""")
        rows = []
        for turn in range(50):
            stats = run_py(s, f"""
_chat.append({{"role": "user", "content": "Name a number bigger than {turn}."}})
_out = await _pipe(_chat, max_new_tokens=6, do_sample=False)
_chat = _out[0]["generated_text"]
_s = _pipe.model.last_generation_stats
{{"prompt_tokens": _s["prompt_tokens"], "reused_tokens": _s["reused_tokens"], "turns": len(_chat)}}
""")
            assert stats["turns"] == 2 * (turn + 1), stats
            if turn:
                assert stats["reused_tokens"] > 0, f"turn {turn} did not reuse the KV cache: {stats}"
            if turn in (9, 49):
                rows.append({"turn": turn + 1, **stats, **_memory(s)})
        FIGURES["chat_50_turns"] = rows
        first, last = rows
        # 40 more turns: the KV cache grows by their tokens; beyond that, memories grow by a small bound only
        kv_growth = (last["prompt_tokens"] - first["prompt_tokens"]) * kv_per_token
        FIGURES["chat_50_turns_kv_growth_bytes"] = kv_growth
        assert last["wasm_bytes"] - first["wasm_bytes"] <= kv_growth + 32 * MB, rows
        if first["js_heap_bytes"] and last["js_heap_bytes"]:
            assert last["js_heap_bytes"] - first["js_heap_bytes"] <= 32 * MB, rows
        run_py(s, "_pipe.dispose()")
    finally:
        s.close()


def test_two_tabs_load_one_model_at_once_without_corrupting_the_cache(browser, server):
    context = browser.new_context()
    tabs = [_probed_page(browser, server, context=context) for _ in range(2)]
    try:
        run_py(tabs[0], "from webformers.store import cached_models, delete_cached\n"
                        "for _c in await cached_models():\n    await delete_cached(_c['model'])\nNone")
        load = f"""
from webformers import AutoModelForCausalLM
_m = await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype="q4", device="wasm", strict=True)
_out = await _m.generate({PROMPT!r}, max_new_tokens={NEW}, do_sample=False)
_m.dispose()
[int(x) for x in _out[0, {len(PROMPT)}:]]
"""
        # both tabs start the load before either finishes
        for i, t in enumerate(tabs):
            t.page.evaluate("code => { window._load = window.wf.runPython(code); }", load)
        got = [t.page.evaluate("() => window._load") for t in tabs]
        want = _reference("q4")
        assert got == [want, want]
        before = len(server.log)
        again = run_py(tabs[1], load)
        model_requests = [r for r in server.log[before:] if r["path"].startswith(f"/models/{TINY}/onnx/")]
        assert again == want
        assert not [r for r in model_requests if r["path"].endswith(".onnx")], \
            f"the third load downloaded model bytes again: {model_requests}"
        events = run_py(tabs[1], f"""
from webformers.store import cached_models
[e for e in await cached_models() if e["model"] == {TINY!r}]
""")
        assert events, "the model is not in the cache after two loads"
        for t in tabs:
            assert not origin_violations(t)
        FIGURES["two_tabs"] = {"cached": json.loads(json.dumps(events))}
    finally:
        context.close()
