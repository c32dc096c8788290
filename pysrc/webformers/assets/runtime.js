// The browser runtime of webformers, started from its assets URL (the folder holding this file, ort-host.js
// and ort/): what Python's browser backend (pysrc/webformers/runtime/backend/_ortweb.py) calls.
//
//   startRuntime(assetsUrl, {threads, inThread, hooks, warm}) -> Promise<runtime>   (Python uses this)
//   launchRuntime(assetsUrl, options) -> {ort: runtime, rpc, ready, warmStarted, mode}   (no waiting)
//   checkAssets(assetsUrl) -> Promise: rejects with one error naming each missing / misconfigured file
//   postMessageHost(scope) -> {emit, isCancelled, resetCancel}: the demo page's event and Stop glue
//
// inThread: true runs onnxruntime-web in this thread, false requires a Worker, unset: a Worker where one exists.
// The runtime: create(model, external, optionsJson), run(specJson, ...arrays), runShared(specJson, blockMs,
// ...arrays) (the reply through shared memory, run-channel.js), release(refs), dispose(sid),
// adopt(key), dropWarm(), remember(model, module, planJson), info() (null until ready: {threads, version,
// mode}), calls() (the requests sent by method, JSON), adapterInfo(), sha256(bytes). onnxruntime-web runs in a module Worker of its own (ort-host.js)
// where `Worker` exists, else (or with inThread) in this thread; both run the handlers of ort-core.js.
// threads: onnxruntime-web's WASM threads (default: up to 4 when cross-origin isolated, else 1; 1 in-thread
// without Worker). hooks: a same-origin module with installOrtHooks (see ort-core.js); warm: a model id whose
// last load is replayed from the Cache API while the caller boots (worker mode).
import { RpcCaller, transferValue } from "./rpc.js";
import { canBlock, RunChannel, runReply } from "./run-channel.js";
import { sha256Hex } from "./sha256.js";

/** The files the runtime needs, relative to the assets URL. */
export const RUNTIME_FILES = [
  "runtime.js", "ort-host.js", "ort-core.js", "rpc.js", "run-channel.js", "sha256.js", "exec-form.js",
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
  const handlers = watchDevice(ortHandlers(null), new URL("ort/ort.webgpu.min.mjs", assetsBase).href);
  return {
    async call(method, args = []) {
      const fn = handlers[method];
      if (!fn) throw new Error(`unknown method ${method}; valid: ${Object.keys(handlers).join(", ")}`);
      return transferValue(await fn(...args));
    },
    fail() {},
  };
}

/** The error of a call on a WebGPU session once onnxruntime-web's GPUDevice is lost (name "DeviceLost"). */
export function deviceLostError(lost, method) {
  const e = new Error(`webformers: the WebGPU device onnxruntime-web uses was lost (${lost.reason}` +
                      `${lost.message ? `: ${lost.message}` : ""}) during ${method}; its WebGPU sessions ` +
                      "cannot run any more");
  e.name = "DeviceLost";
  return e;
}

/**
 * ort-core.js's handlers, watching onnxruntime-web's GPUDevice (`ort.env.webgpu.device`, set once a WebGPU
 * session exists): once the device is lost (`device.lost`, e.g. after `device.destroy()`) while WebGPU
 * sessions are open, every run of a WebGPU session rejects at once with deviceLostError - also a run in
 * flight, which may never settle on a lost device - and so does a WebGPU create. A device lost with no WebGPU
 * session open is onnxruntime-web releasing it after the last session went (dispose()): the next WebGPU
 * session gets a new one, which is watched in turn. Adds deviceLost() -> null | {reason, message}. WASM
 * sessions keep running.
 */
