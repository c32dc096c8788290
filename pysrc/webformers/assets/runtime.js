// The browser runtime of webformers, started from its assets URL (the folder holding this file, ort-host.js
// and ort/): what Python's browser backend (pysrc/webformers/runtime/backend/_ortweb.py) calls.
//
//   startRuntime(assetsUrl, {threads, inThread, hooks, warm}) -> Promise<runtime>   (Python uses this)
//   launchRuntime(assetsUrl, options) -> {ort: runtime, rpc, ready, warmStarted, mode}   (no waiting)
//   checkAssets(assetsUrl) -> Promise: rejects with one error naming each missing / misconfigured file
//   postMessageHost(scope) -> {emit, isCancelled, resetCancel}: the demo page's event and Stop glue
//
// inThread: true runs onnxruntime-web in this thread, false requires a Worker, unset: a Worker where one exists.
// The runtime: create(model, external, optionsJson), run(specJson, ...arrays), release(refs), dispose(sid),
// adopt(key), dropWarm(), remember(model, module, planJson), info() (null until ready: {threads, version,
// mode}), adapterInfo(), sha256(bytes). onnxruntime-web runs in a module Worker of its own (ort-host.js)
// where `Worker` exists, else (or with inThread) in this thread; both run the handlers of ort-core.js.
// threads: onnxruntime-web's WASM threads (default: up to 4 when cross-origin isolated, else 1; 1 in-thread
// without Worker). hooks: a same-origin module with installOrtHooks (see ort-core.js); warm: a model id whose
// last load is replayed from the Cache API while the caller boots (worker mode).
import { RpcCaller, transferValue } from "./rpc.js";
import { sha256Hex } from "./sha256.js";

/** The files the runtime needs, relative to the assets URL. */
export const RUNTIME_FILES = [
  "runtime.js", "ort-host.js", "ort-core.js", "rpc.js", "sha256.js", "exec-form.js",
  "ort/ort.webgpu.min.mjs", "ort/ort-wasm-simd-threaded.asyncify.mjs", "ort/ort-wasm-simd-threaded.asyncify.wasm",
];
// module scripts need a JavaScript type; a .wasm only must not be a page (an HTML fallback answer)
const CONTENT_TYPES = { ".js": /javascript/, ".mjs": /javascript/, ".wasm": /^(?!text\/html)/ };

const baseOf = (assetsUrl) => {
  const href = new URL(String(assetsUrl), self.location.href).href;
  return new URL(href.endsWith("/") ? href : `${href}/`);
};

/** Rejects with one Error naming every runtime file that is missing or served as the wrong type. */
export async function checkAssets(assetsUrl) {
  const base = baseOf(assetsUrl);
  const problems = [];
  await Promise.all(RUNTIME_FILES.map(async (file) => {
    const url = new URL(file, base).href;
    let resp;
    try {
      resp = await fetch(url, { method: "HEAD", cache: "no-store" });
    } catch (e) {
      problems.push(`${file}: ${url} could not be fetched (${e})`);
      return;
    }
    if (!resp.ok) {
      problems.push(`${file} is missing: ${url} answered HTTP ${resp.status}`);
      return;
    }
    const ext = file.slice(file.lastIndexOf("."));
    const type = resp.headers.get("content-type") || "";
    if (!CONTENT_TYPES[ext].test(type)) {
      problems.push(`${file} is misconfigured: ${url} is served as ${JSON.stringify(type)}, ` +
                    `expected ${ext === ".wasm" ? "application/wasm, not a page" : "a JavaScript type"}`);
    }
  }));
  if (problems.length) {
    problems.sort();
    throw new Error(`webformers' browser runtime files are not at ${base.href}: ${problems.join("; ")}. ` +
                    "Serve the package's assets there (a `webformers site` folder has them in webformers/) " +
                    "or point webformers.configure(assets=...) at the folder holding ort-host.js and ort/");
  }
}

// the handlers of ort-core.js called in this thread, with RpcCaller's call() shape
async function localCaller(assetsBase) {
  const { ortHandlers } = await import(new URL("ort-core.js", assetsBase).href);
  const handlers = ortHandlers(null);
  return {
    async call(method, args = []) {
      const fn = handlers[method];
      if (!fn) throw new Error(`unknown method ${method}; valid: ${Object.keys(handlers).join(", ")}`);
      return transferValue(await fn(...args));
    },
    fail() {},
  };
}

async function adapterInfo(threads) {
  const info = { webgpu: false, features: [], isFallbackAdapter: null,
                 crossOriginIsolated: !!self.crossOriginIsolated, backend: "onnxruntime-web", wasmThreads: threads };
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
}

const wholeBuffer = (a) => a.byteOffset === 0 && a.byteLength === a.buffer.byteLength;

