"""`build.py bench`: webformers vs transformers.js in one headless Chromium session, plus native
onnxruntime on CPython as the decode-speed limit.

Every measurement is one load of ``bench.html`` (see web/bench/page.js) with the library, model, dtype,
device, webformers' execution form (``runtime.forms``: native / fp32 / auto), thread count, prompt ids and
``max_new_tokens`` in the query string; a dtype with an fp32 form gets one config per form. Per round and config the
two libraries alternate (A/B in even rounds, B/A in odd ones); each gets a fresh browser context
(empty Cache API: the *cold* run) and then a second page in that context (model files cached: the
*warm* run). Ratios are computed pair by pair within a round, then summarised (median, min, max).

    python3 build.py bench                 # the full matrix, 3 rounds
    python3 build.py bench --quick         # SmolLM2 q4 on WASM (webformers native and fp32 forms), one round
    python3 -m buildtools.bench --help     # more knobs (threads, tokens, configs, output dir)

Writes ``bench/results/<date>.json`` and ``<date>.md`` (the markdown table, also printed).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from buildtools.common import CHROMIUM
from buildtools.common import CHROMIUM_ARGS as COMMON_CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("WEBFORMERS_DIST", ROOT / "dist")) / "site"
RESULTS = ROOT / "bench" / "results"
CHROMIUM_ARGS = [*COMMON_CHROMIUM_ARGS,
                 # performance.measureUserAgentSpecificMemory() answers at once instead of at the next GC
                 "--enable-blink-features=ForceEagerMeasureMemory"]

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY = "webformers/tiny-random-llama"
LIBS = ("webformers", "transformers.js")
#: (model, dtype, device, ratios_only, webformers' execution form)
FULL_MATRIX = ([(SMOLLM2, d, "wasm", False, "auto") for d in ("fp32", "q8")]
               + [(SMOLLM2, d, "wasm", False, e) for d in ("q4", "q4f16") for e in ("native", "fp32")]
               + [(TINY, "fp32", "webgpu", True, "auto")])
QUICK_MATRIX = [(SMOLLM2, "q4", "wasm", False, e) for e in ("native", "fp32")]
PROMPT = "Write a short story about a robot who learns to paint."
RUN_TIMEOUT_MS = 600_000

#: (key, label, unit, better) — better: "lower" or "higher"
METRICS = [
    ("cold_load_ms", "cold load (empty cache)", "ms", "lower"),
    ("warm_load_ms", "warm load (from cache)", "ms", "lower"),
    ("warm_tokenizer_ms", "… tokenizer ready (loaded concurrently with the model)", "ms", "lower"),
    ("warm_model_ms", "… model ready (cache read, checks, session)", "ms", "lower"),
    ("page_ready_ms", "page ready (library started)", "ms", "lower"),
    ("warm_page_to_first_token_ms", "page ready → first token, warm", "ms", "lower"),
    ("ttft_ms", "time to first token", "ms", "lower"),
    ("prefill_ort_ms", "… of which the prefill session.run (worker clock)", "ms", "lower"),
    ("decode_tokens_per_s", "decode", "tokens/s", "higher"),
    ("prefill_tokens_per_s", "prefill", "tokens/s", "higher"),
    ("ort_run_ms", "ORT session.run per decode step (worker clock)", "ms", "lower"),
    ("non_ort_step_ms", "rest of each decode step (library + bridge + messages)", "ms", "lower"),
    ("encode_cold_ms", "encode a ~2,000-token text, first call (worker clock)", "ms", "lower"),
    ("encode_warm_ms", "encode it again (per-word caches warm)", "ms", "lower"),
    ("peak_memory_mb", "memory after generation (measureUserAgentSpecificMemory)", "MB", "lower"),
    ("wasm_memory_mb", "WASM memory (all instances)", "MB", "lower"),
    ("gpu_buffers_peak_mb", "GPU buffers, peak", "MB", "lower"),
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------ inputs
def repo_dir(model: str) -> Path:
    return SITE / "models" / model


ENCODE_TOKENS = 2000


def encode_text(model: str) -> tuple[str, int]:
    """~2,000 tokens of varied prose and code (stdlib docstrings) for the tokenizer benchmark: (text, tokens)."""
    from tokenizers import Tokenizer

    from webformers.toolchain.evaluate import held_out_text

    tok = Tokenizer.from_file(str(repo_dir(model) / "tokenizer.json"))
    text = held_out_text()[-60_000:]  # the tail: the quality report's windows come from the head
    enc = tok.encode(text, add_special_tokens=False)
    end = enc.offsets[ENCODE_TOKENS][0]
    return text[:end], len(tok.encode(text[:end], add_special_tokens=False).ids)


def check_models(matrix) -> None:
    from webformers.dtypes import onnx_file

    missing = []
    for model, dtype, *_ in matrix:
        f = repo_dir(model) / onnx_file("model", dtype)
        if not f.is_file():
            missing.append(str(f.relative_to(ROOT)) if ROOT in f.parents else str(f))
    if missing:
        raise BenchError("model files missing (run `python3 build.py build` to convert the demo models): "
                         + ", ".join(missing))


def prompt_ids(model: str, prompt: str = PROMPT) -> list[int]:
    """The chat-formatted prompt ids, computed once on CPython (transformers' tokenizer + the repo's
    chat template) and fed as ids to every library so all of them see the same input."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(repo_dir(model)))
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        ids = tok(prompt)["input_ids"]
    return [int(i) for i in ids]


