"""Execution forms (runtime.forms): the dtype picks the files, the form picks what runs.

CPython: the fp32 form of the tiny model's q4 / q4f16 / q2 / bnb4 gives the stored file's greedy tokens,
folds every weight at load, and webformers/assets/exec-form.js builds the same model as runtime/exec_form.py; the choice
rules and the argument errors. Browser (WASM): the fp32 form generates CPython onnxruntime's greedy tokens
for the variant (tiny and SmolLM2 q4) from the variant's own downloaded bytes, a small ``max_memory`` keeps
native, the page's load panel shows the form, and a warm start creates the same form.
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, SITE, dump_json, run_async, run_py

TINY = "webformers/tiny-random-llama"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
VARIANTS = ["q4", "q4f16", "q2", "bnb4"]
PROMPT = [1, 504, 3156, 1240, 253, 980]


def _repo(model):
    path = SITE / "models" / model
    if not (path / "onnx" / "manifest.json").exists():
        pytest.fail(f"{path} is not built: run python3 build.py build")
    return path


def _file(model, dtype):
    from webformers.dtypes import onnx_file

    return _repo(model) / onnx_file("model", dtype)


async def _greedy(session, n=8):
    """Greedy tokens after PROMPT and the first step's last logits, through a backend session."""
    names = [k for k in session.input_names if k.startswith("past_key_values.")]
    cfg = json.loads((_repo(TINY) / "config.json").read_text())
    heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    past = {k: np.zeros((1, heads, 0, head_dim), np.float32) for k in names}
    ids, toks, first = np.array([PROMPT]), [], None
    for _ in range(n):
        plen = next(iter(past.values())).shape[2]
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, plen + ids.shape[1]), np.int64),
                 "position_ids": np.arange(plen, plen + ids.shape[1])[None], **past}
        if "num_logits_to_keep" in session.input_names:
            feeds["num_logits_to_keep"] = np.array(1, np.int64)
        r = await session.run(feeds)
        logits = np.asarray(r["logits"][0, -1], np.float32)
        first = logits if first is None else first
        toks.append(int(logits.argmax()))
        past = {k.replace("present.", "past_key_values."): v for k, v in r.items() if k.startswith("present.")}
        ids = np.array([[toks[-1]]])
    return toks, first


# ------------------------------------------------------------------------------------------- CPython

@pytest.mark.parametrize("dtype", VARIANTS)
def test_fp32_form_gives_the_stored_variants_tokens(dtype):
    from webformers.runtime import backend
    from webformers.runtime.onnx_info import quantized_matmul_weights

    data = _file(TINY, dtype).read_bytes()

    async def go():
        native = await backend.create_session(data, device="wasm")
        fp32 = await backend.create_session(data, device="wasm", form="fp32")
        return native.form, fp32.form, await _greedy(native), await _greedy(fp32)

    native_form, fp32_form, (ref, ref_logits), (toks, logits) = run_async(go())
    assert native_form == {"form": "native", "changed": 0, "weights": 0, "rewrite_ms": 0.0}
    assert fp32_form["form"] == "fp32" and fp32_form["changed"] == 15 and fp32_form["rewrite_ms"] > 0
    assert fp32_form["weights"] == quantized_matmul_weights(data) > 0
    assert toks == ref
    assert np.abs(logits - ref_logits).max() < (1e-3 if dtype == "q4f16" else 1e-5)


