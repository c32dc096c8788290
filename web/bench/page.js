// The benchmark page (bench.html): one measured run per page load, configured by the query string
//   ?lib=webformers|transformers.js|wllama&model=ID&dtype=q4&device=wasm&threads=1|default&max_new_tokens=32
//    &execution=auto|native|fp32 (webformers' execution form, see runtime/forms.py; default auto)
//    &ids=1,2,3 (prompt token ids; or &prompt=text, tokenized by the library itself)
//    &prompts_url=URL (instead of ids: a JSON {ids, text, long_ids?, long_text?} fetched before the run;
//      text is the ids' text, for wllama; long_*: a second, ~1,000-token prompt generated after the first)
//    &gguf_url=URL (wllama: the GGUF to load; the same weights as the ONNX files)
//    &generate=0 (load only: the cold runs, which measure loading from an empty cache)
//    &encode_url=URL (after generating: time encoding that text, the tokenizer benchmark)
// window.benchResult is set to {ok: true, ...figures} or {ok: false, error} when the run ends.
// All times are taken on the page's clock (performance.now(), ms since navigation start) for both
// libraries, each running in its own dedicated worker, so message latency is the same on both sides:
// webformers' worker with the probes of bench/probe.js installed as its hooks, transformers.js in
// bench/tjs-host.js.
import { RpcCaller } from "../webformers/rpc.js";
import { WebformersClient } from "../wf-client.js";
import { WllamaHost } from "./wllama-host.js";

const PY_LOAD = (a) => `
import js, json
from webformers import AutoModelForCausalLM, AutoTokenizer
_a = json.loads(${JSON.stringify(JSON.stringify(a))})
import asyncio, time as _time
_t0 = _time.perf_counter()
async def _timed(coro):
    value = await coro
    return value, (_time.perf_counter() - _t0) * 1000
# tokenizer and model concurrently, as pipeline() loads them; each part timed to its own end
(bench_tok, _tok_ms), (bench_model, _model_ms) = await asyncio.gather(
    _timed(AutoTokenizer.from_pretrained(_a["model"])),
    _timed(AutoModelForCausalLM.from_pretrained(_a["model"], dtype=_a["dtype"], device=_a["device"], strict=True,
                                                execution=_a["execution"])))
{"dtype": bench_model.dtype, "device": bench_model.device, "warnings": [str(w) for w in bench_model.warnings],
 "num_threads": int(js.wfOrt.info().threads), "tokenizer_ms": _tok_ms, "model_ms": _model_ms,
 "model_load_timings": dict(bench_model.load_timings)}
`;

const PY_GENERATE = (a) => `
import js, json
from webformers.generation import TextStreamer
_a = json.loads(${JSON.stringify(JSON.stringify(a))})
_ids = _a["ids"] if _a.get("ids") else bench_tok.encode(_a["prompt"])

class _BenchStreamer:
    """Detokenizes like a TextStreamer and posts one message per generated token."""
    def __init__(self):
        self.text = []
        self.inner = TextStreamer(bench_tok, skip_prompt=True, callback_function=self.text.append)
        self.prompt_seen = False
    def put(self, value):
        self.inner.put(value)
        if self.prompt_seen:
            js.wfBridge.emit({"status": "bench-token"})
        self.prompt_seen = True
    def end(self):
        self.inner.end()

_s = _BenchStreamer()
js.wfBridge.emit({"status": "bench-prompt", "n": len(_ids)})
_out = await bench_model.generate(list(_ids), max_new_tokens=_a["max_new_tokens"], do_sample=False, streamer=_s)
_st = dict(bench_model.last_generation_stats or {})
{"ids": [int(x) for x in _out[0, len(_ids):]], "prompt_ids": [int(x) for x in _ids], "text": "".join(_s.text),
 "stats": _st}
`;

