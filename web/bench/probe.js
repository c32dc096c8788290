// The benchmark's probes. Only the benchmark page (bench.html) installs them; the demo page never does.
//
// As the webformers workers' hooks module (WebformersClient({hooks: "bench/probe.js"}), see worker.js):
//   installWorkerHooks  in the Python worker once Pyodide has booted: the memory probe, the RPC methods
//                       benchOrtRuns() -> onnxruntime's session.run times (ms) since the last call
//                       benchMemory()  -> both workers' WebAssembly memories and GPU buffers
//   installOrtHooks     in onnxruntime's worker: memory and run-time probes, the RPC method benchReport()
// The transformers.js worker (bench/tjs-host.js) installs the same probes with installMemoryProbe and
// installRunProbe.

let memoryReport = null;
let runs = null;

/**
 * Record the WebAssembly memories instantiated from now on (a module's heap is imported when threaded,
 * exported otherwise) and the live / peak bytes of GPU buffers created through WebGPU. Returns the
 * report function: {wasm_bytes, wasm_memories, gpu_peak_bytes, gpu_live_bytes, js_heap_bytes}.
 */
export function installMemoryProbe() {
  if (memoryReport) return memoryReport;
  const memories = [];
  const gpu = { live: 0, peak: 0 };
  const keep = (v) => { if (v instanceof WebAssembly.Memory && !memories.includes(v)) memories.push(v); };
  const grab = (obj) => {
    if (!obj) return;
    for (const v of Object.values(obj)) {
      keep(v);
      if (v && typeof v === "object" && !(v instanceof WebAssembly.Memory)) Object.values(v).forEach(keep);
    }
  };
  for (const fn of ["instantiate", "instantiateStreaming"]) {
    const orig = WebAssembly[fn];
    WebAssembly[fn] = async function (source, imports, ...rest) {
      grab(imports);
      const r = await orig.call(this, source, imports, ...rest);
      grab((r.instance || r).exports);
      return r;
    };
  }
  if (self.GPUDevice) {
    const create = GPUDevice.prototype.createBuffer;
    const sizes = new WeakMap();
    GPUDevice.prototype.createBuffer = function (desc) {
      const b = create.call(this, desc);
      sizes.set(b, desc.size);
      gpu.live += desc.size;
      gpu.peak = Math.max(gpu.peak, gpu.live);
      return b;
    };
    const destroy = GPUBuffer.prototype.destroy;
    GPUBuffer.prototype.destroy = function () {
      const s = sizes.get(this);
      if (s !== undefined) { gpu.live -= s; sizes.delete(this); }
      return destroy.call(this);
    };
  }
  memoryReport = () => ({
    wasm_bytes: memories.reduce((a, m) => a + m.buffer.byteLength, 0),
    wasm_memories: memories.length,
    gpu_peak_bytes: gpu.peak,
    gpu_live_bytes: gpu.live,
    js_heap_bytes: self.performance && performance.memory ? performance.memory.usedJSHeapSize : null,
  });
  return memoryReport;
}

/**
 * Time every InferenceSession.run of the onnxruntime-web module `ort` on this worker's clock, so the
 * pure runtime time per step can be told apart from each library's own per-step work. Returns the
 * array the times (ms) are appended to.
 */
export function installRunProbe(ort) {
  if (runs) return runs;
  runs = [];
  const run = ort.InferenceSession.prototype.run;
  ort.InferenceSession.prototype.run = async function (...args) {
    const t0 = performance.now();
    try { return await run.apply(this, args); } finally { runs.push(performance.now() - t0); }
  };
  return runs;
}

/** onnxruntime's worker (ort-host.js): benchReport() -> its memory report and the run times (cleared). */
export function installOrtHooks({ server, ort }) {
  const memory = installMemoryProbe();
  const times = installRunProbe(ort);
  server.register({ benchReport: () => ({ ...memory(), runs: times.splice(0) }) });
}

/**
 * The Python worker (worker.js), installed once Pyodide has booted (wrapping WebAssembly.instantiate
 * earlier would enumerate the imports Pyodide resolves lazily), so Pyodide's heap is counted apart.
 */
export function installWorkerHooks({ server, ort, pyodide }) {
  const memory = installMemoryProbe();
  server.register({
    benchOrtRuns: async () => (await ort.call("benchReport")).runs,
    async benchMemory() {
      const mine = memory();
      const theirs = await ort.call("benchReport");
      return { ...mine, wasm_bytes: mine.wasm_bytes + pyodide._module.HEAP8.length + theirs.wasm_bytes,
               wasm_memories: mine.wasm_memories + 1 + theirs.wasm_memories,
               gpu_peak_bytes: theirs.gpu_peak_bytes, gpu_live_bytes: theirs.gpu_live_bytes };
    },
  });
}