# ------------------------------------------------------------------------------------ native onnxruntime
def native_run(model: str, dtype: str, ids: list[int], max_new_tokens: int, threads: int) -> dict:
    """Greedy decoding with plain onnxruntime on CPython: the same file, thread count and inputs,
    with the least work around each run (numpy argmax, KV outputs fed straight back)."""
    import numpy as np
    import onnxruntime as ort

    from webformers.dtypes import onnx_file

    path = repo_dir(model) / onnx_file("model", dtype)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1000
    cfg = json.loads((repo_dir(model) / "config.json").read_text())
    gen = json.loads((repo_dir(model) / "generation_config.json").read_text()) \
        if (repo_dir(model) / "generation_config.json").is_file() else {}
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    np_types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    inputs = {i.name: i for i in sess.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    outputs = [o.name for o in sess.get_outputs()]
    feeds = {n: np.zeros((1, heads, 0, head_dim), dtype=np_types[inputs[n].type]) for n in past_names}

    def step(chunk, past_len):
        f = dict(feeds)
        f["input_ids"] = np.asarray([chunk], dtype=np.int64)
        if "attention_mask" in inputs:
            f["attention_mask"] = np.ones((1, past_len + len(chunk)), dtype=np.int64)
        if "position_ids" in inputs:
            f["position_ids"] = np.arange(past_len, past_len + len(chunk), dtype=np.int64)[None]
        if "num_logits_to_keep" in inputs:
            rank = len(inputs["num_logits_to_keep"].shape or [])
            f["num_logits_to_keep"] = np.ones((1,) * rank, dtype=np.int64) if rank else np.array(1, np.int64)
        res = dict(zip(outputs, sess.run(outputs, f)))
        for n in past_names:
            feeds[n] = res["present." + n[len("past_key_values."):]]
        return int(np.argmax(res["logits"][0, -1]))

    t0 = time.perf_counter()
    tok = step(ids, 0)
    t_first = time.perf_counter()
    out = [tok]
    while len(out) < max_new_tokens and tok not in eos:
        tok = step([tok], len(ids) + len(out) - 1)
        out.append(tok)
    t_end = time.perf_counter()
    r = {"load_ms": load_ms, "ttft_ms": (t_first - t0) * 1000, "new_tokens": len(out), "ids": out,
         "prefill_tokens_per_s": len(ids) / (t_first - t0)}
    if len(out) > 1:
        r["decode_tokens_per_s"] = (len(out) - 1) / (t_end - t_first)
    return r


# ------------------------------------------------------------------------------------ browser runs
def page_run(context, server_url: str, params: dict) -> dict:
    """One bench.html load in ``context``; returns the page's result (``ok`` False on failure)."""
    from urllib.parse import urlencode

    page = context.new_page()
    console = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"[:500]))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"[:500]))
    t0 = time.time()
    try:
        page.goto(server_url + "/bench.html?" + urlencode(params))
        page.wait_for_function("window.benchResult", timeout=RUN_TIMEOUT_MS)
        res = page.evaluate("window.benchResult")
    except Exception as e:  # a timeout or a crashed page is a failed run, not a crashed bench
        res = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
    finally:
        page.close()
    res["wall_s"] = round(time.time() - t0, 2)
    if not res.get("ok"):
        res["console"] = console[-15:]
    res.pop("boot", None)
    return res


