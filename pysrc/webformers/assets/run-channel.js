// A session run whose reply comes back through shared memory: the caller (Python's thread, runtime.js) posts the
// request and blocks in Atomics.wait until onnxruntime's worker (ort-host.js) has written the reply into a
// SharedArrayBuffer, so a decode step costs one message and a wake-up instead of two messages, a promise and an
// event-loop turn in each thread. Needs cross-origin isolation and a thread that may block (a worker).
//
// The wait is bounded (`blockMs`): past it, or when the reply does not fit the buffer, `send` returns a promise
// instead (Atomics.waitAsync), so a worker that dies mid-run is still noticed by the caller's event loop
// (`fail` rejects that promise).
//
// Shared state: ctrl Int32Array [state, seq, byte length]; data: the reply, [meta JSON (UTF-8)][pad][blocks].
// meta: {outputs: [[name, ref, type, dims, location]] for outputs left in the worker, [name, null, type, dims,
// index] for fetched ones, in the order of `blocks`: [[byteOffset, byteLength]]}, ms, state (a carried state:
// [ref, location] | null), blocks} or {error}.
import { errorData, transferValue } from "./rpc.js";

const STATE = 0;
const SEQ = 1;
const LEN = 2;
const IDLE = 0;
const PENDING = 1;
const DONE = 2;
const FAILED = 3;
const OVERFLOW = 4;

export const RUN_MESSAGE = "webformers-run-shared";
const GROW_MESSAGE = "webformers-run-shared-grow";
const FIRST_BYTES = 1 << 20;

const TYPED = { float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array,
                uint8: Uint8Array, int8: Int8Array, bool: Uint8Array };

/** Whether this thread can wait on shared memory (cross-origin isolated, and not a page's main thread). */
export function canBlock() {
  if (!self.crossOriginIsolated || typeof SharedArrayBuffer !== "function" || typeof Atomics.waitAsync !== "function") {
    return false;
  }
  try {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 1, 0);  // "not-equal" where waiting is allowed
    return true;
  } catch (e) {
    return false;
  }
}

const align8 = (n) => (n + 7) & ~7;

/** The caller's end, one per onnxruntime worker. */
export class RunChannel {
  constructor(port) {
    this.port = port;
    this.ctrlBuffer = new SharedArrayBuffer(16);
    this.ctrl = new Int32Array(this.ctrlBuffer);
    this.data = new SharedArrayBuffer(FIRST_BYTES);
    this.seq = 0;
    this.busy = false;  // a request is out (one at a time: callers use RPC meanwhile)
    this.failure = null;
    this.reject = null;  // the waiting promise's, while one waits
  }

  /** Post a run request; returns {ready: true, value} when the reply came within `blockMs`, else {ready: false,
   *  promise}. value / promise: {meta (JSON string, the format above), data: [typed arrays]}. */
  send(request, transfer, blockMs) {
    if (this.failure) throw this.failure;
    this.busy = true;
    const seq = ++this.seq;
    Atomics.store(this.ctrl, SEQ, seq);
    Atomics.store(this.ctrl, STATE, PENDING);
    this.port.postMessage({ type: RUN_MESSAGE, seq, ctrl: this.ctrlBuffer, data: this.data, ...request }, transfer);
    if (blockMs > 0 && Atomics.wait(this.ctrl, STATE, PENDING, blockMs) !== "timed-out") {
      const state = Atomics.load(this.ctrl, STATE);
      if (state !== OVERFLOW) return { ready: true, value: this._read(state) };
    }
    return { ready: false, promise: this._settle(seq) };
  }

  /** The worker is gone: reject the waiting reply and every later send with `error`. */
  fail(error) {
    this.failure = error;
    this.busy = false;
    if (this.reject) this.reject(error);
    this.reject = null;
  }

  async _settle(seq) {
    for (;;) {
      const state = Atomics.load(this.ctrl, STATE);
      if (state === OVERFLOW) {  // a bigger buffer for the reply the worker keeps
        this.data = new SharedArrayBuffer(align8(Atomics.load(this.ctrl, LEN)) * 2);
        Atomics.store(this.ctrl, STATE, PENDING);
        this.port.postMessage({ type: GROW_MESSAGE, seq, data: this.data });
        continue;
      }
      if (state !== PENDING) return this._read(state);
      const w = Atomics.waitAsync(this.ctrl, STATE, PENDING);
      if (w.async) {
        await new Promise((resolve, reject) => {
          this.reject = reject;
          w.value.then(resolve);
        }).finally(() => { this.reject = null; });
      }
      if (this.failure) throw this.failure;
    }
  }