const PY_ENCODE = (url) => `
import js, time
_text = await (await js.fetch(${JSON.stringify(url)})).text()
_t0 = time.perf_counter()
_ids = bench_tok.encode(_text, add_special_tokens=False)
_cold = (time.perf_counter() - _t0) * 1000
_t0 = time.perf_counter()
bench_tok.encode(_text, add_special_tokens=False)
{"cold_ms": _cold, "warm_ms": (time.perf_counter() - _t0) * 1000, "tokens": len(_ids), "ids": [int(i) for i in _ids]}
`;

/** The page's side of bench/tjs-host.js: `alive` once it listens, `call(method, args)`, token callbacks. */
class TjsWorker {
  constructor() {
    this.worker = new Worker(new URL("./tjs-host.js", import.meta.url), { type: "module" });
    this.rpc = new RpcCaller(this.worker);
    this.onToken = null;
    this.onPrompt = null;
    this.alive = new Promise((resolve, reject) => {
      this.worker.onerror = (e) => {
        const message = `transformers.js worker failed: ${e.message || e}`;
        this.rpc.fail(message);
        reject(new Error(message));
      };
      this._alive = resolve;
    });
    this.worker.addEventListener("message", (ev) => {
      const m = ev.data;
      if (m.type === "alive") this._alive();
      else if (m.type === "token") this.onToken && this.onToken();
      else if (m.type === "prompt") this.onPrompt && this.onPrompt(m.n);
    });
  }
  call(method, args) {
    return this.rpc.call(method, [args || {}]);
  }
}

/** The page's JS heap and, unless `agent` is false, the whole agent's memory (measureUserAgentSpecificMemory:
 *  Chromium answers it at its next garbage collection, up to ~15 s later). */
async function pageMemoryOf(agent = true) {
  const out = { js_heap_page_bytes: performance.memory ? performance.memory.usedJSHeapSize : null,
                uasm_bytes: null };
  if (agent && self.crossOriginIsolated && performance.measureUserAgentSpecificMemory) {
    try {
      const r = await Promise.race([performance.measureUserAgentSpecificMemory(),
        new Promise((resolve) => setTimeout(() => resolve(null), 15000))]);
      if (r) out.uasm_bytes = r.bytes;
    } catch (e) {
      out.uasm_error = String(e);
    }
  }
  return out;
}

/** The "python-snapshot" event's {bytes, timings} once the worker saved it, or {error} (a warning / timeout). */
function snapshotSaved(wf, timeoutMs) {
  const seen = wf.events.find((e) => e.status === "python-snapshot");
  if (seen) return Promise.resolve({ bytes: seen.bytes, timings: seen.timings });
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ error: `no snapshot within ${timeoutMs} ms` }), timeoutMs);
    wf.addEventListener("wf-event", (e) => {
      const d = e.detail || {};
      if (d.status === "python-snapshot" || (d.status === "warning" && /snapshot/.test(d.message || ""))) {
        clearTimeout(timer);
        resolve(d.status === "warning" ? { error: d.message } : { bytes: d.bytes, timings: d.timings });
      }
    });
  });
}

/** The figures of one generation from its token arrival times (page clock) and its start time. */
function genFigures(tokens, tGen, promptTokens) {
  const f = { new_tokens: tokens.length };
  if (tokens.length) {
    f.ttft_ms = tokens[0] - tGen;
    f.page_to_first_token_ms = tokens[0];
    if (promptTokens) f.prefill_tokens_per_s = promptTokens / (f.ttft_ms / 1000);
  }
  if (tokens.length > 1) {
    f.decode_tokens_per_s = (tokens.length - 1) / ((tokens[tokens.length - 1] - tokens[0]) / 1000);
  }
  return f;
}

