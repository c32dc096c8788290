// Boots Python from a webformers site: Pyodide from <site>/pyodide/, its packages (site.json
// "pyodide_packages"), then our wheels (site.json "wheels", each checked against its sha256).
// Served from <site>/webformers/pyboot.js; works in a worker or on a page's main thread.
//
//   const { pyodide, site, timings } = await bootPython({ base });
//
// base: the site's root URL (default: the folder above this file). timings: ms per step
// (pyodide, numpy, wheel).
import { sha256Hex } from "./sha256.js";

const defaultBase = new URL("../", import.meta.url);

// The bytes at `url`, checked against `sha256`; errors name `what` and the URL.
export async function fetchVerified(url, sha256, what) {
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new Error(`${what} could not be fetched from ${url}: ${e}`);
  }
  if (!resp.ok) throw new Error(`${what} is missing: ${url} answered HTTP ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const got = await sha256Hex(bytes);
  if (got !== sha256) {
    throw new Error(`${what} is corrupted: sha256 of ${url} is ${got}, expected ${sha256}`);
  }
  return bytes;
}

export async function loadSiteJson(base = defaultBase) {
  const siteResp = await fetch(new URL("site.json", base));
  if (!siteResp.ok) throw new Error(`site.json is missing (HTTP ${siteResp.status}): run python build.py build`);
  return siteResp.json();
}

export async function bootPython({ base = defaultBase } = {}) {
  base = new URL(base);
  const t = {};
  let mark = performance.now();
  const lap = (name) => { const now = performance.now(); t[name] = Math.round(now - mark); mark = now; };

  const site = await loadSiteJson(base);
  const { loadPyodide } = await import(new URL("pyodide/pyodide.mjs", base).href);

  // Our wheels (checked against site.json's sha256) download while Pyodide starts; errors surface
  // where they are awaited, in boot order.
  const wheelBytes = site.wheels.map((w) => fetchVerified(new URL(`wheels/${w.file}`, base), w.sha256, `wheel ${w.file}`));
  for (const p of wheelBytes) p.catch(() => {});  // handled where awaited below

  // Pyodide core and its packages (numpy, micropip, packaging) from this origin only. Pyodide can
  // hang on a missing core file, so check they are there first.
  await Promise.all((site.pyodide_core || []).map(async (f) => {
    const r = await fetch(new URL(`pyodide/${f}`, base), { method: "HEAD" });
    if (!r.ok) throw new Error(`Pyodide core file pyodide/${f} is missing (HTTP ${r.status}): rebuild the site`);
  }));
  const pyodide = await loadPyodide({ indexURL: new URL("pyodide/", base).href, fullStdLib: false });
  lap("pyodide");
  const errors = [];
  await pyodide.loadPackage(site.pyodide_packages, {
    messageCallback: () => {},
    errorCallback: (m) => errors.push(m),
  });
  for (const name of site.pyodide_packages) {
    try {
      pyodide.pyimport(name);
    } catch (e) {
      const file = site.pyodide_files[name];
      throw new Error(`Pyodide package ${name} (${file}) did not load: ${errors.join("; ") || e.message}`);
    }
  }
  lap("numpy");

  // Our wheels: written to the in-memory FS, installed.
  const paths = [];
  for (const [i, w] of site.wheels.entries()) {
    const bytes = await wheelBytes[i];
    const path = `/tmp/wheels/${w.file}`;
    pyodide.FS.mkdirTree("/tmp/wheels");
    pyodide.FS.writeFile(path, bytes);
    paths.push(path);
  }
  const micropip = pyodide.pyimport("micropip");
  // deps=False: dependencies come from site.json in order (micropip would look in the lock / PyPI).
  for (const p of paths) await micropip.install.callKwargs(`emfs:${p}`, { deps: false });
  for (const w of site.wheels) {
    try {
      pyodide.pyimport(w.import);
    } catch (e) {
      throw new Error(`wheel ${w.file} installed but 'import ${w.import}' failed: ${e.message}`);
    }
  }
  lap("wheel");
  return { pyodide, site, timings: t };
}
