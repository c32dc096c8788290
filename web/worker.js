// The webformers worker: hosts Pyodide so the page's main thread never blocks; onnxruntime-web runs in
// a worker of its own (ort-host.js) that this one starts first.
//
// An RPC server (rpc.js) for the page (wf-client.js) with the methods
//   ready()          -> the boot timings, once booted (rejects with the boot error)
//   runPython(code)  -> the value of the code's last expression (top-level await allowed)
// Other messages from the page: {type: "stop"} (the Stop button on a page that is not cross-origin
// isolated) and {type: "stop-and-pieces", shared} (an Int32Array on a SharedArrayBuffer: [0] Stop,
// [1] streamed pieces the page handled). To the page: {type: "event", event}, the progress / warning /
// stream events from Python.
//
// Query string: ?threads=N (onnxruntime-web's WASM threads), ?warm=<model id> (warm start), and
// ?hooks=<module> (same origin): a module whose `installWorkerHooks({server, ort, pyodide})` runs once
// Pyodide has booted, before ready() answers (`server`: this worker's RPC server, `ort`: the RpcCaller
// of onnxruntime's worker) and whose `installOrtHooks` runs in onnxruntime's worker (see ort-host.js).
// The benchmark's probes use it (web/bench/probe.js); a page without ?hooks runs none of it.
import { bootPython } from "./webformers/pyboot.js";
import { RpcCaller, RpcServer } from "./webformers/rpc.js";
import { sha256Hex } from "./webformers/sha256.js";

const base = new URL("./", import.meta.url);
const params = new URL(self.location.href).searchParams;
// ?threads=N (WebformersClient's `threads` option): onnxruntime-web's WASM thread count, fixed at boot
const requestedThreads = Number(params.get("threads")) || 0;
const allThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
const ortThreads = requestedThreads ? Math.min(requestedThreads, allThreads) : allThreads;

const hooksUrl = (() => {
  const spec = params.get("hooks");
  if (!spec) return null;
  const url = new URL(spec, base);
  if (url.origin !== self.location.origin) throw new Error(`hooks module ${spec} is not on this origin`);
  return url.href;
})();

// onnxruntime-web runs in its own worker (ort-host.js), started first: it loads while Pyodide boots and,
// with ?warm=<model id> (WebformersClient's `warmStart`), creates that model's sessions meanwhile.
const host = new Worker(new URL("./webformers/ort-host.js", import.meta.url), { type: "module" });
const ortRpc = new RpcCaller(host);
host.onerror = (ev) => ortRpc.fail(`the onnxruntime worker failed: ${ev.message || "script error"}`);
const ortReady = ortRpc.call("init", [ortThreads, hooksUrl]);
ortReady.catch(() => {});
const warmModel = params.get("warm");
const warmStarted = warmModel ? ortRpc.call("warmStart", [warmModel]) : Promise.resolve(0);
warmStarted.catch(() => {});
let ortInfo = null;

let cancelled = false;
// Int32Array on a SharedArrayBuffer shared with wf-client.js: [0] Stop, [1] streamed pieces the page handled
let shared = null;
self.addEventListener("message", (ev) => {
  const m = ev.data;
  if (m && m.type === "stop") cancelled = true;
  else if (m && m.type === "stop-and-pieces") shared = m.shared;
});
let piecesPosted = 0;
const PAGE_LAG_LIMIT_MS = 1000;
const post = (msg) => self.postMessage(msg);

// Small helpers Python calls through `js.wfBridge` (see pysrc/webformers/runtime/backend/_ortweb.py).
self.wfBridge = {
  emit(event) {
    const e = event && typeof event.toJs === "function"
      ? event.toJs({ dict_converter: Object.fromEntries }) : event;
    post({ type: "event", event: e });
    if (shared !== null && e && e.status === "token") waitForPage(++piecesPosted);
  },
  async adapterInfo() {
    const info = { webgpu: false, features: [], isFallbackAdapter: null,
                   crossOriginIsolated: self.crossOriginIsolated, backend: "onnxruntime-web",
                   wasmThreads: ortInfo ? ortInfo.threads : ortThreads };
    try {
      const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
      if (adapter) {
        info.webgpu = true;
        info.features = Array.from(adapter.features).sort();
        info.isFallbackAdapter = adapter.info ? !!adapter.info.isFallbackAdapter : !!adapter.isFallbackAdapter;
        info.vendor = adapter.info ? adapter.info.vendor || adapter.info.description || "" : "";
        info.maxBufferSize = adapter.limits.maxBufferSize;
      }
    } catch (e) {
      info.error = String(e);
    }
    return info;
  },
  isCancelled: () => cancelled || (shared !== null && Atomics.load(shared, 0) === 1),
  resetCancel() {
    cancelled = false;
    if (shared) Atomics.store(shared, 0, 0);
  },
  sha256: sha256Hex,
};