def summarize(values):
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def run_figures(cold: dict, warm: dict) -> dict:
    """The per-round figures of one library from its cold and warm runs."""
    def mem(key, scale=1e-6):
        vals = [r.get("memory", {}).get(key) for r in (cold, warm) if r.get("ok")]
        vals = [v for v in vals if isinstance(v, (int, float))]
        return max(vals) * scale if vals else None

    f = {}
    if cold.get("ok"):
        f["cold_load_ms"] = cold.get("load_ms")
    if warm.get("ok"):
        for k in ("page_ready_ms", "ttft_ms", "decode_tokens_per_s", "prefill_tokens_per_s"):
            f[k] = warm.get(k)
        f["warm_load_ms"] = warm.get("load_ms")
        loaded = warm.get("loaded") or {}
        f["warm_tokenizer_ms"] = loaded.get("tokenizer_ms")
        f["warm_model_ms"] = loaded.get("model_ms")
        if warm.get("ort_run_ms"):
            f["prefill_ort_ms"] = warm["ort_run_ms"][0]
        enc = warm.get("encode") or {}
        f["encode_cold_ms"] = enc.get("cold_ms")
        f["encode_warm_ms"] = enc.get("warm_ms")
        f["warm_page_to_first_token_ms"] = warm.get("page_to_first_token_ms")
        runs = (warm.get("ort_run_ms") or [])[1:]  # the first run is the prefill
        if runs and warm.get("decode_tokens_per_s"):
            f["ort_run_ms"] = statistics.mean(runs)
            f["non_ort_step_ms"] = 1000.0 / warm["decode_tokens_per_s"] - f["ort_run_ms"]
    f["peak_memory_mb"] = mem("uasm_bytes")
    f["wasm_memory_mb"] = mem("wasm_bytes")
    gpu = mem("gpu_peak_bytes")
    f["gpu_buffers_peak_mb"] = gpu if gpu else None
    return {k: v for k, v in f.items() if v is not None}


def webformers_profile(warm: dict) -> dict | None:
    """Per decode step: ORT run vs everything else in the Python loop (from last_generation_stats)."""
    st = warm.get("stats") or {}
    if not st.get("step_run_ms"):
        return None
    runs, over = st["step_run_ms"], st.get("step_overhead_ms") or []
    return {"step_run_ms_median": statistics.median(runs),
            "step_overhead_ms_median": statistics.median(over) if over else None,
            "prefill_ms": st.get("prefill_ms"), "decode_tokens_per_s_python": st.get("decode_tokens_per_s")}