  _read(state) {
    const len = Atomics.load(this.ctrl, LEN);
    const bytes = new Uint8Array(this.data, 0, len);
    const metaLen = new DataView(this.data).getUint32(0, true);
    const meta = new TextDecoder().decode(bytes.slice(4, 4 + metaLen));
    Atomics.store(this.ctrl, STATE, IDLE);
    this.busy = false;
    const parsed = JSON.parse(meta);
    if (state === FAILED) {
      const e = new Error(parsed.error.message);
      if (parsed.error.name) e.name = parsed.error.name;
      if (parsed.error.stack) e.stack = parsed.error.stack;
      throw e;
    }
    const fetched = parsed.outputs.filter((o) => o[1] === null);
    const data = parsed.blocks.map(([offset, length], i) => {
      const Typed = TYPED[fetched[i][2]] || Uint8Array;
      return new Typed(this.data.slice(offset, offset + length));
    });
    return { meta, data };
  }
}

/** A run's result ({outputs: {name: {ref, type, dims, location} | {type, dims, data}}, ms, state}) as Python
 *  reads it: {outputs: [[name, ref, type, dims, location] | [name, null, type, dims, index in datas]], state:
 *  [ref, location] | null, datas: [typed arrays]}. */
export function runReply(result) {
  const outputs = [];
  const datas = [];
  for (const [name, o] of Object.entries(result.outputs)) {
    if (o.ref !== undefined) outputs.push([name, o.ref, o.type, o.dims, o.location]);
    else { outputs.push([name, null, o.type, o.dims, datas.length]); datas.push(o.data); }
  }
  return { outputs, state: result.state ? [result.state.ref, result.state.location] : null, datas };
}

/** Encode a run's result or an error. */
function encode(result, error) {
  const enc = new TextEncoder();
  if (error) {
    const meta = enc.encode(JSON.stringify({ error: errorData(error) }));
    return { meta, blocks: [], total: 4 + meta.length };
  }
  const { outputs, state, datas } = runReply(result);
  // the meta's length depends on the offsets it lists: place the blocks after a generous guess, then check
  let guess = 4 + enc.encode(JSON.stringify({ outputs, ms: result.ms, state })).length + 32 * (datas.length + 1);
  for (;;) {
    let at = align8(guess);
    const blocks = datas.map((d) => { const b = [at, d.byteLength]; at = align8(at + d.byteLength); return b; });
    const meta = enc.encode(JSON.stringify({ outputs, ms: result.ms, state, blocks }));
    if (4 + meta.length <= guess) return { meta, blocks, datas, total: at };
    guess = 4 + meta.length + 64;
  }
}

function write(target, encoded) {
  const view = new DataView(target);
  view.setUint32(0, encoded.meta.length, true);
  new Uint8Array(target, 4, encoded.meta.length).set(encoded.meta);
  (encoded.datas || []).forEach((d, i) => {
    const [offset, length] = encoded.blocks[i];
    new Uint8Array(target, offset, length).set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
  });
}

/** The worker's end: answer RUN_MESSAGE requests arriving at `scope` with `handlers.run`. */
export function serveRunChannel(scope, handlers) {
  const kept = new Map();  // seq -> encoded reply waiting for a bigger buffer
  const finish = (ctrl, data, seq, encoded) => {
    Atomics.store(ctrl, LEN, encoded.total);
    if (encoded.total > data.byteLength) {
      kept.set(seq, { ctrl, encoded });
      Atomics.store(ctrl, STATE, OVERFLOW);
    } else {
      write(data, encoded);
      Atomics.store(ctrl, STATE, encoded.datas ? DONE : FAILED);
    }
    Atomics.notify(ctrl, STATE);
  };
  scope.addEventListener("message", async (ev) => {
    const m = ev.data;
    if (!m || (m.type !== RUN_MESSAGE && m.type !== GROW_MESSAGE)) return;
    if (m.type === GROW_MESSAGE) {
      const k = kept.get(m.seq);
      kept.delete(m.seq);
      if (k) finish(k.ctrl, m.data, m.seq, k.encoded);
      return;
    }
    const ctrl = new Int32Array(m.ctrl);
    let encoded;
    try {
      encoded = encode(transferValue(await handlers.run(m.sid, m.feeds, m.fetch, m.free, !!m.gpu, m.carry)), null);
    } catch (e) {
      encoded = encode(null, e);
    }
    if (Atomics.load(ctrl, SEQ) === m.seq) finish(ctrl, m.data, m.seq, encoded);
  });
}
