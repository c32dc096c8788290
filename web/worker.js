// The webformers worker: hosts Pyodide + onnxruntime-web so the page's main thread never blocks.
//
// Protocol (page -> worker): {id, type: "run", code}   run Python (top-level await allowed)
//                            {type: "cancel"}           set the cancel flag read by generation
//                            {type: "cancel-flag", flag} a shared Int32Array: [0] Stop, [1] pieces handled
// (worker -> page):          {type: "boot", timings} | {type: "boot-error", message}
//                            {id, type: "result", ok, value | error}
//                            {type: "event", event}     progress / warning / stream events from Python
import { loadPyodide } from "./pyodide/pyodide.mjs";
import { sha256Hex } from "./sha256.js";

const base = new URL("./", import.meta.url);
const params = new URL(self.location.href).searchParams;
// ?threads=N (WebformersClient's `threads` option): onnxruntime-web's WASM thread count, fixed at boot
const requestedThreads = Number(params.get("threads")) || 0;
const allThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
const ortThreads = requestedThreads ? Math.min(requestedThreads, allThreads) : allThreads;

// onnxruntime-web runs in its own worker (ort-host.js), started first: it loads while Pyodide boots and,
// with ?warm=<model id> (WebformersClient's `warmStart`), creates that model's sessions meanwhile.
const host = new Worker(new URL("./ort-host.js", import.meta.url), { type: "module" });
const hostPending = new Map();
let hostNext = 1;
let hostFailed = null;
host.onmessage = (ev) => {
  const m = ev.data;
  const p = hostPending.get(m.id);
  hostPending.delete(m.id);
  if (p) m.ok ? p.resolve(m.value) : p.reject(new Error(m.error));
};
host.onerror = (ev) => {
  hostFailed = `the onnxruntime worker failed: ${ev.message || "script error"}`;
  for (const p of hostPending.values()) p.reject(new Error(hostFailed));
  hostPending.clear();
};
function hostCall(op, args = {}, transfer = []) {
  if (hostFailed) return Promise.reject(new Error(hostFailed));
  const id = hostNext++;
  return new Promise((resolve, reject) => {
    hostPending.set(id, { resolve, reject });
    host.postMessage({ id, op, ...args }, transfer);
  });
}
const ortReady = hostCall("init", { threads: ortThreads, base: base.href, probe: params.get("probe") });
ortReady.catch(() => {});
const warmModel = params.get("warm");
const warmStarted = warmModel ? hostCall("warmStart", { model: warmModel }) : Promise.resolve(0);
warmStarted.catch(() => {});
let ortInfo = null;

let cancelled = false;
// Int32Array on a SharedArrayBuffer shared with wf-client.js: [0] Stop, [1] streamed pieces the page handled
let shared = null;
let piecesPosted = 0;
const PAGE_LAG_LIMIT_MS = 1000;
const post = (msg) => self.postMessage(msg);

// Small helpers Python calls through `js.wfBridge` (see pysrc/webformers/backend/_ortweb.py).
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

// What Python calls through `js.wfOrt` (see pysrc/webformers/backend/_ortweb.py): requests to ort-host.js.
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
    const r = await hostCall("create", { model, external: ext, options: JSON.parse(optionsJson) }, transfer);
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
    const r = await hostCall("run", { sid: spec.sid, feeds, fetch: spec.fetch, free: spec.free }, transfer);
    const meta = [];
    const data = [];
    for (const [name, o] of Object.entries(r.outputs)) {
      if (o.ref !== undefined) meta.push([name, o.ref, o.type, o.dims, o.location]);
      else { meta.push([name, null, o.type, o.dims, data.length]); data.push(o.data); }
    }
    return { meta: JSON.stringify({ outputs: meta, ms: r.ms }), data };
  },
  release: (refs) => hostCall("release", { refs: Array.from(refs) }),
  dispose: (sid) => hostCall("dispose", { sid }),
  adopt: async (key) => JSON.stringify(await hostCall("adopt", { key })),
  dropWarm: () => hostCall("dropWarm"),
  remember: (model, module, planJson) => hostCall("remember", { model, module, plan: JSON.parse(planJson) }),
  info: () => ortInfo,
  benchReport: () => hostCall("probe"),
};