# ------------------------------------------------------------------------------------ main loop
def run(rounds: int, matrix, *, threads: int | None = 1, max_new_tokens: int = 32, budget_s: float = 14 * 60,
        tjs_ort: str = "site", native: bool = True) -> dict:
    """``threads`` None: each library keeps its own default (native onnxruntime then gets webformers' count)."""
    from playwright.sync_api import sync_playwright

    from buildtools.server import serve

    sys.path.insert(0, str(ROOT / "pysrc"))
    if not (SITE / "bench.html").is_file() or not (SITE / "site.json").is_file():
        raise BenchError(f"{SITE} has no bench.html/site.json: run `python3 build.py build`")
    if not Path(CHROMIUM).exists():
        raise BenchError(f"{CHROMIUM} is missing: run `python3 build.py setup`")
    check_models(matrix)
    ids_by_model = {m: prompt_ids(m) for m in {c[0] for c in matrix}}
    import tempfile
    encode_dir = Path(tempfile.mkdtemp(prefix="webformers-bench-"))
    encode_tokens = {}
    for i, m in enumerate(sorted(ids_by_model)):
        text, encode_tokens[m] = encode_text(m)
        (encode_dir / f"{i}.txt").write_text(text)
    encode_files = {m: f"{i}.txt" for i, m in enumerate(sorted(ids_by_model))}
    t_start = time.time()
    site = json.loads((SITE / "site.json").read_text())
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": list(os.getloadavg())},
        "settings": {"rounds_requested": rounds, "threads": threads, "max_new_tokens": max_new_tokens,
                     "prompt": PROMPT, "greedy": True, "transformers_js_ort": tjs_ort,
                     "pyodide": site.get("pyodide_version")},
        "configs": [],
    }
    for model, dtype, device, ratios_only, execution in matrix:
        result["configs"].append({"model": model, "dtype": dtype, "device": device, "ratios_only": ratios_only,
                                  "execution": execution,
                                  "prompt_tokens": len(ids_by_model[model]), "encode_tokens": encode_tokens[model],
                                  "rounds": []})
    srv = serve(SITE)
    encode_url = srv.add_root("/bench-data/", encode_dir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            result["machine"]["chromium"] = browser.version
            round_s = None
            for rnd in range(rounds):
                elapsed = time.time() - t_start
                if rnd and round_s and elapsed + round_s > budget_s:
                    log(f"stopping after {rnd} round(s): another would pass the {budget_s:.0f} s budget")
                    result["settings"]["stopped_for_budget"] = True
                    break
                t_round = time.time()
                order = LIBS if rnd % 2 == 0 else LIBS[::-1]
                for cfg in result["configs"]:
                    params_base = {"model": cfg["model"], "dtype": cfg["dtype"], "device": cfg["device"],
                                   "execution": cfg["execution"], "threads": threads or "default", "max_new_tokens": max_new_tokens,
                                   "tjs_ort": tjs_ort,
                                   "ids": ",".join(map(str, ids_by_model[cfg["model"]])),
                                   "encode_url": encode_url + encode_files[cfg["model"]]}
                    entry = {"round": rnd, "order": list(order)}
                    for lib in order:
                        ctx = browser.new_context()
                        try:
                            cold = page_run(ctx, srv.url, {**params_base, "lib": lib, "generate": 0})
                            warm = page_run(ctx, srv.url, {**params_base, "lib": lib})
                        finally:
                            ctx.close()
                        entry[lib] = {"cold": cold, "warm": warm, "figures": run_figures(cold, warm)}
                        if lib == "webformers":
                            entry[lib]["profile"] = webformers_profile(warm)
                        status = "ok" if cold.get("ok") and warm.get("ok") else \
                            f"FAILED: {_last_line(cold.get('error') or warm.get('error'))}"
                        log(f"round {rnd + 1} {cfg['model']} {cfg['dtype']}/{cfg['device']}/{cfg['execution']} "
                            f"{lib}: {status} "
                            f"decode={entry[lib]['figures'].get('decode_tokens_per_s', float('nan')):.1f} tok/s "
                            f"({cold['wall_s']}+{warm['wall_s']} s)")
                    wf_ids = entry["webformers"]["warm"].get("ids")
                    tj_ids = entry["transformers.js"]["warm"].get("ids")
                    entry["greedy_outputs_equal"] = (wf_ids == tj_ids) if wf_ids and tj_ids else None
                    encodes = [entry[lib]["warm"].get("encode") or {} for lib in LIBS]
                    if all(e.get("ids") for e in encodes):
                        entry["encode_ids_equal"] = encodes[0]["ids"] == encodes[1]["ids"]
                    for e in encodes:
                        e.pop("ids", None)
                    if native and cfg["device"] == "wasm":
                        try:
                            wf_threads = (entry["webformers"]["warm"].get("loaded") or {}).get("num_threads")
                            nat = native_run(cfg["model"], cfg["dtype"], ids_by_model[cfg["model"]],
                                             max_new_tokens, threads or wf_threads or 1)
                            entry["native"] = nat
                            entry["native_equals_webformers"] = (nat["ids"] == wf_ids) if wf_ids else None
                        except Exception as e:  # reported, not fatal
                            entry["native"] = {"error": f"{type(e).__name__}: {e}"}
                    cfg["rounds"].append(entry)
                round_s = time.time() - t_round
                log(f"round {rnd + 1} took {round_s:.0f} s")
            browser.close()
    finally:
        srv.stop()
    result["seconds"] = round(time.time() - t_start, 1)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    aggregate(result)
    return result


def _last_line(err) -> str:
    """The informative end of an error (a Python traceback ends with the exception line)."""
    lines = [ln for ln in str(err or "").splitlines() if ln.strip() and not ln.lstrip().startswith("at ")]
    return (lines[-1] if lines else str(err))[:400]


def aggregate(result: dict) -> None:
    """Medians per library and ratios computed pair by pair within each round."""
    for cfg in result["configs"]:
        per_lib = {lib: {} for lib in LIBS}
        ratios = {}
        for e in cfg["rounds"]:
            a, b = e["webformers"]["figures"], e["transformers.js"]["figures"]
            for key, *_ in METRICS:
                for lib, f in (("webformers", a), ("transformers.js", b)):
                    per_lib[lib].setdefault(key, []).append(f.get(key))
                if a.get(key) and b.get(key):
                    ratios.setdefault(key, []).append(a[key] / b[key])
            nat = e.get("native") or {}
            if nat.get("decode_tokens_per_s"):
                per_lib.setdefault("native onnxruntime", {}).setdefault("decode_tokens_per_s", []).append(
                    nat["decode_tokens_per_s"])
                per_lib["native onnxruntime"].setdefault("prefill_tokens_per_s", []).append(
                    nat["prefill_tokens_per_s"])
                per_lib["native onnxruntime"].setdefault("ttft_ms", []).append(nat["ttft_ms"])
                for lib, f in (("webformers", a), ("transformers.js", b)):
                    if f.get("decode_tokens_per_s"):
                        ratios.setdefault(f"decode_vs_native:{lib}", []).append(
                            f["decode_tokens_per_s"] / nat["decode_tokens_per_s"])
        cfg["summary"] = {lib: {k: summarize(v) for k, v in m.items() if summarize(v)} for lib, m in per_lib.items()}
        cfg["ratios"] = {k: summarize(v) for k, v in ratios.items()}
        prof = [e["webformers"].get("profile") for e in cfg["rounds"] if e["webformers"].get("profile")]
        if prof:
            cfg["webformers_step_profile"] = {k: summarize([p[k] for p in prof]) for k in prof[0]}
        eq = [e.get("greedy_outputs_equal") for e in cfg["rounds"]]
        cfg["greedy_outputs_equal"] = all(eq) if eq and None not in eq else None
        enc = [e.get("encode_ids_equal") for e in cfg["rounds"]]
        cfg["encode_ids_equal"] = all(enc) if enc and None not in enc else None
        cfg["failures"] = [{"round": e["round"], "lib": lib, "run": kind, "error": _last_line(e[lib][kind].get("error"))}
                           for e in cfg["rounds"] for lib in LIBS for kind in ("cold", "warm")
                           if not e[lib][kind].get("ok")]
    result["goals"] = goals(result)


def goals(result: dict) -> list[dict]:
    def ratio(model, dtype, device, key, execution="native"):
        for c in result["configs"]:
            if (c["model"], c["dtype"], c["device"], c["execution"]) == (model, dtype, device, execution):
                r = c["ratios"].get(key)
                return r["median"] if r else None
        return None

    out = []
    for name, key, target, cmp in [
        ("SmolLM2 q4 WASM decode ≥ 1.05 × transformers.js", "decode_tokens_per_s", 1.05, "ge"),
        ("SmolLM2 q4 WASM warm page-ready-to-first-token ≤ 1.3 × transformers.js",
         "warm_page_to_first_token_ms", 1.3, "le"),
        ("SmolLM2 q4 WASM decode ≥ 0.6 × native onnxruntime (equal threads)", "decode_vs_native:webformers", 0.6,
         "ge"),
    ]:
        v = ratio(SMOLLM2, "q4", "wasm", key)
        met = None if v is None else (v >= target if cmp == "ge" else v <= target)
        out.append({"goal": name, "ratio_median": v, "target": target, "met": met})
    return out


# ------------------------------------------------------------------------------------ report
def _fmt(s, unit):
    if not s:
        return "—"
    nd = 0 if unit in ("ms",) or s["median"] >= 100 else 1 if s["median"] >= 10 else 2
    return f"{s['median']:.{nd}f} ({s['min']:.{nd}f}–{s['max']:.{nd}f})"


def _fmt_ratio(s):
    return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f})" if s else "—"


