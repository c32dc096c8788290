// Page-side client of the webformers worker: boot status, running Python, events.
// Options:
// - `threads`: onnxruntime-web's WASM thread count (default: every core when the page is cross-origin
//   isolated, else 1); fixed when the worker boots.
// - `warmStart`: the model id (e.g. "HuggingFaceTB/SmolLM2-135M-Instruct") the page is about to load.
//   While Pyodide boots, onnxruntime (in its own worker) creates the sessions of the last variant of that
//   model this origin loaded, from the Cache API (files checked against their sha256); the load adopts
//   them if it asks for the same files, else they are freed. Nothing happens on a first visit.
// - `hooks`: the URL (this origin) of a module installed in both workers before anything loads: its
//   `installWorkerHooks({server, ort})` in the Python worker, its `installOrtHooks({server, ort})` in
//   onnxruntime's (see worker.js); they may register RPC methods, which `call(method, args)` reaches.
//   The benchmark's probes (bench/probe.js) are such a module.
// - `snapshot`: false boots Python fresh every time (default true: from the memory snapshot a previous
//   visit left in the Cache API, see webformers/pyboot.js).
import { RpcCaller } from "./webformers/rpc.js";

export class WebformersClient extends EventTarget {
  constructor({ workerUrl = new URL("./worker.js", import.meta.url), threads = null, warmStart = null,
                hooks = null, snapshot = true } = {}) {
    super();
    workerUrl = new URL(workerUrl);
    if (threads !== null) {
      if (!Number.isInteger(threads) || threads < 1) throw new Error(`threads must be a positive integer, got ${threads}`);
      workerUrl.searchParams.set("threads", String(threads));
    }
    if (warmStart !== null) {
      if (typeof warmStart !== "string" || !warmStart) throw new Error(`warmStart must be a model id string, got ${warmStart}`);
      workerUrl.searchParams.set("warm", warmStart);
    }
    if (hooks !== null) {
      const url = new URL(hooks, self.location.href);
      if (url.origin !== self.location.origin) throw new Error(`hooks must be a module on this origin, got ${hooks}`);
      workerUrl.searchParams.set("hooks", url.href);
    }
    if (snapshot === false) workerUrl.searchParams.set("snapshot", "0");
    this.events = [];
    this.timings = null;
    this.bootError = null;
    this.worker = new Worker(workerUrl, { type: "module" });
    this._rpc = new RpcCaller(this.worker);
    // Shared with the worker (cross-origin isolated pages only; elsewhere the "stop" message does it):
    // [0] Stop — the worker reads it before every decode step, so a Stop reaches a busy generation loop
    //     at once instead of after the worker's queued messages;
    // [1] streamed pieces this page has handled — the worker stays at most one piece ahead of it, so
    //     text generated before a Stop cannot pile up in the message queue and keep streaming after it.
    this._shared = self.crossOriginIsolated ? new Int32Array(new SharedArrayBuffer(8)) : null;
    this._piecesHandled = 0;
    if (this._shared) this.worker.postMessage({ type: "stop-and-pieces", shared: this._shared });
    this.worker.addEventListener("message", (ev) => {
      if (ev.data && ev.data.type === "event") this._onEvent(ev.data.event);
    });
    let booting = true;
    // a script that fails to load or run while booting fails the boot (later errors are the console's)
    this.worker.onerror = (ev) => {
      if (booting) this._rpc.fail(`worker failed to start: ${ev.message || "script error"} (${ev.filename || "worker.js"})`);
    };
    this.ready = this._rpc.call("ready").then((timings) => {
      booting = false;
      this.timings = timings;
      this.dispatchEvent(new CustomEvent("boot", { detail: timings }));
      return timings;
    }, (e) => {
      booting = false;
      this.bootError = e.message;
      this.dispatchEvent(new CustomEvent("boot-error", { detail: e.message }));
      throw e;
    });
    this.ready.catch(() => {});
  }

  _onEvent(event) {
    // keep load/warning events for inspection; streamed tokens are only dispatched
    if (event && event.status !== "token") {
      this.events.push(event);
      if (this.events.length > 5000) this.events.splice(0, this.events.length - 5000);
    }
    this.dispatchEvent(new CustomEvent("wf-event", { detail: event }));
    if (this._shared && event && event.status === "token") {
      // after the listeners ran (a Stop clicked in one of them is already set)
      Atomics.store(this._shared, 1, ++this._piecesHandled);
      Atomics.notify(this._shared, 1);
    }
  }

  /**
   * Run Python in the worker (top-level await allowed); resolves to the last expression's value. It runs once
   * Pyodide's packages (numpy) have loaded; `{beforePackages: true}` runs it at once, even while they still
   * load after a snapshot restore (code that reaches numpy only through webformers' loaders, which wait).
   */
  runPython(code, { beforePackages = false } = {}) {
    return this._rpc.call("runPython", [code, { beforePackages }]);
  }

  /** The boot timings once Pyodide's packages have loaded too (numpy_load, numpy_import, bridge). */
  bootTimings() {
    return this._rpc.call("timings");
  }

  /** A request to the worker's RPC server: `runPython`, or a method a `?hooks=` module registered. */
  call(method, args = []) {
    return this._rpc.call(method, args);
  }

  cancel() {
    if (this._shared) Atomics.store(this._shared, 0, 1);
    else this.worker.postMessage({ type: "stop" });
  }
}