async function fetchVerified(url, sha256, what) {
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new Error(`${what} could not be fetched from ${url}: ${e}`);
  }
  if (!resp.ok) throw new Error(`${what} is missing: ${url} answered HTTP ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const got = await sha256Hex(bytes);
  if (got !== sha256) {
    throw new Error(`${what} is corrupted: sha256 of ${url} is ${got}, expected ${sha256}`);
  }
  return bytes;
}

let pyodide = null;

async function boot() {
  const t = {};
  const t0 = performance.now();
  let mark = t0;
  const lap = (name) => { const now = performance.now(); t[name] = Math.round(now - mark); mark = now; };

  const siteResp = await fetch(new URL("site.json", base));
  if (!siteResp.ok) throw new Error(`site.json is missing (HTTP ${siteResp.status}): run python build.py build`);
  const site = await siteResp.json();

  // Our wheels (checked against site.json's sha256) and onnxruntime-web's module download while
  // Pyodide starts; errors surface where they are awaited, in boot order.
  const wheelBytes = site.wheels.map((w) => fetchVerified(new URL(`wheels/${w.file}`, base), w.sha256, `wheel ${w.file}`));
  for (const p of wheelBytes) p.catch(() => {});  // handled where awaited below

  // Pyodide core and its packages (numpy, micropip, packaging) from this origin only. Pyodide can
  // hang on a missing core file, so check they are there first.
  await Promise.all((site.pyodide_core || []).map(async (f) => {
    const r = await fetch(new URL(`pyodide/${f}`, base), { method: "HEAD" });
    if (!r.ok) throw new Error(`Pyodide core file pyodide/${f} is missing (HTTP ${r.status}): rebuild the site`);
  }));
  pyodide = await loadPyodide({ indexURL: new URL("pyodide/", base).href, fullStdLib: false });
  lap("pyodide");
  const errors = [];
  await pyodide.loadPackage(site.pyodide_packages, {
    messageCallback: () => {},
    errorCallback: (m) => errors.push(m),
  });
  for (const name of site.pyodide_packages) {
    try {
      pyodide.pyimport(name);
    } catch (e) {
      const file = site.pyodide_files[name];
      throw new Error(`Pyodide package ${name} (${file}) did not load: ${errors.join("; ") || e.message}`);
    }
  }
  lap("numpy");

  // Our wheels: written to the in-memory FS, installed.
  const paths = [];
  for (const [i, w] of site.wheels.entries()) {
    const bytes = await wheelBytes[i];
    const path = `/tmp/wheels/${w.file}`;
    pyodide.FS.mkdirTree("/tmp/wheels");
    pyodide.FS.writeFile(path, bytes);
    paths.push(path);
  }
  const micropip = pyodide.pyimport("micropip");
  // deps=False: dependencies come from site.json in order (micropip would look in the lock / PyPI).
  for (const p of paths) await micropip.install.callKwargs(`emfs:${p}`, { deps: false });
  for (const w of site.wheels) {
    try {
      pyodide.pyimport(w.import);
    } catch (e) {
      throw new Error(`wheel ${w.file} installed but 'import ${w.import}' failed: ${e.message}`);
    }
  }
  lap("wheel");

  // onnxruntime-web (started in its own worker at the very beginning), then the Python side of the bridge.
  try {
    ortInfo = await ortReady;
  } catch (e) {
    throw new Error(`onnxruntime-web (ort/ort.webgpu.min.mjs) did not load: ${e.message}`);
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

const booted = boot().then(
  (timings) => { post({ type: "boot", timings }); return true; },
  (err) => { post({ type: "boot-error", message: String(err && err.message || err) }); return false; },
);

self.onmessage = async (ev) => {
  const msg = ev.data;
  if (msg.type === "cancel") { cancelled = true; return; }
  if (msg.type === "cancel-flag") { shared = msg.flag; return; }
  if (msg.type !== "run") return;
  if (!(await booted)) {
    post({ id: msg.id, type: "result", ok: false, error: "webformers did not boot" });
    return;
  }
  try {
    const value = toJs(await pyodide.runPythonAsync(msg.code));
    post({ id: msg.id, type: "result", ok: true, value });
  } catch (e) {
    post({ id: msg.id, type: "result", ok: false, error: String(e && e.message || e) });
  }
};
