// onnxruntime-web in a worker of its own (started by runtime.js): an RPC server (rpc.js) for the handlers
// of ort-core.js - init(threads, hooks), create(model, external, options), run(sid, feeds, fetch, free),
// release(refs), dispose(sid), warmStart(model), adopt(key), dropWarm(), remember(model, module, plan).
// Being a separate thread, it can create a model's sessions (warm start) while Pyodide is still booting.
import { RpcServer } from "./rpc.js";
import { ortHandlers } from "./ort-core.js";

const server = new RpcServer(self);
server.register(ortHandlers(server));