@pytest.mark.parametrize("dtype", VARIANTS)
def test_fp32_form_folds_every_weight_at_load(dtype, tmp_path):
    import onnx
    import onnxruntime as ort

    from webformers.runtime.exec_form import SESSION_CONFIG, expand_quantized_matmuls

    m = onnx.load(_file(TINY, dtype))
    assert expand_quantized_matmuls(m, "fp32")["changed"] == 15
    path = tmp_path / "fp32.onnx"
    onnx.save_model(m, path)

    def optimized_ops(config, model=path):
        o = ort.SessionOptions()
        o.log_severity_level = 3
        for k, v in config.items():
            o.add_session_config_entry(k, v)
        o.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(str(model), o, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)

    ops = optimized_ops(SESSION_CONFIG)
    assert ops["MatMulNBits"] == ops["MatMulBnb4"] == ops["DequantizeLinear"] == 0  # all decoded at load
    assert ops["FusedMatMul"] >= 15
    if dtype != "bnb4":  # without the option onnxruntime keeps DequantizeLinear unfolded
        assert optimized_ops({})["DequantizeLinear"] == 15
    # each step runs what the float model runs: one matmul per linear (the float-zero-point correction's
    # block sums, matmul and add are folded into the weights), no more Adds or ReduceSums
    float_ops = optimized_ops({}, _file(TINY, "fp16" if dtype.endswith("f16") else "fp32"))

    def per_step(c):
        return c["MatMul"] + c["FusedMatMul"] + c["Gemm"], c["Add"], c["ReduceSum"]

    assert per_step(ops) == per_step(float_ops)


def test_native_form_leaves_the_model_and_bad_forms_raise():
    import onnx

    from webformers.runtime import backend
    from webformers.runtime.exec_form import expand_quantized_matmuls

    m = onnx.load(_file(TINY, "q4"))
    before = m.SerializeToString()
    assert expand_quantized_matmuls(m, "native") == {"changed": 0, "weights": 0}
    assert m.SerializeToString() == before
    with pytest.raises(ValueError, match="choose one of: native, fp32"):
        expand_quantized_matmuls(m, "int3")
    with pytest.raises(ValueError, match="choose one of: native, fp32"):
        run_async(backend.create_session(before, device="wasm", form="int3"))


def _js_rewrite(src, out):
    script = ("import { readFileSync, writeFileSync } from 'node:fs';"
              f"import {{ expandQuantizedMatmuls }} from '{(ROOT / 'pysrc' / 'webformers' / 'assets' / 'exec-form.js').as_uri()}';"
              f"const r = expandQuantizedMatmuls(new Uint8Array(readFileSync({json.dumps(str(src))})), 'fp32');"
              f"writeFileSync({json.dumps(str(out))}, r.bytes);"
              "console.log(JSON.stringify({changed: r.changed, weights: r.weights}));")
    return json.loads(subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True,
                                     check=True).stdout)


@pytest.mark.parametrize("model,dtype", [(TINY, d) for d in VARIANTS + ["fp32", "q8"]]
                         + [("openai/whisper-tiny.en", "decoder_model_merged_q4")])
def test_js_rewrite_builds_the_same_model(model, dtype, tmp_path):
    """webformers/assets/exec-form.js == runtime/exec_form.py (the Whisper decoder has If subgraphs)."""
    import onnx

    from webformers.runtime.exec_form import expand_quantized_matmuls
    from webformers.runtime.onnx_info import quantized_matmul_weights

    src = (_repo(model) / "onnx" / f"{dtype}.onnx" if dtype.startswith("decoder") else _file(model, dtype))
    res = _js_rewrite(src, tmp_path / "js.onnx")
    m = onnx.load(src)
    assert res == expand_quantized_matmuls(m, "fp32")
    assert res["weights"] == quantized_matmul_weights(src.read_bytes())
    assert (res["changed"] > 0) == (dtype not in ("fp32", "q8"))
    assert onnx.load(tmp_path / "js.onnx") == m


def test_models_below_opset_21_stay_native(tmp_path):
    """The fixture repo's MatMulNBits models import opset 17: no blocked DequantizeLinear, so no fp32 form."""
    from make_fixture_repo import make_repo

    from webformers.runtime.forms import ModuleFacts, check_form_args, choose_forms
    from webformers.runtime.load import load_sessions
    from webformers.runtime.onnx_info import onnx_opset
    from webformers.store import ModelRepo

    repo_dir = make_repo(tmp_path / "opset17", report=False)
    assert onnx_opset((repo_dir / "onnx" / "encoder_model_q4.onnx").read_bytes()) == 17
    assert onnx_opset(_file(TINY, "q4").read_bytes()) == 21

    async def go():
        loaded = await load_sessions(await ModelRepo.open(str(repo_dir)), dtype="q4", device="wasm",
                                     execution="fp32")
        loaded.dispose()
        return loaded.timings["forms"]

    reasons = {m: (f["form"], f["reason"]) for m, f in run_async(go()).items()}
    why = ("native", "native: the model imports ONNX opset 17; the fp32 form needs >= 21")
    assert reasons == {"encoder_model": why, "decoder_model_merged": why}
    c = choose_forms([ModuleFacts("model", "q4", 10, 10, 17)], check_form_args(), device="wasm",
                     backend="onnxruntime-web")["model"]
    assert (c.form, c.reason) == why