/** Start the runtime without waiting: `ready` settles with info() once onnxruntime-web is loaded. */
export function launchRuntime(assetsUrl, options = {}) {
  const base = baseOf(assetsUrl);
  const hasWorker = typeof Worker === "function";
  if (options.inThread === false && !hasWorker) {
    throw new Error("webformers: a worker for onnxruntime-web was asked for (configure(ort_worker=True)) but " +
                    "this scope has no Worker; use ort_worker=False (in this thread) or None (whatever works)");
  }
  const inThread = !!options.inThread || !hasWorker;
  const all = self.crossOriginIsolated && hasWorker ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const threads = options.threads ? Math.min(Number(options.threads), all) : all;
  const mode = inThread ? "in-thread" : "worker";
  const checked = checkAssets(base);
  let rpc;
  let callerReady;
  if (inThread) {
    const local = checked.then(() => localCaller(base));
    rpc = { call: (method, args) => local.then((c) => c.call(method, args)), fail() {} };
    callerReady = local;
  } else {
    const host = new Worker(new URL("ort-host.js", base), { type: "module" });
    rpc = new RpcCaller(host);
    host.onerror = (ev) => rpc.fail(`the onnxruntime worker (${new URL("ort-host.js", base).href}) failed: ` +
                                    `${ev.message || "script error"}`);
    callerReady = checked;
  }
  let info = null;
  const ready = callerReady.then(() => rpc.call("init", [threads, options.hooks || null]))
    .then((r) => (info = { ...r, mode }), (e) => {
      const msg = e && e.message ? e.message : String(e);
      throw new Error(msg.startsWith("webformers") ? msg
        : `onnxruntime-web (${new URL("ort/ort.webgpu.min.mjs", base).href}) did not load: ${msg}`);
    });
  ready.catch(() => {});
  const warmStarted = options.warm ? ready.then(() => rpc.call("warmStart", [options.warm])) : Promise.resolve(0);
  warmStarted.catch(() => {});
  const call = (method, args, transfer) => ready.then(() => rpc.call(method, args, inThread ? [] : transfer));

  // What Python calls (backend/_ortweb.py): array data is copied out of the Python heap once and
  // transferred to the worker; metadata crosses back as JSON.
  const ort = {
    async create(model, external, optionsJson) {
      // (Pyodide destroys the proxies it passed in once the returned promise settles)
      const ext = external ? external.toJs({ dict_converter: Object.fromEntries }) : [];
      // the bytes are transferred, not copied (a model is held once, not twice, while its session is made)
      if ([model, ...ext.map((e) => e.data)].some((a) => a.buffer.detached)) {
        throw new Error("these model bytes were already handed to onnxruntime (a concurrent load of the same " +
                        "file?): load a model once and share it");
      }
      const transfer = [model, ...ext.map((e) => e.data)].filter(wholeBuffer).map((a) => a.buffer);
      return JSON.stringify(await call("create", [model, ext, JSON.parse(optionsJson)], transfer));
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
      const r = await call("run", [spec.sid, feeds, spec.fetch, spec.free], transfer);
      const meta = [];
      const data = [];
      for (const [name, o] of Object.entries(r.outputs)) {
        if (o.ref !== undefined) meta.push([name, o.ref, o.type, o.dims, o.location]);
        else { meta.push([name, null, o.type, o.dims, data.length]); data.push(o.data); }
      }
      return { meta: JSON.stringify({ outputs: meta, ms: r.ms }), data };
    },
    release: (refs) => call("release", [Array.from(refs)]),
    dispose: (sid) => call("dispose", [sid]),
    adopt: async (key) => JSON.stringify(await call("adopt", [key])),
    dropWarm: () => call("dropWarm"),
    remember: (model, module, planJson) => call("remember", [model, module, JSON.parse(planJson)]),
    info: () => info,
    adapterInfo: () => adapterInfo(info ? info.threads : threads),
    sha256: sha256Hex,
  };
  return { ort, rpc, ready, warmStarted, mode };
}

/** Start the runtime and wait until onnxruntime-web is loaded; rejects with the reason (missing files named). */
export async function startRuntime(assetsUrl, options = {}) {
  const opts = options && typeof options.toJs === "function"
    ? options.toJs({ dict_converter: Object.fromEntries }) : options || {};
  const rt = launchRuntime(assetsUrl, opts);
  await rt.ready;
  return rt.ort;
}

/**
 * The event and Stop glue of a worker whose page talks to it with postMessage (the demo: web/wf-client.js):
 * emit(event) posts {type: "event", event}; {type: "stop"} from the page sets the Stop flag, and
 * {type: "stop-and-pieces", shared} hands over an Int32Array on a SharedArrayBuffer ([0] Stop, [1] streamed
 * pieces the page handled): then each "token" event waits (up to a second) until the page has handled every
 * piece but the one just posted, so at most one piece is in flight when the user clicks Stop.
 */
export function postMessageHost(scope = self, pageLagLimitMs = 1000) {
  let cancelled = false;
  let shared = null;
  let piecesPosted = 0;
  scope.addEventListener("message", (ev) => {
    const m = ev.data;
    if (m && m.type === "stop") cancelled = true;
    else if (m && m.type === "stop-and-pieces") shared = m.shared;
  });
  const waitForPage = (posted) => {
    const until = performance.now() + pageLagLimitMs;
    for (;;) {
      const handled = Atomics.load(shared, 1);
      const left = until - performance.now();
      if (handled >= posted - 1 || left <= 0) return;
      Atomics.wait(shared, 1, handled, left);
    }
  };
  return {
    emit(event) {
      const e = event && typeof event.toJs === "function"
        ? event.toJs({ dict_converter: Object.fromEntries }) : event;
      scope.postMessage({ type: "event", event: e });
      if (shared !== null && e && e.status === "token") waitForPage(++piecesPosted);
    },
    isCancelled: () => cancelled || (shared !== null && Atomics.load(shared, 0) === 1),
    resetCancel() {
      cancelled = false;
      if (shared) Atomics.store(shared, 0, 0);
    },
  };
}
