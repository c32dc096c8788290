// onnxruntime-web's sessions and tensors, the code behind both ways webformers runs it: in a worker of its
// own (ort-host.js, a thin RPC shell around these handlers) or in the calling thread (runtime.js, where
// `Worker` does not exist or in-thread is asked for).
//
// Sessions and the tensors Python does not read (the KV cache) live here; Python sends feeds and gets back
// the outputs it asked for (see pysrc/webformers/runtime/backend/_ortweb.py). In a worker it can also create
// a model's sessions while Pyodide is still booting: a "warm start" replays the last load of a model on this
// origin from the Cache API (files checked against their sha256 first), and Python adopts those sessions
// when it asks for the same files.
//
// create's `options` are InferenceSession options plus `form` (exec-form.js: "native", the default, or "fp32":
// the model is rewritten first and created with SESSION_EXTRA); it returns {sid, info, form: {form, changed,
// weights, rewrite_ms}}. A warm-start plan entry keeps the options (so the replay creates the same form) and
// the form choice Python made, which adopt hands back.
//
// `ortHandlers(server)` returns the handlers init(threads, hooks), create(model, external, options),
// run(sid, feeds, fetch, free, carry), release(refs), dispose(sid), warmStart(model), adopt(key), dropWarm(),
// remember(model, module, plan). init comes first; every other call waits for it. `hooks`: the URL of a
// module whose `installOrtHooks({server, ort})` runs once onnxruntime-web is imported, before any session
// exists (the benchmark's probes, web/bench/probe.js); `server` is the RpcServer of ort-host.js (null
// in-thread). run returns withTransfer(value, buffers) (rpc.js).
import { withTransfer } from "./rpc.js";
import { sha256Hex } from "./sha256.js";
import { expandQuantizedMatmuls, SESSION_EXTRA } from "./exec-form.js";

let ort = null;
const sessions = new Map();  // sid -> InferenceSession
const tensors = new Map();   // ref -> ort.Tensor kept for Python (fed back by ref, freed by release)
const warm = new Map();      // key -> Promise<{sid, info} | null>, sessions made before Python asked
const carried = new Map();   // sid -> the [input, output] pairs of its runs with a carried state
let nextSid = 1;
let nextRef = 1;
// one queue: onnxruntime-web rejects overlapping calls on a session and WebGPU setup must not race
let queue = Promise.resolve();
const serial = (fn) => { const p = queue.then(fn); queue = p.catch(() => {}); return p; };

const WARM_CACHE = "webformers-warm-start";
const warmUrl = (model) => new URL(`/__webformers_warm_start__/${encodeURIComponent(model)}`, self.location.origin).href;

function sessionInfo(s) {
  const meta = (s.inputMetadata || []).filter((m) => m.isTensor).map((m) => ({ name: m.name, type: m.type }));
  return { inputNames: [...s.inputNames], outputNames: [...s.outputNames], inputMetadata: meta };
}

async function create(model, external, options) {
  const { form: formName = "native", ...opts } = options;
  if (external && external.length) opts.externalData = external;
  const form = { form: formName, changed: 0, weights: 0, rewrite_ms: 0 };
  if (formName !== "native") {
    const t0 = performance.now();
    const r = expandQuantizedMatmuls(model, formName);
    form.rewrite_ms = Math.round((performance.now() - t0) * 10) / 10;
    [model, form.changed, form.weights] = [r.bytes, r.changed, r.weights];
    opts.extra = { ...opts.extra, session: { ...(opts.extra || {}).session, ...SESSION_EXTRA.session } };
  }
  const s = await serial(() => ort.InferenceSession.create(model, opts));
  const sid = nextSid++;
  sessions.set(sid, s);
  return { sid, info: sessionInfo(s), form };
}

// a GPU buffer of a lost WebGPU device cannot be disposed (onnxruntime-web throws): it is gone already, and the
// run carrying these refs must not fail for it
function dispose1(t) {
  if (t && t.location === "gpu-buffer") {
    try { t.dispose(); } catch (e) { /* its device was lost */ }
  }
}

function free(refs) {
  for (const ref of refs || []) {
    const t = tensors.get(ref);
    tensors.delete(ref);
    if (t && t.group) t.group.forEach(dispose1);
    else dispose1(t);
  }
}

