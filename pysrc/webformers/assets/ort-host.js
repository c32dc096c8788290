// onnxruntime-web in a worker of its own (started by runtime.js): an RPC server (rpc.js) for the handlers
// of ort-core.js - init(threads, hooks), create(model, external, options), run(sid, feeds, fetch, free, gpu),
// release(refs), dispose(sid), warmStart(model), adopt(key), dropWarm(), remember(model, module, plan) - with
// runtime.js's watchDevice around them (a lost WebGPU device rejects WebGPU runs at once; deviceLost()), and
// the same run answered through shared memory (run-channel.js).
// Being a separate thread, it can create a model's sessions (warm start) while Pyodide is still booting.
//
// While it lives it holds a Web Lock and posts its name ({type: "webformers-ort-alive", lock}): runtime.js
// waits for that lock, which is granted once this worker is gone however it ended.
// Test hooks (runtime.js testHook): {type: "webformers-test-hook", name: "crash" | "lose-device", at: "now" | "run"}.
import { RpcServer } from "./rpc.js";
import { RUN_MESSAGE, serveRunChannel } from "./run-channel.js";
import { ortHandlers } from "./ort-core.js";
import { watchDevice } from "./runtime.js";

const ORT_URL = new URL("./ort/ort.webgpu.min.mjs", import.meta.url).href;

const hooks = { crash: null, "lose-device": null };  // name -> "run" when armed for the next run request
const loseDevice = async () => {
  const ort = await import(ORT_URL);
  const device = await (ort.env.webgpu || {}).device;
  if (device) device.destroy();
};
// registered before the RPC server's listener, so an armed crash stops the worker before it answers
self.addEventListener("message", (ev) => {
  const m = ev.data;
  if (m && m.type === "webformers-test-hook") {
    if (m.at === "now") {
      if (m.name === "crash") self.close();
      else loseDevice();
    } else {
      hooks[m.name] = m.at;
    }
    return;
  }
  if (!m || (m.method !== "run" && m.type !== RUN_MESSAGE)) return;
  if (hooks.crash === "run") {
    ev.stopImmediatePropagation();
    self.close();
  } else if (hooks["lose-device"] === "run") {
    hooks["lose-device"] = null;
    setTimeout(loseDevice, 0);
  }
});

const server = new RpcServer(self);
const handlers = watchDevice(ortHandlers(server), ORT_URL);
server.register(handlers);
serveRunChannel(self, handlers);  // runs whose reply goes through shared memory (runtime.js runShared)

if (self.navigator && self.navigator.locks) {
  const lock = `webformers-ort-host-${self.crypto && self.crypto.randomUUID ? self.crypto.randomUUID()
    : `${Date.now()}-${Math.random()}`}`;
  self.navigator.locks.request(lock, () => {
    self.postMessage({ type: "webformers-ort-alive", lock });
    return new Promise(() => {});  // held until this worker ends
  });
}
