// The benchmark's transformers.js worker: the library loaded one of two ways (see init), a model and
// its tokenizer, greedy generation with a message per token, one forward pass, tokenizer timings.
//
// An RPC server (../webformers/rpc.js), methods init, load, generate, forward, encode, encodeBench, memory, runs,
// each taking one object of arguments. Besides the replies it posts {type: "alive"} once listening,
// {type: "prompt", n} before generating and {type: "token"} per generated token (bench/page.js times them).
import { RpcServer } from "../webformers/rpc.js";
import { installMemoryProbe, installRunProbe } from "./probe.js";

const memory = installMemoryProbe();
const base = new URL("../", import.meta.url);
let T = null;
let onnxEnv = null;
let runTimes = null;  // InferenceSession.run times when transformers.js runs on the site's onnxruntime-web
let tokenizer = null;
let model = null;
const post = (m) => self.postMessage(m);

// ort = "bundled": transformers.js as shipped (its bundle carries the onnxruntime-web JS of the
// version it pins, with that version's wasm from vendor/transformers/);
// ort = "site": transformers.js's unbundled web build wired to the site's onnxruntime-web (the one
// webformers uses), so both libraries run the very same runtime.
async function init({ threads, ort }) {
  let wasmDir;
  if (ort === "site") {
    const ortUrl = new URL("webformers/ort/ort.webgpu.min.mjs", base).href;
    const resp = await fetch(new URL("vendor/transformers/transformers.web.min.js", base));
    if (!resp.ok) throw new Error(`vendor/transformers/transformers.web.min.js: HTTP ${resp.status}`);
    const src = (await resp.text()).replace(/from\s*"onnxruntime-(web\/webgpu|common)"/g, `from"${ortUrl}"`);
    if (src.includes('"onnxruntime-')) throw new Error("transformers.web.min.js has an onnxruntime import this page cannot map");
    const blobUrl = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
    T = await import(blobUrl);
    runTimes = installRunProbe(await import(ortUrl));
    wasmDir = "webformers/ort/";
  } else if (ort === "bundled") {
    T = await import(new URL("vendor/transformers/transformers.min.js", base).href);
    wasmDir = "vendor/transformers/";
  } else {
    throw new Error(`ort must be bundled or site, got ${JSON.stringify(ort)}`);
  }
  const { env } = T;
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  // a path, not a URL: transformers.js treats an http(s) URL here as remote and skips it
  env.localModelPath = new URL("models/", base).pathname;
  env.useBrowserCache = true;
  onnxEnv = env.backends.onnx;
  onnxEnv.wasm.wasmPaths = {
    mjs: new URL(`${wasmDir}ort-wasm-simd-threaded.asyncify.mjs`, base).href,
    wasm: new URL(`${wasmDir}ort-wasm-simd-threaded.asyncify.wasm`, base).href,
  };
  if (threads) onnxEnv.wasm.numThreads = threads;  // else onnxruntime-web's own default
  onnxEnv.wasm.proxy = false;
  return { version: env.version, ort: ort,
           ort_version: onnxEnv.versions ? onnxEnv.versions.web || onnxEnv.versions.common : "" };
}

// tokenizer and model load concurrently, as in webformers' pipeline(); each part is timed to its own end
async function load({ model: id, dtype, device }) {
  const t0 = performance.now();
  const timed = async (p) => { const v = await p; return [v, performance.now() - t0]; };
  const [[tok, tokenizer_ms], [m, model_ms]] = await Promise.all([
    timed(T.AutoTokenizer.from_pretrained(id)), timed(T.AutoModelForCausalLM.from_pretrained(id, { dtype, device }))]);
  tokenizer = tok;
  model = m;
  return { num_threads: onnxEnv.wasm.numThreads, tokenizer_ms, model_ms };
}

async function generate({ ids, prompt, max_new_tokens }) {
  if (runTimes) runTimes.length = 0;
  if (!ids) ids = Array.from(tokenizer.encode(prompt));
  const n = ids.length;
  const input_ids = new T.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, n]);
  const attention_mask = new T.Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]);
  let text = "";
  const streamer = new T.TextStreamer(tokenizer, {
    skip_prompt: true,
    skip_special_tokens: true,
    callback_function: (t) => { text += t; },
    token_callback_function: () => post({ type: "token" }),
  });
  post({ type: "prompt", n });
  const out = await model.generate({
    input_ids, attention_mask, max_new_tokens, min_new_tokens: 0, do_sample: false, streamer,
  });
  const all = Array.from(out.data, Number);
  return { ids: all.slice(n), prompt_ids: ids, text, ort_run_ms: runTimes ? [...runTimes] : null };
}

// One forward pass the way transformers.js runs a plain model call (it feeds num_logits_to_keep=0,
// "all positions", there; generate() feeds 1): logits shape and the argmax of each position.
async function forward({ ids }) {
  const n = ids.length;
  const input_ids = new T.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, n]);
  const attention_mask = new T.Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]);
  const { logits } = await model({ input_ids, attention_mask });
  const [, rows, vocab] = logits.dims;
  const data = logits.data;
  const argmax = [];
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let v = 1; v < vocab; v++) if (data[r * vocab + v] > data[r * vocab + best]) best = v;
    argmax.push(best);
  }
  return { dims: logits.dims, argmax, input_names: model.sessions.model.inputNames };
}

async function encode({ text }) {
  return Array.from(tokenizer.encode(text));
}

// the tokenizer benchmark: encode a fetched text twice (cold, then with the per-word caches warm)
async function encodeBench({ url }) {
  const text = await (await fetch(url)).text();
  let t0 = performance.now();
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  const cold_ms = performance.now() - t0;
  t0 = performance.now();
  tokenizer.encode(text, { add_special_tokens: false });
  return { cold_ms, warm_ms: performance.now() - t0, tokens: ids.length, ids: Array.from(ids) };
}

new RpcServer(self, { init, load, generate, forward, encode, encodeBench, memory: async () => memory(),
                      runs: async () => runTimes });
post({ type: "alive" });