def _threads_text(result: dict) -> str:
    if result["settings"]["threads"]:
        return f"{result['settings']['threads']} (WASM and native)"
    used = {lib: sorted({(r[lib]["warm"].get("loaded") or {}).get("num_threads") for c in result["configs"]
                         for r in c["rounds"] if lib in r} - {None}) for lib in LIBS}
    return ("each library's default (webformers: " + "/".join(map(str, used["webformers"])) +
            ", transformers.js: " + "/".join(map(str, used["transformers.js"])) + "; native: webformers' count)")


def markdown(result: dict) -> str:
    st = result["settings"]
    lines = [f"# webformers vs transformers.js — {result['date']}", "",
             f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}, Chromium "
             f"{result['machine'].get('chromium', '?')} (headless; WebGPU = SwiftShader). Threads: {_threads_text(result)}. "
             f"Greedy, {st['max_new_tokens']} new tokens max, chat-formatted prompt "
             f"\"{st['prompt']}\" fed as the same token ids to every runtime. transformers.js 4.3.1 on "
             f"{'the same onnxruntime-web 1.30.0 as webformers' if st['transformers_js_ort'] == 'site' else 'its bundled onnxruntime-web'}. "
             f"Rounds: {max((len(c['rounds']) for c in result['configs']), default=0)} "
             f"(A/B order alternating), {result['seconds']:.0f} s in all.", "",
             "Cells: median (min–max) over rounds. Ratio = webformers / transformers.js, computed within each "
             "round and then summarised; for times lower is better, for tokens/s higher is better. "
             "Load times are measured on the page around the library's own `from_pretrained` calls "
             "(tokenizer + model); 'page ready → first token' runs from navigation start.", ""]
    for c in result["configs"]:
        title = f"## {c['model']} — {c['dtype']} on {c['device']}"
        if c["execution"] != "auto":
            title += f", webformers in the {c['execution']} form"
        if c["ratios_only"]:
            title += " (software WebGPU: ratios only)"
        lines += [title, "", f"Prompt: {c['prompt_tokens']} tokens. Greedy outputs equal (webformers vs "
                  f"transformers.js): {c['greedy_outputs_equal']}. Tokenizer benchmark: "
                  f"{c.get('encode_tokens')} tokens, ids equal: {c.get('encode_ids_equal')}.", ""]
        lines += ["| figure | webformers | transformers.js | ratio wf/tjs |", "|---|---|---|---|"]
        for key, label, unit, better in METRICS:
            a = c["summary"]["webformers"].get(key)
            b = c["summary"]["transformers.js"].get(key)
            if not (a or b):
                continue
            if c["ratios_only"]:
                lines.append(f"| {label} ({unit}) | | | {_fmt_ratio(c['ratios'].get(key))} |")
            else:
                lines.append(f"| {label} ({unit}) | {_fmt(a, unit)} | {_fmt(b, unit)} | "
                             f"{_fmt_ratio(c['ratios'].get(key))} |")
        nat = c["summary"].get("native onnxruntime")
        if nat:
            lines.append(f"| native onnxruntime (CPython) decode (tokens/s) | "
                         f"{_fmt_ratio(c['ratios'].get('decode_vs_native:webformers'))} of native | "
                         f"{_fmt_ratio(c['ratios'].get('decode_vs_native:transformers.js'))} of native | "
                         f"native: {_fmt(nat.get('decode_tokens_per_s'), 'tokens/s')} |")
        prof = c.get("webformers_step_profile")
        if prof and prof.get("step_run_ms_median"):
            lines += ["", f"webformers decode step (from `last_generation_stats`): ORT run "
                      f"{_fmt(prof['step_run_ms_median'], 'x')} ms, rest of the Python loop (logits copy, "
                      f"argmax, streamer/detokenize, KV release, bridge) "
                      f"{_fmt(prof.get('step_overhead_ms_median'), 'x')} ms."]
        if c["failures"]:
            lines += ["", "Failures:"] + [f"- round {f['round'] + 1} {f['lib']} {f['run']}: {f['error'][:300]}"
                                         for f in c["failures"]]
        lines.append("")
    lines += ["## Goals", "", "| goal | measured (median ratio) | met |", "|---|---|---|"]
    for g in result["goals"]:
        v = "—" if g["ratio_median"] is None else f"{g['ratio_median']:.2f}×"
        lines.append(f"| {g['goal']} | {v} | {'yes' if g['met'] else 'no' if g['met'] is False else '—'} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: Path = RESULTS, tag: str = "") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _dt.date.today().isoformat() + tag
    j, m = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    j.write_text(json.dumps(result, indent=1) + "\n")
    m.write_text(markdown(result))
    return j, m


def parse_configs(text: str) -> list[tuple]:
    """``MODEL:DTYPE:DEVICE[:EXECUTION][,...]`` (MODEL may be ``smollm2`` or ``tiny``; EXECUTION: webformers'
    execution form, auto by default) → matrix entries."""
    from webformers.dtypes import check_device, get_dtype
    from webformers.runtime.forms import check_execution

    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"config {item!r} must be MODEL:DTYPE:DEVICE[:EXECUTION], e.g. smollm2:q4:wasm:fp32")
        model, dtype, device, execution = (*parts, "auto")[:4]
        model = {"smollm2": SMOLLM2, "tiny": TINY}.get(model, model)
        get_dtype(dtype)
        if check_device(device) == "auto":
            raise ValueError("device must be wasm or webgpu for a benchmark, not auto")
        out.append((model, dtype, device, device == "webgpu", check_execution(execution)))
    return out


