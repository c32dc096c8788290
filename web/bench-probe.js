// Probes for the benchmark (bench.js).
//
// Injected into each worker before any model is loaded: records the WebAssembly memories that get
// instantiated (ORT's heap is imported when threaded, exported otherwise) and the live / peak bytes
// of GPU buffers created through WebGPU.
export const MEMORY_PROBE = `(() => {
  if (self.__benchMem) return;
  const mem = self.__benchMem = { memories: [], gpuLive: 0, gpuPeak: 0 };
  const grab = (obj) => {
    if (!obj) return;
    for (const v of Object.values(obj)) {
      if (v instanceof WebAssembly.Memory && !mem.memories.includes(v)) mem.memories.push(v);
      else if (v && typeof v === "object" && !(v instanceof WebAssembly.Memory)) {
        for (const w of Object.values(v)) {
          if (w instanceof WebAssembly.Memory && !mem.memories.includes(w)) mem.memories.push(w);
        }
      }
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
      mem.gpuLive += desc.size;
      mem.gpuPeak = Math.max(mem.gpuPeak, mem.gpuLive);
      return b;
    };
    const destroy = GPUBuffer.prototype.destroy;
    GPUBuffer.prototype.destroy = function () {
      const s = sizes.get(this);
      if (s !== undefined) { mem.gpuLive -= s; sizes.delete(this); }
      return destroy.call(this);
    };
  }
  self.__benchMemReport = (extra = 0) => ({
    wasm_bytes: mem.memories.reduce((a, m) => a + m.buffer.byteLength, 0) + extra,
    wasm_memories: mem.memories.length + (extra ? 1 : 0),
    gpu_peak_bytes: mem.gpuPeak,
    gpu_live_bytes: mem.gpuLive,
    js_heap_bytes: self.performance && performance.memory ? performance.memory.usedJSHeapSize : null,
  });
})();`;

// Injected too: times every InferenceSession.run of the given onnxruntime-web module on the worker's
// clock, so the pure runtime time per step can be told apart from each library's own per-step work.
export const RUN_PROBE = `(ort) => {
  if (self.__benchRuns) return;
  const runs = self.__benchRuns = [];
  const run = ort.InferenceSession.prototype.run;
  ort.InferenceSession.prototype.run = async function (...args) {
    const t0 = performance.now();
    try { return await run.apply(this, args); } finally { runs.push(performance.now() - t0); }
  };
}`;

// onnxruntime-web's worker imports this module when started with ?probe=bench-probe.js (ort-host.js):
// memory and run-time probes, read back through its "probe" request (which clears the run times).
export function installOrtProbe(ort) {
  (0, eval)(MEMORY_PROBE);
  (0, eval)(RUN_PROBE)(ort);
  self.__benchOrtReport = () => ({ ...self.__benchMemReport(), runs: self.__benchRuns.splice(0) });
}