// carry: {state: ref | null, pairs?: [[input, output]]} (the pairs are sent once per session): the outputs of
// the pairs are kept as one state {group: Map(output -> tensor), location} under a new ref, returned as
// `state`; the state fed (its tensors as the pairs' inputs) is freed by this run
async function run(sid, feeds, fetch, refs, carry = null) {
  free(refs);
  const s = sessions.get(sid);
  if (!s) throw new Error(`session ${sid} was disposed`);
  const inputs = {};
  let pairs = null;
  let fed = null;
  if (carry) {
    if (carry.pairs) carried.set(sid, carry.pairs);
    pairs = carried.get(sid);
    if (!pairs) throw new Error(`session ${sid}: a run with a carried state but no pairs`);
    if (carry.state != null) {
      fed = tensors.get(carry.state);
      tensors.delete(carry.state);
      if (!fed || !fed.group) throw new Error(`the state ${carry.state} was released`);
      for (const [input, output] of pairs) inputs[input] = fed.group.get(output);
    }
  }
  for (const [name, f] of Object.entries(feeds)) {
    if (f.ref !== undefined) {
      const t = tensors.get(f.ref);
      if (!t) throw new Error(`input ${name}: tensor ${f.ref} was released`);
      inputs[name] = t;
    } else {
      inputs[name] = new ort.Tensor(f.type, f.data, f.dims);
    }
  }
  const t0 = performance.now();
  let res;
  try {
    res = await serial(() => s.run(inputs));
  } finally {
    if (fed) fed.group.forEach(dispose1);
  }
  const ms = performance.now() - t0;
  const outputs = {};
  const transfer = [];
  let state = null;
  if (pairs) {
    const group = new Map(pairs.map(([, output]) => [output, res[output]]));
    const ref = nextRef++;
    const location = group.size ? group.values().next().value.location : "cpu";
    tensors.set(ref, { group, location });
    state = { ref, location };
  }
  for (const name of s.outputNames) {
    if (state && tensors.get(state.ref).group.has(name)) continue;
    const t = res[name];
    if (fetch === null || fetch.includes(name)) {
      const data = t.location === "cpu" ? t.data : await t.getData();
      if (t.location === "gpu-buffer") t.dispose();
      outputs[name] = { type: t.type, dims: [...t.dims], data };
      transfer.push(data.buffer);
    } else {
      const ref = nextRef++;
      tensors.set(ref, t);
      outputs[name] = { ref, type: t.type, dims: [...t.dims], location: t.location };
    }
  }
  return withTransfer({ outputs, ms, state }, transfer);
}

function dispose(sid) {
  const s = sessions.get(sid);
  sessions.delete(sid);
  carried.delete(sid);
  if (s) return serial(() => s.release());
}

// ---- warm start
// the last load of each module of `model`: {modules: {name: {key, cache, files, options}}}
async function readPlan(cache, model) {
  const resp = await cache.match(warmUrl(model));
  if (!resp) return null;
  try {
    const plan = await resp.json();
    return plan && typeof plan.modules === "object" ? plan : null;
  } catch (e) {
    return null;
  }
}

async function remember(model, module, plan) {
  const cache = await caches.open(WARM_CACHE);
  const all = (await readPlan(cache, model)) || { model, modules: {} };
  all.modules[module] = plan;
  await cache.put(warmUrl(model), new Response(JSON.stringify(all), { headers: { "content-type": "application/json" } }));
}

// a file stored whole, or as chunks listed by an index entry at its URL (pysrc/webformers/store/chunked.py):
// the chunks are copied into one buffer, each checked against its sha256
async function readChecked(cache, file) {
  const resp = await cache.match(file.url);
  if (!resp) return null;
  let bytes;
  if (JSON.parse(resp.headers.get("x-webformers") || "{}").layout === "chunked") {
    const index = await resp.json();
    if (!index.complete) return null;
    bytes = new Uint8Array(index.size);
    for (const c of index.chunks) {
      const part = await cache.match(c.url);
      if (!part) return null;
      const chunk = new Uint8Array(await part.arrayBuffer());
      if (chunk.length !== c.size || (await sha256Hex(chunk)) !== c.sha256) return null;
      bytes.set(chunk, c.offset);
    }
  } else {
    bytes = new Uint8Array(await resp.arrayBuffer());
  }
  return (await sha256Hex(bytes)) === file.sha256 ? bytes : null;
}

async function warmOne(entry) {
  try {
    const cache = await caches.open(entry.cache);
    const datas = [];
    for (const f of entry.files) {
      const bytes = await readChecked(cache, f);
      if (!bytes) return null;  // evicted or damaged: Python's load fetches (and heals) it
      datas.push(bytes);
    }
    const external = entry.files.slice(1).map((f, i) => ({ path: f.path, data: datas[i + 1] }));
    return { ...(await create(datas[0], external, entry.options)), choice: entry.choice || null };
  } catch (e) {
    return null;  // the regular load reports whatever is wrong
  }
}

async function warmStart(model) {
  const plan = await readPlan(await caches.open(WARM_CACHE), model);
  if (!plan) return 0;
  const entries = Object.values(plan.modules);
  for (const entry of entries) if (!warm.has(entry.key)) warm.set(entry.key, warmOne(entry));
  return entries.length;
}

async function adopt(key) {
  const p = warm.get(key);
  if (!p) return null;
  warm.delete(key);
  return await p;
}

async function dropWarm() {
  const left = [...warm.values()];
  warm.clear();
  for (const r of await Promise.all(left)) if (r) await dispose(r.sid);
  return left.length;
}

// ---- boot
// onnxruntime-web's files are in ort/ next to this file
export function ortHandlers(server = null) {
  async function init(threads, hooks) {
    ort = await import(new URL("./ort/ort.webgpu.min.mjs", import.meta.url).href);
    ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
    ort.env.wasm.numThreads = threads;
    ort.env.logLevel = "error";
    if (hooks) (await import(hooks)).installOrtHooks({ server, ort });
    return { threads: ort.env.wasm.numThreads,
             version: ort.env.versions ? ort.env.versions.web || ort.env.versions.common : "" };
  }
  let ready = null;  // the init call
  const afterInit = (fn) => async (...args) => {
    if (!ready) throw new Error("onnxruntime-web was not initialised");
    await ready;
    return fn(...args);
  };
  return {
    init: (...args) => (ready = init(...args)),
    ...Object.fromEntries(Object.entries({
      create, run, release: free, dispose, warmStart, adopt, dropWarm, remember,
    }).map(([name, fn]) => [name, afterInit(fn)])),
  };
}
