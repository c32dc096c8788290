// The webformers worker: hosts Pyodide so the page's main thread never blocks; onnxruntime-web runs in
// a worker of its own (ort-host.js) that this one starts first.
//
// An RPC server (rpc.js) for the page (wf-client.js) with the methods
//   ready()          -> the boot timings, once Python is up (rejects with the boot error). After a snapshot
//                       restore that is before Pyodide's packages (numpy) have loaded: they load in the
//                       background (webformers/pyboot.js deferPackages; timings.packages = "background")
//   runPython(code, {beforePackages}) -> the value of the code's last expression (top-level await allowed);
//                       it runs once the packages have loaded, or at once with beforePackages: true (for code
//                       that imports numpy only through webformers' loaders, which wait for it themselves)
//   timings()        -> the boot timings once the packages have loaded (numpy_load, numpy_import, bridge)
// Other messages from the page: {type: "stop"} (the Stop button on a page that is not cross-origin
// isolated) and {type: "stop-and-pieces", shared} (an Int32Array on a SharedArrayBuffer: [0] Stop,
// [1] streamed pieces the page handled). To the page: {type: "event", event}, the progress / warning /
// stream events from Python.
//
// Query string: ?threads=N (onnxruntime-web's WASM threads), ?warm=<model id> (warm start), ?snapshot=0 (no
// Python memory snapshot, see webformers/pyboot.js), and
// ?hooks=<module> (same origin): a module whose `installWorkerHooks({server, ort, pyodide})` runs once
// Pyodide has booted, before ready() answers (`server`: this worker's RPC server, `ort`: the RpcCaller
// of onnxruntime's worker) and whose `installOrtHooks` runs in onnxruntime's worker (see webformers/ort-core.js).
// The benchmark's probes use it (web/bench/probe.js); a page without ?hooks runs none of it.
import { bootPython } from "./webformers/pyboot.js";
import { RpcServer } from "./webformers/rpc.js";
import { launchRuntime, postMessageHost } from "./webformers/runtime.js";

const base = new URL("./", import.meta.url);
const params = new URL(self.location.href).searchParams;
// ?threads=N (WebformersClient's `threads` option): onnxruntime-web's WASM thread count, fixed at boot
const requestedThreads = Number(params.get("threads")) || 0;

const hooksUrl = (() => {
  const spec = params.get("hooks");
  if (!spec) return null;
  const url = new URL(spec, base);
  if (url.origin !== self.location.origin) throw new Error(`hooks module ${spec} is not on this origin`);
  return url.href;
})();

// onnxruntime-web runs in its own worker (webformers/runtime.js starts webformers/ort-host.js), started
// first: it loads while Pyodide boots and, with ?warm=<model id> (WebformersClient's `warmStart`), creates
// that model's sessions meanwhile.
const runtime = launchRuntime(new URL("./webformers/", import.meta.url),
                              { threads: requestedThreads, hooks: hooksUrl, warm: params.get("warm") });
const ortRpc = runtime.rpc;
const ortReady = runtime.ready;
const warmStarted = runtime.warmStarted;
let ortInfo = null;

// What Python calls through `js.wfOrt` (requests to onnxruntime's worker) and `js.wfBridge` (the page's
// events and Stop over postMessage, the adapter, sha256); see pysrc/webformers/runtime/backend/_ortweb.py.
self.wfOrt = runtime.ort;
self.wfBridge = { ...postMessageHost(self), adapterInfo: runtime.ort.adapterInfo, sha256: runtime.ort.sha256 };

let pyodide = null;
// runPython calls in flight, and when the last one ended
let pythonBusy = 0;
let pythonIdleSince = performance.now();
const SNAPSHOT_IDLE_MS = 2000;
const whenPythonIdle = (ms) => new Promise((resolve) => {
  const tick = () => {
    if (pythonBusy === 0 && performance.now() - pythonIdleSince >= ms) resolve();
    else setTimeout(tick, 250);
  };
  tick();
});

// Python (pyboot.js: Pyodide, our wheels, numpy (in the background after a snapshot restore)), then
// onnxruntime-web's worker; the Python side of the bridge once numpy is there (`afterPackages`).
let afterPackages = null;
async function boot() {
  const t0 = performance.now();
  // ?snapshot=0: no memory snapshot (always a fresh Python boot, none made for the next visit)
  const py = await bootPython({ base, snapshot: params.get("snapshot") !== "0", deferPackages: true });
  pyodide = py.pyodide;
  const t = py.timings;
  // after a fresh boot: the snapshot for the next visit, made once Python has been idle for a while (it
  // costs a second Pyodide boot's CPU; a page that keeps Python busy does not pay it)
  pythonIdleSince = performance.now();
  if (py.makeSnapshot) {
    whenPythonIdle(SNAPSHOT_IDLE_MS).then(py.makeSnapshot).then(
      (r) => self.postMessage({ type: "event", event: { status: "python-snapshot", bytes: r.bytes, timings: r.timings } }),
      (e) => self.postMessage({ type: "event", event: { status: "warning", message: String(e && e.message || e) } }));
  }
  let mark = performance.now();
  const lap = (name) => { const now = performance.now(); t[name] = Math.round(now - mark); mark = now; };

  // onnxruntime-web (started in its own worker at the very beginning), then the Python side of the bridge.
  try {
    ortInfo = await ortReady;
  } catch (e) {
    throw new Error(`onnxruntime-web (webformers/ort/ort.webgpu.min.mjs) did not load: ${e.message}`);
  }
  lap("ort");
  t.total = Math.round(performance.now() - t0);
  afterPackages = (async () => {
    await py.packages;
    const b0 = performance.now();
    await pyodide.runPythonAsync(`
from webformers.runtime import backend
assert backend.IN_BROWSER and backend.backend_name == "onnxruntime-web"
`);
    t.bridge = Math.round(performance.now() - b0);
    if (t.packages === "background") {
      self.postMessage({ type: "event", event: { status: "python-packages", numpy: t.numpy,
                                                   numpy_load: t.numpy_load, numpy_import: t.numpy_import } });
    }
  })();
  afterPackages.catch(() => {});  // reported by runPython / timings
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

async function packagesLoaded() {
  try {
    await afterPackages;
  } catch (e) {
    throw new Error(`webformers did not boot: ${e && e.message || e}`);
  }
}

const server = new RpcServer(self, {
  ready: () => booted,
  async timings() {
    const t = await booted;
    await packagesLoaded();
    return t;
  },
  async runPython(code, options = {}) {
    try {
      await booted;
    } catch (e) {
      throw new Error("webformers did not boot");
    }
    if (!(options && options.beforePackages)) await packagesLoaded();
    pythonBusy++;
    try {
      return toJs(await pyodide.runPythonAsync(code));
    } finally {
      if (--pythonBusy === 0) pythonIdleSince = performance.now();
    }
  },
});
const booted = boot();
booted.catch(() => {});  // reported by ready()