/** One run: start the library, load the model, generate; returns the figures (ms on the page clock). */
export async function runBench(cfg, log = () => {}) {
  const r = { lib: cfg.lib, model: cfg.model, dtype: cfg.dtype, device: cfg.device, execution: cfg.execution,
              threads: cfg.threads, max_new_tokens: cfg.max_new_tokens, cross_origin_isolated: self.crossOriginIsolated };
  // cfg.agent_memory === false: no agent-wide memory figure (runs that check tokens, not memory)
  const pageMemory = () => pageMemoryOf(cfg.agent_memory !== false);
  let tokens = [];
  const onToken = () => tokens.push(performance.now());
  const hasLong = !!(cfg.long_ids && cfg.long_ids.length);
  // one generation: `run(ids, text)` resolves to {ids, prompt_ids?, text, ...}; figures from the token clock
  const timedGeneration = async (run, ids, text) => {
    tokens = [];
    const tGen = performance.now();
    const g = await run(ids, text);
    g.gen_ms = performance.now() - tGen;
    return { g, f: genFigures(tokens, tGen, (g.prompt_ids || ids || []).length) };
  };
  let lib;
  if (cfg.lib === "webformers") {
    // both workers install bench/probe.js (memory, run times); warm start for the model we load
    const wf = new WebformersClient({ hooks: new URL("./probe.js", import.meta.url).href, warmStart: cfg.model,
                                      ...(cfg.threads ? { threads: cfg.threads } : {}) });
    window.wf = wf;
    wf.addEventListener("wf-event", (e) => {
      if (e.detail && e.detail.status === "bench-token") onToken();
    });
    log("booting webformers (Pyodide + onnxruntime-web)…");
    r.boot = await wf.ready;
    r.page_ready_ms = performance.now();
    log("loading the model…");
    const t0 = performance.now();
    // at once, even while numpy still loads after a snapshot restore: the tokenizer and the repo need none,
    // and the model's load waits for it (webformers.platform.packages_ready)
    r.loaded = await wf.runPython(PY_LOAD(cfg), { beforePackages: true });
    r.load_ms = performance.now() - t0;
    const gen = async (ids) => {
      await wf.call("benchOrtRuns");  // clears the run times before this generation
      const g = await wf.runPython(PY_GENERATE({ ...cfg, ids }));
      g.ort_run_ms = await wf.call("benchOrtRuns");
      return g;
    };
    if (cfg.generate !== false) {
      log("generating…");
      const { g, f } = await timedGeneration(gen, cfg.ids);
      Object.assign(r, f, { ids: g.ids, prompt_ids: g.prompt_ids, text: g.text, stats: g.stats,
                            ort_run_ms: g.ort_run_ms, gen_ms: g.gen_ms });
      if (cfg.encode_url) r.encode = await wf.runPython(PY_ENCODE(cfg.encode_url));
    }
    r.memory = { ...await wf.call("benchMemory"), ...await pageMemory() };
    if (cfg.generate !== false && hasLong) {
      log("generating after the long prompt…");
      const { g, f } = await timedGeneration(gen, cfg.long_ids);
      r.long = { ...f, ids: g.ids, prompt_tokens: g.prompt_ids.length, ort_run_ms: g.ort_run_ms, gen_ms: g.gen_ms,
                 stats: g.stats, memory: { ...await wf.call("benchMemory"), ...await pageMemory() } };
    }
    // which Python boot ran (webformers/pyboot.js: snapshot / fresh) and its steps; after a fresh boot, the
    // visit lasts until the snapshot for the next one is saved (as a user's first visit would)
    // (with numpy's load, which may end after ready)
    r.python_boot = Object.fromEntries(Object.entries(await wf.bootTimings()).filter(([k]) => k !== "ort_version"));
    if (r.boot.path === "fresh") r.snapshot_saved = await snapshotSaved(wf, 120_000);
    wf.worker.terminate();
    lib = { name: "webformers", ort_version: r.boot.ort_version, pyodide_version: r.boot.pyodide_version };
  } else if (cfg.lib === "transformers.js") {
    const w = new TjsWorker();
    w.onToken = onToken;
    log("starting transformers.js…");
    await w.alive;
    const info = await w.call("init", { threads: cfg.threads, ort: cfg.tjs_ort });
    r.page_ready_ms = performance.now();
    log("loading the model…");
    const t0 = performance.now();
    r.loaded = await w.call("load", cfg);
    r.load_ms = performance.now() - t0;
    const gen = (ids) => w.call("generate", { ...cfg, ids });
    if (cfg.generate !== false) {
      log("generating…");
      const { g, f } = await timedGeneration(gen, cfg.ids);
      Object.assign(r, f, { ids: g.ids, prompt_ids: g.prompt_ids, text: g.text, ort_run_ms: g.ort_run_ms,
                            gen_ms: g.gen_ms });
      if (cfg.encode_url) r.encode = await w.call("encodeBench", { url: cfg.encode_url });
    }
    r.memory = { ...await w.call("memory"), ...await pageMemory() };
    if (cfg.generate !== false && hasLong) {
      log("generating after the long prompt…");
      const { g, f } = await timedGeneration(gen, cfg.long_ids);
      r.long = { ...f, ids: g.ids, prompt_tokens: g.prompt_ids.length, ort_run_ms: g.ort_run_ms, gen_ms: g.gen_ms,
                 memory: { ...await w.call("memory"), ...await pageMemory() } };
    }
    w.worker.terminate();
    lib = { name: "transformers.js", version: info.version, ort: info.ort, ort_version: info.ort_version };
  } else if (cfg.lib === "wllama") {
    if (!cfg.gguf_url) throw new Error("wllama needs gguf_url (the GGUF of the model)");
    if (cfg.generate !== false && !cfg.text) throw new Error("wllama needs the prompt as text (prompts_url with text)");
    log("starting wllama…");
    const w = await WllamaHost.start({ threads: cfg.threads });
    r.page_ready_ms = performance.now();
    log("loading the GGUF…");
    const t0 = performance.now();
    // context: the longest prompt plus the new tokens, in whole 256-token blocks
    const need = Math.max(cfg.ids ? cfg.ids.length : 0, hasLong ? cfg.long_ids.length : 0) + cfg.max_new_tokens;
    r.loaded = { ...await w.load({ url: cfg.gguf_url, n_ctx: Math.max(512, Math.ceil(need / 256) * 256) }) };
    r.loaded.n_ctx = Math.max(512, Math.ceil(need / 256) * 256);
    r.load_ms = performance.now() - t0;
    const gen = async (ids, text) => {
      const g = await w.generate({ text, max_new_tokens: cfg.max_new_tokens, onToken });
      // wllama tokenized the text itself: its count must be the ids' count for the same prompt
      g.prompt_tokens_equal = g.prompt_tokens === ids.length;
      return g;
    };
    if (cfg.generate !== false) {
      log("generating…");
      const { g, f } = await timedGeneration(gen, cfg.ids, cfg.text);
      Object.assign(r, f, { ids: g.ids, prompt_ids: cfg.ids, text: g.text, wllama_prompt_tokens: g.prompt_tokens,
                            prompt_tokens_equal: g.prompt_tokens_equal, engine_timings: g.timings, gen_ms: g.gen_ms });
    }
    r.memory = await pageMemory();
    if (cfg.generate !== false && hasLong) {
      log("generating after the long prompt…");
      const { g, f } = await timedGeneration(gen, cfg.long_ids, cfg.long_text);
      r.long = { ...f, ids: g.ids, prompt_tokens: cfg.long_ids.length, wllama_prompt_tokens: g.prompt_tokens,
                 prompt_tokens_equal: g.prompt_tokens_equal, engine_timings: g.timings, gen_ms: g.gen_ms,
                 memory: await pageMemory() };
    }
    r.wllama_log = w.log.filter((l) => !l.startsWith("log:")).slice(0, 10);
    await w.exit();
    lib = { name: "wllama", version: "3.13.0", libllama: r.loaded.libllama };
  } else {
    throw new Error(`unknown lib ${JSON.stringify(cfg.lib)}; valid: webformers, transformers.js, wllama`);
  }
  r.library = lib;
  r.prompt_tokens = r.prompt_ids ? r.prompt_ids.length : null;
  return r;
}

