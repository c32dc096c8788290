// A plain Pyodide module worker (no webformers code of its own): {id, code} -> {id, ok, value | error}.
import { loadPyodide } from "./pyodide/pyodide.mjs";

let pyodide = null;
const booted = (async () => {
  pyodide = await loadPyodide({ indexURL: new URL("./pyodide/", self.location.href).href });
  await pyodide.loadPackage("micropip");
})();
booted.then(() => self.postMessage({ booted: true }), (e) => self.postMessage({ booted: false, error: String(e) }));

self.onmessage = async (ev) => {
  const { id, code } = ev.data;
  try {
    await booted;
    let r = await pyodide.runPythonAsync(code);
    if (r && typeof r.toJs === "function") r = r.toJs({ dict_converter: Object.fromEntries });
    self.postMessage({ id, ok: true, value: r });
  } catch (e) {
    console.error(String(e.message || e));
    self.postMessage({ id, ok: false, error: String(e.message || e) });
  }
};