def test_matmuls_without_an_fp32_form_stay_as_they_are(tmp_path):
    """A MatMulNBits with g_idx, one with 3-bit codes and one whose weight is in typed fields are left alone,
    by both rewrites and by the weight count."""
    import onnx
    from onnx import numpy_helper

    from webformers.runtime.exec_form import expand_quantized_matmuls
    from webformers.runtime.onnx_info import quantized_matmul_weights

    m = onnx.load(_file(TINY, "q4"))
    mm = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    while len(mm[0].input) < 5:
        mm[0].input.append("")
    mm[0].input[4] = "g_idx"
    next(a for a in mm[1].attribute if a.name == "bits").i = 3
    inits = {t.name: t for t in m.graph.initializer}
    typed = inits[mm[2].input[1]]
    values = numpy_helper.to_array(typed)
    typed.ClearField("raw_data")
    typed.int32_data.extend(int(v) for v in values.reshape(-1))
    kept = sum(next(a.i for a in n.attribute if a.name == "K") * next(a.i for a in n.attribute if a.name == "N")
               for n in mm[:3])
    src = tmp_path / "mixed.onnx"
    onnx.save_model(m, src)
    total = quantized_matmul_weights(_file(TINY, "q4").read_bytes())
    assert quantized_matmul_weights(src.read_bytes()) == total - kept
    res = _js_rewrite(src, tmp_path / "js.onnx")
    assert res == expand_quantized_matmuls(m, "fp32") == {"changed": 12, "weights": total - kept}
    assert onnx.load(tmp_path / "js.onnx") == m
    assert [n.name for n in m.graph.node if n.op_type == "MatMulNBits"] == [n.name for n in mm[:3]]


def test_cpython_auto_runs_the_stored_file_and_fp32_is_reported():
    from webformers import AutoModelForCausalLM

    async def go(**kw):
        m = await AutoModelForCausalLM.from_pretrained(str(_repo(TINY)), dtype="q4", device="wasm", **kw)
        out = await m.generate(PROMPT, max_new_tokens=8, eos_token_id=None)
        m.dispose()
        return out[0].tolist(), dict(m.load_timings)

    auto_ids, auto_t = run_async(go())
    fp32_ids, fp32_t = run_async(go(execution="fp32"))
    native_ids, native_t = run_async(go(execution="native"))
    assert auto_ids == fp32_ids == native_ids
    assert "forms" not in auto_t  # CPython's default: nothing chosen
    f = fp32_t["forms"]["model"]
    assert f["form"] == "fp32" and f["reason"] == "fp32: execution='fp32'"
    assert f["expanded_matmuls"] == 15 and f["expanded_weights"] > 0 and f["rewrite_ms"] > 0
    assert f["session_config"] == {"session.disable_quant_qdq": "1"}
    size = (_file(TINY, "q4")).stat().st_size
    assert f["est_peak_bytes"] == size + 8 * f["expanded_weights"]
    assert native_t["forms"]["model"] == {"form": "native", "reason": "native: execution='native'",
                                          "est_peak_bytes": size, "expanded_matmuls": 0, "expanded_weights": 0,
                                          "rewrite_ms": 0.0}


def test_fp32_on_cpython_without_onnx_says_how_to_get_it(monkeypatch):
    from webformers import AutoModelForCausalLM

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError

    async def go(**kw):
        m = await AutoModelForCausalLM.from_pretrained(str(_repo(TINY)), dtype="q4", device="wasm", **kw)
        m.dispose()
        return m.load_timings

    with pytest.raises(ImportError, match=r"onnx package.*pip install 'webformers\[toolchain\]'"):
        run_async(go(execution="fp32"))
    assert "forms" not in run_async(go())  # auto: the stored file, no onnx needed