def main(args) -> int:
    """Entry point of ``build.py bench`` (``args.rounds``, ``args.quick``; optional ``threads``,
    ``max_new_tokens``, ``out``, ``tjs_ort``, ``budget_s``)."""
    rounds = int(getattr(args, "rounds", 3) or 3)
    quick = bool(getattr(args, "quick", False))
    if rounds < 1:
        print("bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "pysrc"))
    matrix = QUICK_MATRIX if quick else FULL_MATRIX
    if getattr(args, "configs", None):
        try:
            matrix = parse_configs(args.configs)
        except ValueError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
    if quick:
        rounds = 1
    try:
        threads = str(getattr(args, "threads", None) or "1")
        if threads != "default" and not (threads.isdigit() and int(threads) >= 1):
            print(f"bench: --threads must be a positive integer or 'default', got {threads!r}", file=sys.stderr)
            return 2
        threads = None if threads == "default" else int(threads)
        result = run(rounds, matrix, threads=threads,
                     max_new_tokens=int(getattr(args, "max_new_tokens", None) or 32),
                     tjs_ort=getattr(args, "tjs_ort", None) or "site",
                     budget_s=float(getattr(args, "budget_s", None) or 14 * 60))
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    suffix = ("-quick" if quick else "") + ("" if threads else "-default-threads")
    j, m = write(result, Path(getattr(args, "out", None) or RESULTS), suffix)
    print(m.read_text())
    log(f"wrote {j} and {m}")
    failures = sum(len(c["failures"]) for c in result["configs"])
    if failures:
        log(f"{failures} run(s) failed: see 'Failures' above")
    return 1 if failures else 0


def _cli(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m buildtools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="SmolLM2 q4 on WASM (webformers native and fp32 forms), one round")
    ap.add_argument("--threads", default="1", help="WASM and native onnxruntime threads (default 1), or "
                    "'default': each library's own default")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--tjs-ort", choices=["site", "bundled"], default="site",
                    help="transformers.js on the site's onnxruntime-web (same as webformers) or its bundled one")
    ap.add_argument("--budget-s", type=float, default=14 * 60, help="stop starting rounds past this (s)")
    ap.add_argument("--configs", help="MODEL:DTYPE:DEVICE[:EXECUTION],... instead of the default matrix "
                    "(MODEL: smollm2, tiny or a repo id under dist/site/models; EXECUTION: webformers' "
                    "execution form auto, native or fp32)")
    ap.add_argument("--out", default=str(RESULTS))
    return main(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_cli())