function parseConfig(params) {
  const num = (k, d) => {
    const v = params.get(k);
    if (v === null || v === "") return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${k} must be a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
  const cfg = {
    lib: params.get("lib"),
    model: params.get("model") || "HuggingFaceTB/SmolLM2-135M-Instruct",
    dtype: params.get("dtype") || "q4",
    device: params.get("device") || "wasm",
    execution: params.get("execution") || "auto",
    threads: params.get("threads") === "default" ? null : num("threads", 1),  // null: each library's default
    max_new_tokens: num("max_new_tokens", 32),
    prompt: params.get("prompt") || "Once upon a time",
    ids: null,
    tjs_ort: params.get("tjs_ort") || "site",
    generate: params.get("generate") !== "0",
    encode_url: params.get("encode_url"),
    prompts_url: params.get("prompts_url"),
    gguf_url: params.get("gguf_url"),
    text: null,
    long_ids: null,
    long_text: null,
  };
  if (!["webformers", "transformers.js", "wllama"].includes(cfg.lib)) {
    throw new Error(`lib must be webformers, transformers.js or wllama, got ${JSON.stringify(cfg.lib)}`);
  }
  if (!["site", "bundled"].includes(cfg.tjs_ort)) {
    throw new Error(`tjs_ort must be site or bundled, got ${JSON.stringify(cfg.tjs_ort)}`);
  }
  if (!["wasm", "webgpu"].includes(cfg.device)) {
    throw new Error(`device must be wasm or webgpu, got ${JSON.stringify(cfg.device)}`);
  }
  if (params.get("ids")) {
    cfg.ids = params.get("ids").split(",").map((s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 0) throw new Error(`ids must be comma-separated token ids, got ${JSON.stringify(s)}`);
      return n;
    });
  }
  return cfg;
}