def test_bad_execution_and_max_memory_raise_before_any_io():
    from webformers import AutoModelForCausalLM, pipeline
    from webformers.page import chat
    from webformers.runtime.forms import parse_max_memory
    from webformers.runtime.load import load_sessions

    missing = "/nonexistent/repo"  # the argument error comes first
    for call in (lambda: AutoModelForCausalLM.from_pretrained(missing, execution="int8"),
                 lambda: pipeline("text-generation", missing, execution="int8"),
                 lambda: pipeline("automatic-speech-recognition", missing, execution="int8"),
                 lambda: chat.load(missing, execution="int8"),
                 lambda: load_sessions(None, execution="int8")):
        with pytest.raises(ValueError, match=r"unknown execution 'int8'; valid choices: 'auto', 'native', 'fp32'"):
            run_async(call())
    with pytest.raises(ValueError, match=r"max_memory must be a positive number of bytes or a size like '1.5GB'"):
        run_async(AutoModelForCausalLM.from_pretrained(missing, max_memory="lots"))
    for bad in (0, -5, True, "1.5 parsecs", "GB", [1]):
        with pytest.raises(ValueError, match="max_memory must be"):
            parse_max_memory(bad)
    assert parse_max_memory("1.5GB") == 1_500_000_000 and parse_max_memory("800MiB") == 800 * 2**20
    assert parse_max_memory(123) == 123 and parse_max_memory(2e9) == 2_000_000_000
    assert parse_max_memory(None) == 2_500_000_000


def test_choice_rules():
    from webformers.runtime.forms import FormChoice, ModuleFacts, check_form_args, choose_forms

    web, cpy = "onnxruntime-web", "onnxruntime"
    q4 = ModuleFacts("model", "q4", 90_000_000, 134_000_000)  # est. peak 90 MB + 8 B x 134M = 1.16 GB

    def one(facts, device="wasm", backend=web, **kw):
        return choose_forms([facts], check_form_args(**kw), device=device, backend=backend)[facts.module]

    c = one(q4)
    assert (c.form, c.est_peak_bytes) == ("fp32", 90_000_000 + 8 * 134_000_000)
    assert c.reason == "fp32: wasm, the load's est. peak 1.16 GB <= max_memory 2.50 GB"
    c = one(q4, max_memory="1GB")
    assert (c.form, c.est_peak_bytes) == ("native", 90_000_000)
    assert c.reason == "native: wasm, the fp32 form's est. peak 1.16 GB > max_memory 1.00 GB"
    assert one(q4, device="webgpu").reason == "native: webgpu has kernels for the quantized matmuls"
    assert one(q4, backend=cpy).reason == "native: CPython onnxruntime runs the stored file (the reference)"
    assert one(q4, max_memory="1GB", execution="fp32").form == "fp32"  # explicit: the budget does not apply
    assert one(q4, device="webgpu", execution="fp32").form == "fp32"
    assert one(q4, execution="native").reason == "native: execution='native'"
    assert one(ModuleFacts("model", "q8", 1, None), execution="fp32").reason == "native: q8 has no fp32 form"
    assert one(ModuleFacts("model", "q4", 1, 0)).reason == "native: no block-quantized matmul with a constant weight"
    bnb4 = one(ModuleFacts("model", "bnb4", 90_000_000, 134_000_000))
    assert bnb4.est_peak_bytes == 90_000_000 + 16 * 134_000_000
    # a load's modules share the budget, in load order; a warm-started module keeps its recorded choice
    enc, dec = ModuleFacts("enc", "q4", 10**8, 10**8), ModuleFacts("dec", "q4", 10**8, 10**8)
    both = choose_forms([enc, dec], check_form_args(max_memory="1.2GB"), device="wasm", backend=web)
    assert (both["enc"].form, both["dec"].form) == ("fp32", "native")
    warm = FormChoice("native", "recorded", 10**8)
    both = choose_forms([enc, dec], check_form_args(max_memory="1.2GB"), device="wasm", backend=web,
                        fixed={"enc": warm})
    assert both["enc"] is warm and both["dec"].form == "fp32"