// Back-pressure for streamed text: return once the page has handled every piece but the one just posted,
// so that at most one piece is in flight when the user clicks Stop. A page stalled for longer than
// PAGE_LAG_LIMIT_MS does not hold generation up.
function waitForPage(posted) {
  const until = performance.now() + PAGE_LAG_LIMIT_MS;
  for (;;) {
    const handled = Atomics.load(shared, 1);
    const left = until - performance.now();
    if (handled >= posted - 1 || left <= 0) return;
    Atomics.wait(shared, 1, handled, left);
  }
}

// What Python calls through `js.wfOrt` (see pysrc/webformers/runtime/backend/_ortweb.py): requests to ort-host.js.
// Array data is copied out of the Python heap once and transferred; metadata crosses back as JSON.
const wholeBuffer = (a) => a.byteOffset === 0 && a.byteLength === a.buffer.byteLength;
self.wfOrt = {
  async create(model, external, optionsJson) {
    // (Pyodide destroys the proxies it passed in once the returned promise settles)
    const ext = external ? external.toJs({ dict_converter: Object.fromEntries }) : [];
    // the bytes are transferred, not copied (a model is held once, not twice, while its session is made)
    if ([model, ...ext.map((e) => e.data)].some((a) => a.buffer.detached)) {
      throw new Error("these model bytes were already handed to onnxruntime (a concurrent load of the same " +
                      "file?): load a model once and share it");
    }
    const transfer = [model, ...ext.map((e) => e.data)].filter(wholeBuffer).map((a) => a.buffer);
    const r = await ortRpc.call("create", [model, ext, JSON.parse(optionsJson)], transfer);
    return JSON.stringify(r);
  },
  // spec: JSON {sid, refs: {name: ref}, arrays: [[name, type, dims]], fetch, free}; arrays: numpy PyProxies
  async run(specJson, ...arrays) {
    const spec = JSON.parse(specJson);
    const feeds = {};
    for (const [name, ref] of Object.entries(spec.refs)) feeds[name] = { ref };
    const transfer = [];
    spec.arrays.forEach(([name, type, dims], i) => {
      const buf = arrays[i].getBuffer();
      const data = buf.data.slice();
      buf.release();
      feeds[name] = { type, data, dims };
      transfer.push(data.buffer);
    });
    const r = await ortRpc.call("run", [spec.sid, feeds, spec.fetch, spec.free], transfer);
    const meta = [];
    const data = [];
    for (const [name, o] of Object.entries(r.outputs)) {
      if (o.ref !== undefined) meta.push([name, o.ref, o.type, o.dims, o.location]);
      else { meta.push([name, null, o.type, o.dims, data.length]); data.push(o.data); }
    }
    return { meta: JSON.stringify({ outputs: meta, ms: r.ms }), data };
  },
  release: (refs) => ortRpc.call("release", [Array.from(refs)]),
  dispose: (sid) => ortRpc.call("dispose", [sid]),
  adopt: async (key) => JSON.stringify(await ortRpc.call("adopt", [key])),
  dropWarm: () => ortRpc.call("dropWarm"),
  remember: (model, module, planJson) => ortRpc.call("remember", [model, module, JSON.parse(planJson)]),
  info: () => ortInfo,
};

let pyodide = null;

// Python (pyboot.js: Pyodide, numpy, our wheels), then onnxruntime-web's worker and the Python side of the bridge.
async function boot() {
  const t0 = performance.now();
  const py = await bootPython({ base });
  pyodide = py.pyodide;
  const t = py.timings;
  let mark = performance.now();
  const lap = (name) => { const now = performance.now(); t[name] = Math.round(now - mark); mark = now; };

  // onnxruntime-web (started in its own worker at the very beginning), then the Python side of the bridge.
  try {
    ortInfo = await ortReady;
  } catch (e) {
    throw new Error(`onnxruntime-web (webformers/ort/ort.webgpu.min.mjs) did not load: ${e.message}`);
  }
  await pyodide.runPythonAsync(`
from webformers.runtime import backend
assert backend.IN_BROWSER and backend.backend_name == "onnxruntime-web"
`);
  lap("ort");
  t.total = Math.round(performance.now() - t0);
  t.ort_version = ortInfo.version;
  t.ort_threads = ortInfo.threads;
  t.warm_start_modules = await warmStarted.catch(() => 0);
  t.pyodide_version = pyodide.version;
  if (hooksUrl) (await import(hooksUrl)).installWorkerHooks({ server, ort: ortRpc, pyodide });
  return t;
}

function toJs(value) {
  if (value && typeof value.toJs === "function") {
    const out = value.toJs({ dict_converter: Object.fromEntries, create_pyproxies: false });
    value.destroy();
    return out;
  }
  return value;
}

const server = new RpcServer(self, {
  ready: () => booted,
  async runPython(code) {
    try {
      await booted;
    } catch (e) {
      throw new Error("webformers did not boot");
    }
    return toJs(await pyodide.runPythonAsync(code));
  },
});
const booted = boot();
booted.catch(() => {});  // reported by ready()
