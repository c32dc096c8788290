"""Generation in the page (Pyodide + onnxruntime-web, WASM): greedy equals CPython onnxruntime,
streaming events arrive while generating, cancel stops within one token, the KV cache is reused."""
from __future__ import annotations

import json

import pytest

from helpers import dump_json, run_py

pytestmark = pytest.mark.browser

MODEL = "webformers/tiny-random-llama"
N_NEW = 16


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    from webformers.toolchain import build_demo_models
    root = tmp_path_factory.mktemp("gen-models")
    build_demo_models(root, which=("tiny",))
    return root


@pytest.fixture
def page_with_models(server, wf_page, models_root):
    server.add_root("/fixtures/gen-models/", models_root)
    return wf_page, server.url + "/fixtures/gen-models"


def _prompt(models_root):
    from webformers.text.tokenizer import Tokenizer
    repo = models_root / MODEL
    tok_cfg = repo / "tokenizer_config.json"
    tok = Tokenizer.from_json((repo / "tokenizer.json").read_text(),
                              json.loads(tok_cfg.read_text()) if tok_cfg.exists() else {})
    return list(tok.encode("Once upon a time, in a small village"))


def _load(host, dtype="fp32", device="wasm"):
    return f"""
import asyncio, json, time
from webformers import AutoModelForCausalLM, AutoTokenizer
model = await AutoModelForCausalLM.from_pretrained({MODEL!r}, dtype={dtype!r}, device={device!r}, host={host!r})
tok = await AutoTokenizer.from_pretrained({MODEL!r}, host={host!r})
"""


@pytest.mark.parametrize("dtype,device", [("fp32", "wasm"), ("fp32", "webgpu")])
def test_greedy_in_page_equals_reference(page_with_models, models_root, dtype, device):
    from webformers.toolchain import reference_greedy
    page, host = page_with_models
    prompt = _prompt(models_root)
    ref = [int(t) for t in reference_greedy(models_root / MODEL, dtype, prompt, N_NEW)]
    ref_new = ref[-N_NEW:]
    res = run_py(page, _load(host, dtype, device) + f"""
from webformers.runtime.backend._ortweb import request_counts
prompt = {prompt!r}
before = request_counts()
out = await model.generate(prompt, max_new_tokens={N_NEW}, eos_token_id=None)
after = request_counts()
requests = {{k: after.get(k, 0) - before.get(k, 0) for k in after}}
s1 = dict(model.last_generation_stats)
full = await model.generate(prompt, max_new_tokens={N_NEW}, eos_token_id=None, use_cache=False)
nxt = out[0].tolist() + tok.encode(" And then", add_special_tokens=False)
reused = await model.generate(nxt, max_new_tokens=8, eos_token_id=None)
s2 = dict(model.last_generation_stats)
from webformers.runtime.backend._ortweb import RemoteTensor  # the KV cache stays in onnxruntime's worker,
kv_is_js = isinstance(model._kv, RemoteTensor) and model._kv.type == "state"  # one state of every layer's K/V
model.clear_cache()
fresh = await model.generate(nxt, max_new_tokens=8, eos_token_id=None)
json.dumps({{"out": out[0].tolist(), "full": full[0].tolist(), "reused": reused[0].tolist(),
            "fresh": fresh[0].tolist(), "stats": {{k: v for k, v in s1.items() if not isinstance(v, list)}},
            "reused_tokens": s2["reused_tokens"], "device": model.device, "kv_is_js": kv_is_js,
            "requests": requests}})
""")
    res = json.loads(res)
    dump_json(f"generation_browser_stats_{dtype}_{device}.json", res["stats"])
    assert res["device"] == device and res["kv_is_js"]
    assert res["out"][:len(prompt)] == prompt
    assert res["out"][len(prompt):] == ref_new
    assert res["full"] == res["out"]
    assert res["reused_tokens"] == len(res["out"]) - 1
    assert res["reused"] == res["fresh"]
    st = res["stats"]
    assert st["new_tokens"] == N_NEW and st["prefill_ms"] > 0 and st["step_overhead_ms_mean"] > 0
    # one request per run: the KV tensors a step releases are freed by the next run's request (a separate
    # release request only when no run follows within _FLUSH_AFTER_S, e.g. a step delayed on a loaded machine);
    # on wasm the prefill is awaited and every decode step's reply comes through shared memory (the page is
    # cross-origin isolated and Python runs in a worker); runs over _BLOCK_MAX_RUN_MS are awaited (WebGPU on
    # SwiftShader takes ~0.4-0.6 s a step)
    req = res["requests"]
    assert req.get("run", 0) + req.get("runShared", 0) == N_NEW and req.get("release", 0) <= 2, req
    if device == "wasm":
        assert req.get("run") == 1 and req.get("runShared") == N_NEW - 1, req


def test_streaming_and_cancel_in_page(page_with_models):
    page, host = page_with_models
    res = run_py(page, _load(host) + """
from webformers import pipeline, TextIteratorStreamer
from webformers.text.pipeline import TextGenerationPipeline
pipe = TextGenerationPipeline(model, tok)
# 1. callback_function pieces arrive during generation and make up the returned continuation
pieces, runs_at_piece = [], []
r = await pipe("Once upon a time", max_new_tokens=12, eos_token_id=None, return_full_text=False,
               callback_function=lambda t: (pieces.append(t), runs_at_piece.append(len(pieces))))
# 2. token-level streamer events: prompt first, then one put per token, then end
events = []
class Rec:
    def put(self, ids): events.append(("put", [int(x) for x in __import__("numpy").asarray(ids).reshape(-1)]))
    def end(self): events.append(("end",))
out = await model.generate(tok.encode("Hello"), max_new_tokens=6, eos_token_id=None, streamer=Rec())
# 3. async iteration while generate runs as a task
st = TextIteratorStreamer(tok)
task = asyncio.ensure_future(model.generate(tok.encode("Hi"), max_new_tokens=8, eos_token_id=None, streamer=st))
it_pieces = [p async for p in st]
it_out = (await task)[0].tolist()
# 4. cancel from another task (like the page's Stop button): stops within one token
ev = asyncio.Event()
seen = []
class Count:
    def put(self, ids): seen.append(1)
    def end(self): pass
async def stopper():
    while len(seen) < 4:  # prompt + 3 tokens
        await asyncio.sleep(0)
    ev.set()
    return len(seen) - 1
stop_task = asyncio.ensure_future(stopper())
c_out = await model.generate(tok.encode("Once"), max_new_tokens=200, eos_token_id=None, streamer=Count(), cancel=ev)
at_cancel = await stop_task
json.dumps({"text": r[0]["generated_text"], "pieces": pieces, "events": events, "out": out[0].tolist(),
            "it_pieces": it_pieces, "it_text": tok.decode(it_out[len(tok.encode("Hi")):], skip_special_tokens=True),
            "cancel_new": len(c_out[0]) - len(tok.encode("Once")), "at_cancel": at_cancel,
            "cancel_reason": model.last_generation_stats["stop_reason"]})
""")
    res = json.loads(res)
    assert len(res["pieces"]) >= 2 and "".join(res["pieces"]) == res["text"]
    ev = res["events"]
    n_prompt = len(ev[0][1])
    assert ev[-1] == ["end"] and len(ev) == 1 + 6 + 1
    assert [e[1][0] for e in ev[1:-1]] == res["out"][n_prompt:]
    assert "".join(res["it_pieces"]) == res["it_text"] and len(res["it_pieces"]) >= 2
    assert res["cancel_reason"] == "cancelled"
    assert res["at_cancel"] <= res["cancel_new"] <= res["at_cancel"] + 1
