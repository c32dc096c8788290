// The webformers worker: hosts Pyodide + onnxruntime-web so the page's main thread never blocks.
//
// Protocol (page -> worker): {id, type: "run", code}   run Python (top-level await allowed)
//                            {type: "cancel"}           set the cancel flag read by generation
//                            {type: "cancel-flag", flag} a shared Int32Array: [0] Stop, [1] pieces handled
// (worker -> page):          {type: "boot", timings} | {type: "boot-error", message}
//                            {id, type: "result", ok, value | error}
//                            {type: "event", event}     progress / warning / stream events from Python
import { loadPyodide } from "./pyodide/pyodide.mjs";

const base = new URL("./", import.meta.url);
// ?threads=N (WebformersClient's `threads` option): onnxruntime-web's WASM thread count, read once when
// its WASM module starts (the first session)
const requestedThreads = Number(new URL(self.location.href).searchParams.get("threads")) || 0;
let ort = null;

async function loadOrt() {
  ort = await import("./ort/ort.webgpu.min.mjs");
  ort.env.wasm.wasmPaths = new URL("ort/", base).href;
  const all = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.numThreads = requestedThreads ? Math.min(requestedThreads, all) : all;
  ort.env.logLevel = "error";
  self.ort = ort;
  return ort;
}

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
  // numpy array (as a PyProxy) -> ort.Tensor, copying once out of the Python heap.
  tensorFromPy(type, pyArray, dims) {
    const buf = pyArray.getBuffer();
    try {
      return new ort.Tensor(type, buf.data.slice(), Array.from(dims));
    } finally {
      buf.release();
      pyArray.destroy();
    }
  },
  async adapterInfo() {
    const info = { webgpu: false, features: [], isFallbackAdapter: null,
                   crossOriginIsolated: self.crossOriginIsolated, backend: "onnxruntime-web",
                   wasmThreads: ort.env.wasm.numThreads };
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
  sha256: async (bytes) => hex(await crypto.subtle.digest("SHA-256", bytes)),
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

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchVerified(url, sha256, what) {
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new Error(`${what} could not be fetched from ${url}: ${e}`);
  }
  if (!resp.ok) throw new Error(`${what} is missing: ${url} answered HTTP ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const got = hex(await crypto.subtle.digest("SHA-256", bytes));
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
  const ortLoaded = loadOrt();
  for (const p of [...wheelBytes, ortLoaded]) p.catch(() => {});  // handled where awaited below

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

  // onnxruntime-web, then the Python side of the bridge.
  try {
    await ortLoaded;
  } catch (e) {
    throw new Error(`onnxruntime-web (ort/ort.webgpu.min.mjs) did not load: ${e.message}`);
  }
  await pyodide.runPythonAsync(`
import js
from webformers import backend
assert backend.IN_BROWSER and js.ort.InferenceSession is not None
`);
  lap("ort");
  t.total = Math.round(performance.now() - t0);
  t.ort_version = ort.env.versions ? ort.env.versions.web || ort.env.versions.common : "";
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
