// One request/reply protocol between the page, the webformers workers and the benchmark's worker.
//
//   request  {id, method, args}                  args: the handler's positional arguments
//   reply    {id, ok: true, value}  |  {id, ok: false, error: {message, stack, name}}
//
// `RpcCaller` keeps one promise per request id (no timeout: a request lasts as long as its work) and
// rejects with an Error carrying the remote message, stack and name (an Error's own name is left out). `RpcServer` runs the handler registered
// for each request's method and posts its reply. Both listen with addEventListener, so the endpoint's
// other messages (events, the Stop flag) reach its other listeners untouched. Transferables: the
// `transfer` argument of `call` on the way out, a handler returning `withTransfer(value, transfer)` on
// the way back.

class Transfer {
  constructor(value, transfer) {
    this.value = value;
    this.transfer = transfer;
  }
}

/** A handler's result whose `transfer` buffers move to the caller instead of being copied. */
export const withTransfer = (value, transfer) => new Transfer(value, transfer);

/** The value of a handler's result, `withTransfer` or not (for callers that run handlers in-thread). */
export const transferValue = (r) => (r instanceof Transfer ? r.value : r);

const isRequest = (m) => !!m && typeof m.id === "number" && typeof m.method === "string";
const isReply = (m) => !!m && typeof m.id === "number" && typeof m.ok === "boolean" && !("method" in m);

/** An error as data that crosses threads: {message, stack, name} (an Error's own name is left out). */
export function errorData(e) {
  const message = e instanceof Error || (e && typeof e.message === "string") ? e.message : String(e);
  const name = e && typeof e.name === "string" && e.name !== "Error" ? e.name : null;
  return { message, stack: e && typeof e.stack === "string" ? e.stack : null, name };
}

function remoteError(error) {
  const e = new Error(error && error.message !== undefined ? error.message : String(error));
  if (error && error.stack) e.stack = error.stack;
  if (error && error.name) e.name = error.name;
  return e;
}

/** Sends requests through `port` (a Worker, or a worker's `self`) and settles them from its replies. */
export class RpcCaller {
  constructor(port) {
    this.port = port;
    this.next = 1;
    this.pending = new Map();
    this.failure = null;
    port.addEventListener("message", (ev) => {
      const m = ev.data;
      if (!isReply(m)) return;
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else p.reject(remoteError(m.error));
    });
  }

  /** Run `method(...args)` on the other side; resolves to its value, rejects with its error. */
  call(method, args = [], transfer = []) {
    if (this.failure !== null) return Promise.reject(this._error());
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      try {
        this.port.postMessage({ id, method, args }, transfer);
      } catch (e) {
        this.pending.delete(id);
        reject(e);
      }
    });
  }

  /** The methods of the requests waiting for a reply, in the order they were sent. */
  pendingMethods() {
    return [...this.pending.values()].map((p) => p.method);
  }

  /** The other side is gone: reject every pending request and every later one with `message` (an Error
   *  named `name` when given). */
  fail(message, name = null) {
    this.failure = message;
    const error = () => {
      const e = new Error(message);
      if (name) e.name = name;
      return e;
    };
    for (const p of this.pending.values()) p.reject(error());
    this.pending.clear();
    this._error = error;
  }
}

/** Answers the requests arriving at `port` with the handlers registered by method name. */
export class RpcServer {
  constructor(port, handlers = {}) {
    this.port = port;
    this.handlers = new Map();
    this.register(handlers);
    port.addEventListener("message", (ev) => {
      if (isRequest(ev.data)) this._answer(ev.data);
    });
  }

  /** Add handlers `{method: (...args) => value | Promise}`; a method name can be registered once. */
  register(handlers) {
    for (const [name, fn] of Object.entries(handlers)) {
      if (typeof fn !== "function") throw new Error(`RPC handler ${name} must be a function, got ${typeof fn}`);
      if (this.handlers.has(name)) throw new Error(`RPC method ${name} is already registered`);
      this.handlers.set(name, fn);
    }
  }

  async _answer({ id, method, args }) {
    let reply;
    let transfer = [];
    try {
      const fn = this.handlers.get(method);
      if (!fn) throw new Error(`unknown method ${method}; valid: ${[...this.handlers.keys()].join(", ")}`);
      let value = await fn(...(Array.isArray(args) ? args : []));
      if (value instanceof Transfer) ({ value, transfer } = value);
      reply = { id, ok: true, value: value === undefined ? null : value };
    } catch (e) {
      reply = { id, ok: false, error: errorData(e) };
    }
    try {
      this.port.postMessage(reply, transfer);
    } catch (e) {  // a value that cannot be cloned: the caller gets the reason instead
      this.port.postMessage({ id, ok: false, error: errorData(e) });
    }
  }
}
