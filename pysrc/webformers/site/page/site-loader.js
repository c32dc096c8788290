// The page loader of a `webformers site`: boots Pyodide on this page's main thread from the site's
// pyodide/, installs the site's wheels (each checked against site.json's sha256: pyboot.js), then runs
// the site's app (site.json "app", a Python file) with top-level await allowed.
//
// Served at <site>/webformers/site-loader.js; a page includes it with
//   <script type="module" src="./webformers/site-loader.js"></script>
// Progress and errors go to the element #wf-status (created when the page has none).
// window.webformersSite.ready resolves to {pyodide, site, timings} once the app has run (rejects with
// the boot or app error); window.webformersSite.error holds the error's text.
import { bootPython } from "./pyboot.js";

const base = new URL("../", import.meta.url);

function statusElement() {
  let el = document.getElementById("wf-status");
  if (!el) {
    el = document.createElement("div");
    el.id = "wf-status";
    document.body.prepend(el);
  }
  return el;
}

function show(text, isError = false) {
  const el = statusElement();
  el.textContent = text;
  el.hidden = !text;
  el.classList.toggle("wf-error", isError);
}

async function fetchApp(path) {
  const url = new URL(path, base);
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new Error(`the app ${path} could not be fetched from ${url}: ${e}`);
  }
  if (!resp.ok) throw new Error(`the app ${path} is missing: ${url} answered HTTP ${resp.status}`);
  return resp.text();
}

async function start() {
  const t0 = performance.now();
  show("Starting Python…");
  const { pyodide, site, timings } = await bootPython({ base });
  window.webformersSite.pyodide = pyodide;
  window.webformersSite.site = site;
  if (site.app) {
    show(`Running ${site.app}…`);
    const code = await fetchApp(site.app);
    const globals = pyodide.globals.get("dict")();
    globals.set("__name__", "__main__");
    globals.set("__file__", site.app);
    try {
      await pyodide.runPythonAsync(code, { globals, filename: site.app });
    } finally {
      globals.destroy();
    }
  }
  timings.total = Math.round(performance.now() - t0);
  show("");
  return { pyodide, site, timings };
}

window.webformersSite = { pyodide: null, site: null, error: null, ready: null };
window.webformersSite.ready = start();
window.webformersSite.ready.catch((e) => {
  window.webformersSite.error = String(e && e.message ? e.message : e);
  show(window.webformersSite.error, true);
  console.error(e);
});