def test_the_form_is_part_of_the_session_key():
    from webformers.runtime.backend import session_key
    from webformers.runtime.forms import check_form_args

    files = [{"sha256": "ab"}]
    keys = {session_key(files, "wasm", None, f) for f in ("native", "fp32")}
    assert len(keys) == 2
    auto = check_form_args()
    key = auto.key("q4", "wasm", "onnxruntime-web", ["ab", "cd"])
    assert key.startswith("auto<=2500000000:")  # the choice depends on every file of the load
    assert key != auto.key("q4", "wasm", "onnxruntime-web", ["ab", "ce"])
    assert key != check_form_args(max_memory="1GB").key("q4", "wasm", "onnxruntime-web", ["ab", "cd"])
    assert auto.key("q4", "webgpu", "onnxruntime-web", ["ab"]) == "native"
    assert auto.key("q8", "wasm", "onnxruntime-web", ["ab"]) == "native"
    assert check_form_args("fp32").key("q4", "wasm", "onnxruntime-web", ["ab"]) == "fp32"


# ------------------------------------------------------------------------------------------- browser

def _model_responses(page):
    """(url, bytes) of every response for a model's onnx/ files the page's context receives."""
    got = []

    def on_response(r):
        if "/onnx/" in r.url and r.url.endswith(".onnx"):
            got.append((r.url, int(r.headers.get("content-length", "-1"))))

    page.context.on("response", on_response)
    return got


@pytest.mark.browser
@pytest.mark.parametrize("dtype", ["q4", "bnb4", "q2"])
def test_fp32_form_in_page_equals_cpython(wf_page, dtype):
    from webformers.toolchain import reference_greedy

    n = 12
    ref = [int(t) for t in reference_greedy(_repo(TINY), dtype, PROMPT, n)][-n:]
    responses = _model_responses(wf_page)
    res = json.loads(run_py(wf_page, f"""
import json
from webformers.page import chat
info = await chat.load({TINY!r}, {dtype!r}, "wasm")
out = await chat.generate_ids({PROMPT!r}, {n})
json.dumps({{"info": info, "ids": out["ids"]}})
"""))
    man = json.loads((_repo(TINY) / "onnx" / "manifest.json").read_text())
    path = f"onnx/model{'' if dtype == 'fp32' else '_' + dtype}.onnx"
    assert res["ids"] == ref
    f = res["info"]["forms"]["model"]
    assert f["form"] == "fp32" and f["expanded_matmuls"] == 15 and f["rewrite_ms"] > 0
    assert f["reason"].startswith("fp32: wasm, the load's est. peak") and f["est_peak_bytes"] > man["files"][path]["size"]
    # what was downloaded is the variant's own file, as the native form fetches it
    assert responses == [(f"{wf_page.server.url}/models/{TINY}/{path}", man["files"][path]["size"])]
    # the page's load panel names the form
    wf_page.wait_for_function("document.getElementById('load-status').className === 'ok'")
    assert f"(model: {dtype}, fp32 form)" in wf_page.inner_text("#load-status")
    assert "fp32: wasm" in wf_page.get_attribute("#load-status", "title")