function showResult(r) {
  const rows = [
    ["library", `${r.library.name} ${r.library.version || ""}` +
      (r.library.ort_version ? ` (onnxruntime-web ${r.library.ort_version})` : "")],
    ["page ready (ms)", r.page_ready_ms], ["model load (ms)", r.load_ms],
    ["time to first token (ms)", r.ttft_ms], ["page ready → first token (ms)", r.page_to_first_token_ms],
    ["prefill tokens/s", r.prefill_tokens_per_s], ["decode tokens/s", r.decode_tokens_per_s],
    ["new tokens", r.new_tokens],
    ["WASM memory (MB)", r.memory.wasm_bytes ? r.memory.wasm_bytes / 1e6 : null],
    ["decode tokens/s after the long prompt", r.long ? r.long.decode_tokens_per_s : null],
  ];
  const body = document.querySelector("#bench-result tbody");
  body.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = k;
    const td = document.createElement("td");
    td.textContent = typeof v === "number" ? v.toFixed(1) : String(v ?? "—");
    tr.append(th, td);
    return tr;
  }));
  document.getElementById("bench-result").hidden = false;
  document.getElementById("bench-text").textContent = r.text;
}

async function pageMain() {
  const params = new URLSearchParams(location.search);
  const form = document.getElementById("bench-form");
  for (const [k, v] of params) if (form.elements[k]) form.elements[k].value = v;
  const status = document.getElementById("bench-status");
  // for tests and the console: run configurations in this page, or drive a transformers.js worker
  window.runBench = runBench;
  window.BenchTjsWorker = TjsWorker;
  if (!params.get("lib")) return;
  let cfg;
  try {
    cfg = parseConfig(params);
    if (cfg.prompts_url) {  // before any library starts, the same for all of them
      const resp = await fetch(cfg.prompts_url);
      if (!resp.ok) throw new Error(`${cfg.prompts_url}: HTTP ${resp.status}`);
      const pr = await resp.json();
      Object.assign(cfg, { ids: pr.ids, text: pr.text ?? null, long_ids: pr.long_ids ?? null,
                           long_text: pr.long_text ?? null });
    }
    const r = await runBench(cfg, (m) => { status.textContent = m; });
    status.textContent = "Done.";
    showResult(r);
    window.benchResult = { ok: true, ...r };
  } catch (e) {
    const msg = String(e && e.message || e);
    status.textContent = `Failed: ${msg}`;
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = msg;
    document.getElementById("errors").append(p);
    window.benchResult = { ok: false, error: msg };
  }
}

pageMain();
