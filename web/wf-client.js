// Page-side client of the webformers worker: boot status, running Python, events.
// Options:
// - `threads`: onnxruntime-web's WASM thread count (default: every core when the page is cross-origin
//   isolated, else 1); fixed when the worker boots.
// - `warmStart`: the model id (e.g. "HuggingFaceTB/SmolLM2-135M-Instruct") the page is about to load.
//   While Pyodide boots, onnxruntime (in its own worker) creates the sessions of the last variant of that
//   model this origin loaded, from the Cache API (files checked against their sha256); the load adopts
//   them if it asks for the same files, else they are freed. Nothing happens on a first visit.
export class WebformersClient extends EventTarget {
  constructor({ workerUrl = new URL("./worker.js", import.meta.url), threads = null, warmStart = null } = {}) {
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
    this.events = [];
    this.timings = null;
    this.bootError = null;
    this._next = 1;
    this._pending = new Map();
    this.worker = new Worker(workerUrl, { type: "module" });
    // Shared with the worker (cross-origin isolated pages only; elsewhere the "cancel" message does it):
    // [0] Stop — the worker reads it before every decode step, so a Stop reaches a busy generation loop
    //     at once instead of after the worker's queued messages;
    // [1] streamed pieces this page has handled — the worker stays at most one piece ahead of it, so
    //     text generated before a Stop cannot pile up in the message queue and keep streaming after it.
    this._shared = self.crossOriginIsolated ? new Int32Array(new SharedArrayBuffer(8)) : null;
    this._piecesHandled = 0;
    if (this._shared) this.worker.postMessage({ type: "cancel-flag", flag: this._shared });
    this.ready = new Promise((resolve, reject) => { this._boot = { resolve, reject }; });
    this.ready.catch(() => {});
    this.worker.onmessage = (ev) => this._onMessage(ev.data);
    this.worker.onerror = (ev) => {
      const message = `worker failed to start: ${ev.message || "script error"} (${ev.filename || "worker.js"})`;
      this.bootError = message;
      this._boot.reject(new Error(message));
      this.dispatchEvent(new CustomEvent("boot-error", { detail: message }));
    };
  }

  _onMessage(msg) {
    if (msg.type === "boot") {
      this.timings = msg.timings;
      this._boot.resolve(msg.timings);
      this.dispatchEvent(new CustomEvent("boot", { detail: msg.timings }));
    } else if (msg.type === "boot-error") {
      this.bootError = msg.message;
      this._boot.reject(new Error(msg.message));
      this.dispatchEvent(new CustomEvent("boot-error", { detail: msg.message }));
    } else if (msg.type === "event") {
      // keep load/warning events for inspection; streamed tokens are only dispatched
      if (msg.event && msg.event.status !== "token") {
        this.events.push(msg.event);
        if (this.events.length > 5000) this.events.splice(0, this.events.length - 5000);
      }
      this.dispatchEvent(new CustomEvent("wf-event", { detail: msg.event }));
      if (this._shared && msg.event && msg.event.status === "token") {
        // after the listeners ran (a Stop clicked in one of them is already set)
        Atomics.store(this._shared, 1, ++this._piecesHandled);
        Atomics.notify(this._shared, 1);
      }
    } else if (msg.type === "result") {
      const p = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      if (p) msg.ok ? p.resolve(msg.value) : p.reject(new Error(msg.error));
    }
  }

  /** Run Python in the worker (top-level await allowed); resolves to the last expression's value. */
  runPython(code) {
    const id = this._next++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, type: "run", code });
    });
  }

  cancel() {
    if (this._shared) Atomics.store(this._shared, 0, 1);
    else this.worker.postMessage({ type: "cancel" });
  }
}