@pytest.mark.browser
def test_small_max_memory_keeps_native_in_page(wf_page):
    """Under a max_memory the fp32 form would exceed but the stored form fits (the memory plan's estimate),
    SmolLM2 q4 runs native, with CPython's tokens; a max_memory nothing fits is refused before any load."""
    from webformers.toolchain import reference_greedy

    n = 4
    ref = [int(t) for t in reference_greedy(_repo(SMOL), "q4", PROMPT, n)][-n:]
    res = json.loads(run_py(wf_page, f"""
import json
from webformers import AutoModelForCausalLM
from webformers.runtime.memory import MemoryPlanError
m = await AutoModelForCausalLM.from_pretrained({SMOL!r}, dtype="q4", device="wasm", max_memory="800MB")
out = await m.generate({PROMPT!r}, max_new_tokens={n}, eos_token_id=None)
m.dispose()
try:
    await AutoModelForCausalLM.from_pretrained({SMOL!r}, dtype="q4", device="wasm", max_memory="4MB")
    refused = None
except MemoryPlanError as e:
    refused = str(e)
json.dumps({{"ids": [int(t) for t in out[0][{len(PROMPT)}:]], "timings": m.load_timings, "refused": refused}})
"""))
    assert res["ids"] == ref
    f = res["timings"]["forms"]["model"]
    assert f["form"] == "native" and f["expanded_matmuls"] == 0
    assert f["reason"].startswith("native: wasm, the fp32 form's est. peak") and "> max_memory 800 MB" in f["reason"]
    assert res["refused"] and "4 MB" in res["refused"], res["refused"]


@pytest.mark.browser
def test_warm_start_creates_the_same_form(browser, server):
    context = browser.new_context()
    try:
        def visit(**kw):
            page = context.new_page()
            page.goto(server.url + "/site.json")
            boot = page.evaluate("""async (warm) => {
                const { WebformersClient } = await import("/wf-client.js");
                window.wf = new WebformersClient({ warmStart: warm });
                return await window.wf.ready; }""", TINY)
            args = "".join(f", {k}={v!r}" for k, v in kw.items())
            r = page.evaluate("code => window.wf.runPython(code)", f"""
from webformers import AutoModelForCausalLM
m = await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype="q4", device="wasm"{args})
out = await m.generate({PROMPT!r}, max_new_tokens=8, eos_token_id=None)
m.dispose()
{{"ids": [int(x) for x in out[0]], "timings": dict(m.load_timings)}}
""")
            page.close()
            return boot, r

        _, first = visit()
        assert first["timings"]["forms"]["model"]["form"] == "fp32" and "warm_started" not in first["timings"]
        boot, again = visit()
        assert boot["warm_start_modules"] == 1
        assert again["timings"]["warm_started"] == ["model"] and again["ids"] == first["ids"]
        f = again["timings"]["forms"]["model"]
        assert f["form"] == "fp32" and f["expanded_matmuls"] == 15  # the replay rewrote the model too
        assert f["reason"] == first["timings"]["forms"]["model"]["reason"]
        _, native = visit(execution="native")  # another form: not adopted
        assert "warm_started" not in native["timings"] and native["ids"] == first["ids"]
        assert native["timings"]["forms"]["model"]["form"] == "native"
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.slow
def test_smollm2_q4_fp32_form_in_page_equals_cpython(shared_page):
    from tokenizers import Tokenizer

    from webformers.toolchain import reference_greedy

    repo, n = _repo(SMOL), 24
    tok = Tokenizer.from_file(str(repo / "tokenizer.json"))
    prompts = [tok.encode(p, add_special_tokens=False).ids for p in ("Once upon a time", "def fibonacci(n):")]
    want = [[int(t) for t in reference_greedy(repo, "q4", p, n)][-n:] for p in prompts]
    got = json.loads(run_py(shared_page, f"""
import json
from webformers.page import chat
out = {{}}
for execution in ("auto", "native"):
    info = await chat.load({SMOL!r}, "q4", "wasm", execution=execution)
    runs = [await chat.generate_ids(ids, {n}) for ids in {prompts!r}]
    out[execution] = {{"forms": info["forms"], "load_ms": info["load_ms"], "ids": [r["ids"] for r in runs],
                      "step_ms": [r["stats"]["step_run_ms_mean"] for r in runs]}}
chat.dispose()
json.dumps(out)
""", timeout_ms=1_800_000))
    dump_json("exec_forms_smollm2_q4.json", got)
    assert got["auto"]["forms"]["model"]["form"] == "fp32" and got["native"]["forms"]["model"]["form"] == "native"
    assert got["auto"]["forms"]["model"]["expanded_matmuls"] == 211
    for form in ("auto", "native"):
        assert got[form]["ids"] == want, form