const LOST_GRACE_MS = 1000;
export function watchDevice(handlers, ortUrl) {
  let lost = null;
  const waiting = new Set();  // the rejections of the WebGPU runs in flight
  const gpuSids = new Map();  // open WebGPU sessions (created here, or seen running on WebGPU) -> their device
  const watched = new WeakSet();
  // the device onnxruntime-web uses now (null before its first WebGPU session), watched from here on
  const watch = async () => {
    const ort = await import(ortUrl);
    const device = await (ort.env.webgpu || {}).device;
    if (!device || !device.lost) return null;
    if (watched.has(device)) return device;
    watched.add(device);
    device.lost.then((info) => {
      // released by onnxruntime-web with its last session: no open session was on it
      if (![...gpuSids.values()].includes(device)) return;
      lost = { reason: info && info.reason ? String(info.reason) : "unknown",
               message: info && info.message ? String(info.message) : "" };
      for (const reject of waiting) reject(deviceLostError(lost, "run"));
      waiting.clear();
    });
    return device;
  };
  const usesGpu = (options) => ((options && options.executionProviders) || [])
    .some((ep) => (typeof ep === "string" ? ep : ep && ep.name) === "webgpu");
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  return {
    ...handlers,
    async create(model, external, options) {
      const gpu = usesGpu(options);
      if (gpu && lost) throw deviceLostError(lost, "create");
      const r = await handlers.create(model, external, options);
      if (gpu) gpuSids.set(r.sid, await watch().catch(() => null));
      return r;
    },
    // gpu: the session runs on WebGPU (the caller knows; warm-started sessions were made without this wrapper)
    async run(sid, feeds, fetch, free, gpu = false, carry = null) {
      if (!gpu) return handlers.run(sid, feeds, fetch, free, carry);
      if (lost) throw deviceLostError(lost, "run");
      if (!gpuSids.has(sid)) gpuSids.set(sid, await watch().catch(() => null));
      let reject;
      const onLoss = new Promise((_, r) => { reject = r; });
      onLoss.catch(() => {});
      waiting.add(reject);
      const running = handlers.run(sid, feeds, fetch, free, carry).catch(async (e) => {
        // a run can fail on the lost device before `device.lost` settles: give it a moment to
        for (let t = 0; t < LOST_GRACE_MS && !lost; t += 50) await sleep(50);
        throw lost ? deviceLostError(lost, "run") : e;
      });
      try {
        return await Promise.race([running, onLoss]);
      } finally {
        waiting.delete(reject);
      }
    },
    dispose(sid) {
      gpuSids.delete(sid);
      return handlers.dispose(sid);
    },
    deviceLost: async () => lost,
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
  const hostUrl = new URL("ort-host.js", base).href;
  const ortUrl = new URL("ort/ort.webgpu.min.mjs", base).href;
  let info = null;
  const initialise = (caller, booted) => checked.then(() => caller.call("init", [threads, options.hooks || null]))
    .then((r) => { booted.done = true; return (info = { ...r, mode }); }, (e) => {
      const msg = e && e.message ? e.message : String(e);
      throw new Error(msg.startsWith("webformers") ? msg : `onnxruntime-web (${ortUrl}) did not load: ${msg}`);
    });

  // The onnxruntime worker in use: {gen, caller, ready, worker}. gen counts the workers started (1, 2, ...).
  // A worker that dies (an error event, a message that cannot be read, or the Web Lock it holds while it
  // lives being released: it stopped or crashed) rejects its pending and later calls at once with an Error
  // named "RuntimeCrashed"; the next call starts a new worker. In-thread there is one "worker", gen 1.
  let generation = 0;
  let current = null;
  // runs answered through shared memory (run-channel.js) where this thread may block on it
  const shared = !inThread && canBlock();
  function startHost() {
    const gen = ++generation;
    const worker = new Worker(hostUrl, { type: "module" });
    const caller = new RpcCaller(worker);
    const channel = shared ? new RunChannel(worker) : null;
    const booted = { done: false };
    const died = (why) => {
      if (caller.failure !== null) return;
      const during = [...new Set(caller.pendingMethods())];
      if (channel && channel.busy) during.push("run");
      const message = booted.done
        ? `webformers: the onnxruntime worker (${hostUrl}) ${why}` +
          `${during.length ? ` during ${[...new Set(during)].join(", ")}` : " while idle"}; its sessions and ` +
          "tensors are gone: the next call starts a new worker and models re-create their sessions from the " +
          "cached files"
        : `the onnxruntime worker (${hostUrl}) failed: ${why}`;
      caller.fail(message, "RuntimeCrashed");
      if (channel) {
        const e = new Error(message);
        e.name = "RuntimeCrashed";
        channel.fail(e);
      }
      worker.terminate();
      if (current && current.gen === gen) current = null;
    };
    worker.addEventListener("error", (ev) => died(booted.done ? `failed (${ev.message || "script error"})`
                                                                : ev.message || "script error"));
    worker.addEventListener("messageerror", () => died("sent a message that could not be read"));
    worker.addEventListener("message", (ev) => {
      const m = ev.data;
      if (m && m.type === "webformers-ort-alive" && typeof m.lock === "string" && self.navigator.locks) {
        self.navigator.locks.request(m.lock, () => died("stopped"));
      }
    });
    const ready = initialise(caller, booted);
    ready.catch(() => {});
    current = { gen, caller, ready, worker, booted, channel };
    return current;
  }
  if (inThread) {
    const local = checked.then(() => localCaller(base));
    const caller = { call: (method, args) => local.then((c) => c.call(method, args)), fail() {} };
    current = { gen: ++generation, caller, ready: local.then(() => initialise(caller, {})), worker: null,
                booted: {}, channel: null };
    current.ready.catch(() => {});
  } else {
    startHost();
  }
  const live = () => current || startHost();
  const ready = current.ready;
  const warmStarted = options.warm ? ready.then(() => current.caller.call("warmStart", [options.warm]))
    : Promise.resolve(0);
  warmStarted.catch(() => {});
  // run `fn(host)` on the live worker once it is initialised (a new one when the last one died)
  const onHost = (fn) => {
    const h = live();
    return h.ready.then(() => fn(h));
  };
  // requests sent to onnxruntime's side, by method (calls(): what a generation costs in messages)
  const sent = {};
  const send = (h, method, args = [], transfer = []) => {
    sent[method] = (sent[method] || 0) + 1;
    return h.caller.call(method, args, inThread ? [] : transfer);
  };
  const call = (method, args, transfer) => onHost((h) => send(h, method, args, transfer));
  const isLive = (gen) => current !== null && current.gen === Number(gen);
  const staleError = (what) => {
    const e = new Error(`webformers: ${what} belonged to an onnxruntime worker that crashed; create it again`);
    e.name = "RuntimeCrashed";
    return e;
  };
  // The calls other modules make on the worker (web/worker.js hands this to its hooks): the live worker's
  const rpc = { call, fail: (message) => current && current.caller.fail(message) };

  // a run's feeds: refs as they are, arrays copied out of the Python heap once (transferred to the worker)
  const runFeeds = (specJson, arrays) => {
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
    if (spec.gen != null && !isLive(spec.gen)) throw staleError(`session ${spec.sid}`);
    return { spec, feeds, transfer };
  };
  const rpcRun = async (spec, feeds, transfer) => {
    const r = await call("run", [spec.sid, feeds, spec.fetch, spec.free, !!spec.gpu, spec.carry || null], transfer);
    const { outputs, state, datas } = runReply(r);
    return { meta: JSON.stringify({ outputs, ms: r.ms, state }), data: datas };
  };

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
      return JSON.stringify(await onHost(async (h) => ({
        ...(await send(h, "create", [model, ext, JSON.parse(optionsJson)], transfer)),
        gen: h.gen,
      })));
    },
    // spec: JSON {sid, gen, gpu, refs: {name: ref}, arrays: [[name, type, dims]], fetch, free}; arrays: numpy
    // PyProxies. gen: the worker that made the session (a stale one rejects); gpu: it runs on WebGPU; carry
    // (optional): a carried state (ort-core.js run). Resolves to {meta: JSON {outputs: [[name, ref, type, dims,
    // location] | [name, null, type, dims, index in data]], ms, state: [ref, location] | null}, data: [typed
    // arrays]}.
    async run(specJson, ...arrays) {
      const { spec, feeds, transfer } = runFeeds(specJson, arrays);
      return rpcRun(spec, feeds, transfer);
    },
    // The same run, its reply through shared memory (run-channel.js) when this thread may block: waits up to
    // blockMs for it. Returns {ready: true, value} (value: what run resolves to) or {ready: false, promise}
    // (past blockMs, without a channel, or while another run is out).
    runShared(specJson, blockMs, ...arrays) {
      const { spec, feeds, transfer } = runFeeds(specJson, arrays);
      const h = current;
      if (!h || !h.channel || !h.booted.done || h.channel.busy || h.channel.failure) {
        return { ready: false, promise: rpcRun(spec, feeds, transfer) };
      }
      sent.runShared = (sent.runShared || 0) + 1;
      const r = h.channel.send({ sid: spec.sid, feeds, fetch: spec.fetch, free: spec.free, gpu: !!spec.gpu,
                                 carry: spec.carry || null }, transfer, Number(blockMs));
      if (!r.ready) sent.runSharedLate = (sent.runSharedLate || 0) + 1;
      return r;
    },
    // whether runShared can answer through shared memory here
    sharedRuns: shared,
    // refs / sid of a worker that is gone (gen) are dropped: the next worker reuses the numbers
    release: async (refs, gen = null) => (gen == null || isLive(gen) ? call("release", [Array.from(refs)]) : null),
    dispose: async (sid, gen = null) => (gen == null || isLive(gen) ? call("dispose", [sid]) : null),
    adopt: async (key) => JSON.stringify(await onHost(async (h) => {
      const r = await send(h, "adopt", [key]);
      return r === null ? null : { ...r, gen: h.gen };
    })),
    dropWarm: () => call("dropWarm"),
    remember: (model, module, planJson) => call("remember", [model, module, JSON.parse(planJson)]),
    info: () => info,
    // the requests sent so far, by method, as JSON ({"run": 17, "release": 1, ...})
    calls: () => JSON.stringify(sent),
    // whether worker `gen` is the one running (false once it crashed: its sessions are gone)
    isLive,
    // null, or {reason, message} once the live worker's WebGPU device was lost
    deviceLost: () => (current === null ? Promise.resolve(null) : onHost((h) => send(h, "deviceLost"))),
    // Test hooks (tests/test_recovery.py), worker mode only: "crash" stops the worker, "lose-device" destroys
    // onnxruntime-web's GPUDevice; at "now", or "run": when the next run request arrives (crash: instead of
    // answering it; lose-device: once it started)
    testHook(name, at = "now") {
      if (inThread || current === null) throw new Error(`testHook(${name}) needs a running onnxruntime worker`);
      if (!["crash", "lose-device"].includes(name) || !["now", "run"].includes(at)) {
        throw new Error(`testHook(${name}, ${at}): valid names: crash, lose-device; valid at: now, run`);
      }
      current.worker.postMessage({ type: "webformers-test-hook", name, at });
    },
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
