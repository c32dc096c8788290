// Boots Python from a webformers site: Pyodide from <site>/pyodide/, its packages (site.json
// "pyodide_packages"), then our wheels (site.json "wheels", each checked against its sha256).
// Served from <site>/webformers/pyboot.js; works in a worker or on a page's main thread.
//
//   const { pyodide, site, timings, makeSnapshot, packages } = await bootPython({ base, snapshot: true,
//                                                                               deferPackages: true });
//
// base: the site's root URL (default: the folder above this file).
// snapshot: use a memory snapshot of the booted interpreter (Cache API "webformers-pysnapshot", one entry
//   per site) when there is a valid one; otherwise boot fresh and return `makeSnapshot()`, which makes one
//   for the next visit in a worker of its own (this file, started with the name "webformers-pysnapshot";
//   a second Pyodide boot, seconds of CPU: call it when the page is idle). It resolves to {bytes, timings}.
// deferPackages: after a snapshot restore, resolve as soon as Python and our wheels are up and load Pyodide's
//   packages (numpy) in the background: `packages` is the promise of that load (also `globalThis.wfPackages`,
//   which `webformers.platform.packages_ready()` awaits; timings.packages = "background"). Until it resolves,
//   importing one of them raises an ImportError that says so; webformers' loaders wait for it themselves. On
//   a fresh boot, and without deferPackages, the packages load before bootPython resolves (`packages` is
//   then already resolved).
// timings (ms): path ("snapshot" | "fresh"), pyodide (interpreter started / restored), numpy (Pyodide's
//   packages; numpy_load, numpy_import; with deferPackages on the snapshot path these come when `packages`
//   resolves, and numpy is the time from the restore to then), wheel (our wheels installed / mounted,
//   imports checked),
//   snapshot_check (key + Cache API lookup); on the snapshot path also snapshot_read (read + sha256 check,
//   overlapping the pyodide step) and snapshot_mb; snapshot_failed (a restore that failed); warnings: why a
//   snapshot was not used.
//
// The snapshot holds the Python heap only: Python initialised, our wheels on sys.path as zip files (at
// /lib/webformers-wheels/), and the modules that import without numpy (SNAPSHOT_PRELOAD). Packages with
// shared libraries (numpy) cannot be in it (Pyodide does not re-link them on restore): they load after the
// restore, and the wheels are written back to the same paths. The snapshot's key is the sha256 of what
// it was made from (SNAPSHOT_FORMAT, Pyodide's core files and packages, every wheel's sha256); an entry
// with another key, a sha256 mismatch or a failed restore is evicted and the boot runs fresh.
import { sha256Hex } from "./sha256.js";

const defaultBase = new URL("../", import.meta.url);

// bump when what goes into a snapshot changes
const SNAPSHOT_FORMAT = 1;
const SNAPSHOT_CACHE = "webformers-pysnapshot";
const SNAPSHOT_WORKER_NAME = "webformers-pysnapshot";
const WHEEL_DIR = "/lib/webformers-wheels";
// imported before the snapshot is made, so that a restored interpreter does not import them again: the
// standard library modules that Pyodide's package loader, numpy and webformers import, then jinja2 and
// the webformers modules (those that need numpy fail there and load on first use: the tokenizer, the store,
// the loaders' entry points and the demo chat import without it); the tokenizer's
// prewarm fills its regex caches
const SNAPSHOT_PRELOAD = [
  "ast", "asyncio", "base64", "bz2", "calendar", "concurrent.futures", "contextlib", "copy", "csv", "ctypes",
  "dataclasses", "datetime", "dis", "email.message", "email.parser", "enum", "fnmatch", "hashlib", "html.parser",
  "importlib.metadata", "importlib.resources", "importlib.util", "inspect", "ipaddress", "json", "logging",
  "pathlib", "pickle", "platform", "random", "re", "shutil", "socket", "subprocess", "sysconfig", "tarfile",
  "tempfile", "textwrap", "threading", "tokenize", "traceback", "typing", "unicodedata", "urllib.parse",
  "zipfile",
  "jinja2", "jinja2.sandbox", "webformers", "webformers.dtypes", "webformers.text.tokenizer",
  "webformers.text.tokenizer.prewarm",
  "webformers.text.chat_template", "webformers.store", "webformers.generation", "webformers.generation.config",
  "webformers.generation.stopping", "webformers.generation.streamers", "webformers.text.auto",
  "webformers.text.pipeline", "webformers.pipelines", "webformers.text.causal_lm", "webformers.page.chat",
];

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

// Pyodide can hang on a missing core file, so check they are there first.
async function checkCore(site, base) {
  await Promise.all((site.pyodide_core || []).map(async (f) => {
    const r = await fetch(new URL(`pyodide/${f}`, base), { method: "HEAD" });
    if (!r.ok) throw new Error(`Pyodide core file pyodide/${f} is missing (HTTP ${r.status}): rebuild the site`);
  }));
}

// Loads Pyodide's packages (site.json's) and imports each; ms in t.numpy_load / t.numpy_import.
// `beforeImport` runs between the two (the background load lifts its import guard there).
async function loadPackages(pyodide, site, t, beforeImport = () => {}) {
  const errors = [];
  const t0 = performance.now();
  await pyodide.loadPackage(site.pyodide_packages, { messageCallback: () => {}, errorCallback: (m) => errors.push(m) });
  const t1 = performance.now();
  beforeImport();
  importPackages(pyodide, site, errors);
  t.numpy_load = Math.round(t1 - t0);
  t.numpy_import = Math.round(performance.now() - t1);
}

function importPackages(pyodide, site, errors) {
  for (const name of site.pyodide_packages) {
    try {
      pyodide.pyimport(name);
    } catch (e) {
      const file = site.pyodide_files[name];
      throw new Error(`Pyodide package ${name} (${file}) did not load: ${errors.join("; ") || e.message}`);
    }
  }
}

// Until the packages are loaded in the background, importing one raises an ImportError that says why.
function guardPackages(pyodide, site) {
  pyodide.runPython(`
import sys

class _WfPackagesLoading:
    """Pyodide's packages load in the background after a snapshot restore (webformers/pyboot.js)."""
    names = frozenset(${JSON.stringify(site.pyodide_packages)})

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.names:
            raise ImportError(f"{top} is still loading (a Pyodide package, loaded in the background after the "
                              "Python snapshot was restored): await webformers.platform.packages_ready() before "
                              "importing it", name=name)
        return None

sys.meta_path.insert(0, _WfPackagesLoading())
del _WfPackagesLoading, sys
`);
}

function unguardPackages(pyodide) {
  pyodide.runPython(`
import sys
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_WfPackagesLoading"]
del sys
`);
}

// Loads the packages after Python is up; resolves once they import (the promise also rejects there).
function loadPackagesInBackground(pyodide, site, t) {
  guardPackages(pyodide, site);
  const t0 = performance.now();
  const done = (async () => {
    try {
      await loadPackages(pyodide, site, t, () => unguardPackages(pyodide));
      t.numpy = Math.round(performance.now() - t0);
    } catch (e) {
      unguardPackages(pyodide);
      throw e;
    }
  })();
  done.catch(() => {});  // reported where it is awaited
  return done;
}

function checkImports(pyodide, site) {
  for (const w of site.wheels) {
    try {
      pyodide.pyimport(w.import);
    } catch (e) {
      throw new Error(`wheel ${w.file} installed but 'import ${w.import}' failed: ${e.message}`);
    }
  }
}

function fetchWheels(site, base) {
  const wheelBytes = site.wheels.map((w) => fetchVerified(new URL(`wheels/${w.file}`, base), w.sha256, `wheel ${w.file}`));
  for (const p of wheelBytes) p.catch(() => {});  // handled where awaited
  return wheelBytes;
}

function timer() {
  const t = {};
  let mark = performance.now();
  const lap = (name) => { const now = performance.now(); t[name] = Math.round(now - mark); mark = now; };
  return { t, lap };
}

// ------------------------------------------------------------------------------- fresh boot
async function bootFresh(site, base, loadPyodide, wheelBytes, lap, t) {
  await checkCore(site, base);
  const pyodide = await loadPyodide({ indexURL: new URL("pyodide/", base).href, fullStdLib: false });
  lap("pyodide");
  await loadPackages(pyodide, site, t);
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
  checkImports(pyodide, site);
  lap("wheel");
  return pyodide;
}

// ------------------------------------------------------------------------------- snapshot
// What a snapshot is made from; its sha256 is the snapshot's key.
async function snapshotInputs(site, base) {
  let core = site.pyodide_core_sha256;
  if (!core) {  // a site.json without the core files' sha256: hash them here
    core = {};
    for (const f of ["pyodide.mjs", ...(site.pyodide_core || [])]) {
      const r = await fetch(new URL(`pyodide/${f}`, base));
      if (!r.ok) throw new Error(`Pyodide core file pyodide/${f} is missing (HTTP ${r.status})`);
      core[f] = await sha256Hex(new Uint8Array(await r.arrayBuffer()));
    }
  }
  return {
    format: SNAPSHOT_FORMAT,
    pyodide_version: site.pyodide_version,
    pyodide_core_sha256: core,
    pyodide_files: site.pyodide_files,
    wheels: site.wheels.map((w) => [w.file, w.sha256]),
    preload: SNAPSHOT_PRELOAD,
  };
}

async function snapshotKey(inputs) {
  return sha256Hex(new TextEncoder().encode(JSON.stringify(inputs)));
}

const snapshotUrl = (base) => new URL("webformers/python.snapshot", base).href;

// The zips the snapshot's sys.path holds (our wheels): [path in the FS, promise of the verified bytes].
const snapshotZips = (site, wheelBytes) => site.wheels.map((w, i) => [`${WHEEL_DIR}/${w.file}`, wheelBytes[i]]);

async function writeZips(pyodide, zips) {
  pyodide.FS.mkdirTree(WHEEL_DIR);
  for (const [path, bytes] of zips) pyodide.FS.writeFile(path, await bytes);
}

// This site's snapshot entry when it was made for `key` ({bytes: promise of the bytes, checked against their
// sha256 while Pyodide loads, cache, url}); evicts an entry made for another key (and says why in
// `warnings`). Null when there is none.
async function readSnapshot(base, key, inputs, warnings, t) {
  if (typeof caches === "undefined") return null;
  const cache = await caches.open(SNAPSHOT_CACHE);
  const url = snapshotUrl(base);
  const resp = await cache.match(url);
  if (!resp) return null;
  if (resp.headers.get("x-wf-key") !== key) {
    let made = {};
    try { made = JSON.parse(resp.headers.get("x-wf-inputs") || "{}"); } catch { /* reported as stale */ }
    warnings.push(`Python snapshot is stale (${describeChange(made, inputs)}): evicted, booting fresh`);
    await cache.delete(url);
    return null;
  }
  const problem = (why) => Object.assign(new Error(why), { snapshotProblem: why });
  const bytes = (async () => {
    const t0 = performance.now();
    let b;
    try {
      b = new Uint8Array(await resp.arrayBuffer());
    } catch (e) {
      throw problem(`could not be read (${e && e.message || e})`);
    }
    const got = await sha256Hex(b);
    const want = resp.headers.get("x-wf-sha256");
    if (got !== want) throw problem(`is corrupted (sha256 ${got}, expected ${want})`);
    t.snapshot_read = Math.round(performance.now() - t0);
    t.snapshot_mb = Math.round(b.length / 1e5) / 10;
    return b;
  })();
  bytes.catch(() => {});  // reported where the restore awaits it
  return { bytes, cache, url };
}

// What differs between the inputs a snapshot was made from and today's.
function describeChange(made, now) {
  const diffs = [];
  for (const k of Object.keys(now)) {
    if (JSON.stringify(made[k]) === JSON.stringify(now[k])) continue;
    if (k === "wheels") {
      const old = new Map(made.wheels || []);
      const changed = now.wheels.filter(([f, s]) => old.get(f) !== s).map(([f]) => f);
      diffs.push(changed.length ? `made for other wheels: ${changed.join(", ")} changed` : "made for other wheels");
    } else {
      diffs.push(`${k} changed`);
    }
  }
  return diffs.join("; ") || "made by another version";
}

// -> {pyodide, packages}: `packages` resolves once Pyodide's packages import (loaded in the background
// with `defer`, else before this resolves).
async function bootFromSnapshot(snap, site, base, loadPyodide, wheelBytes, lap, t, defer) {
  const zips = snapshotZips(site, wheelBytes);
  // (Pyodide awaits the snapshot's bytes once its own script is loaded: the check overlaps that)
  const pyodide = await loadPyodide({ indexURL: new URL("pyodide/", base).href, fullStdLib: false,
                                      _loadSnapshot: snap.bytes });
  lap("pyodide");
  // (numpy & co. cannot be in the snapshot: loaded now, or in the background), our wheels back where
  // sys.path expects them
  await writeZips(pyodide, zips);
  let packages = Promise.resolve();
  if (!defer) {
    await loadPackages(pyodide, site, t);
    lap("numpy");
  }
  // the snapshot's random state is the same on every visit: reseed from the OS
  pyodide.runPython(`
import sys
if "random" in sys.modules:
    sys.modules["random"].seed()
del sys
`);
  checkImports(pyodide, site);
  lap("wheel");
  if (defer) {
    t.packages = "background";
    packages = loadPackagesInBackground(pyodide, site, t);
  }
  return { pyodide, packages };
}

// Makes this site's snapshot in a worker of its own (a worker that imported numpy can no longer make one).
function makeSnapshotInWorker(base, key, inputs) {
  return new Promise((resolve, reject) => {
    const w = new Worker(import.meta.url, { type: "module", name: SNAPSHOT_WORKER_NAME });
    w.onmessage = (ev) => {
      w.terminate();
      if (ev.data.ok) resolve(ev.data);
      else reject(new Error(ev.data.error));
    };
    w.onerror = (ev) => {
      w.terminate();
      reject(new Error(`making the Python snapshot failed: the snapshot worker failed: ${ev.message || "script error"}`));
    };
    w.postMessage({ base: base.href, key, inputs });
  });
}

// In the snapshot worker: boot Python with the zips on sys.path, preload, snapshot, store.
async function makeSnapshot({ base, key, inputs }) {
  base = new URL(base);
  const { t, lap } = timer();
  const site = await loadSiteJson(base);
  const { loadPyodide } = await import(new URL("pyodide/pyodide.mjs", base).href);
  const zips = snapshotZips(site, fetchWheels(site, base));
  await checkCore(site, base);
  const pyodide = await loadPyodide({ indexURL: new URL("pyodide/", base).href, fullStdLib: false,
                                      _makeSnapshot: true });
  lap("pyodide");
  await writeZips(pyodide, zips);
  // (only names of its own in __main__, deleted before the snapshot)
  const preloaded = pyodide.runPython(`
def _wf_preload(paths, names):
    import importlib, json, sys
    sys.path[1:1] = paths
    ok = []
    for name in names:
        try:
            importlib.import_module(name)
            ok.append(name)
        except ImportError:
            pass
    return json.dumps(ok)
_wf_ok = _wf_preload(${JSON.stringify(zips.map(([path]) => path))}, ${JSON.stringify(SNAPSHOT_PRELOAD)})
del _wf_preload
_wf_ok
`);
  pyodide.runPython("del _wf_ok");
  lap("preload");
  const snap = pyodide.makeMemorySnapshot();
  lap("snapshot");
  const sha = await sha256Hex(snap);
  const cache = await caches.open(SNAPSHOT_CACHE);
  await cache.put(snapshotUrl(base), new Response(snap, { headers: {
    "content-type": "application/octet-stream", "x-wf-key": key, "x-wf-sha256": sha,
    "x-wf-inputs": JSON.stringify(inputs), "x-wf-preloaded": preloaded } }));
  lap("store");
  return { ok: true, timings: t, bytes: snap.length, preloaded: JSON.parse(preloaded) };
}

if (typeof WorkerGlobalScope !== "undefined" && self.name === SNAPSHOT_WORKER_NAME) {
  self.onmessage = async (ev) => {
    try {
      self.postMessage(await makeSnapshot(ev.data));
    } catch (e) {
      self.postMessage({ ok: false, error: `making the Python snapshot failed: ${e && e.message || e}` });
    }
  };
}

// ------------------------------------------------------------------------------- boot
export async function bootPython({ base = defaultBase, snapshot = false, deferPackages = false } = {}) {
  base = new URL(base);
  const { t, lap } = timer();
  const site = await loadSiteJson(base);
  // Pyodide's module and our wheels (checked against site.json's sha256) load while the snapshot is looked
  // up; errors surface where they are awaited, in boot order.
  const pyodideModule = import(new URL("pyodide/pyodide.mjs", base).href);
  pyodideModule.catch(() => {});
  const wheelBytes = fetchWheels(site, base);
  const warnings = [];
  let pyodide = null;
  let key = null;
  let inputs = null;
  let snap = null;
  if (snapshot) {
    try {
      inputs = await snapshotInputs(site, base);
      key = await snapshotKey(inputs);
      snap = await readSnapshot(base, key, inputs, warnings, t);
    } catch (e) {
      warnings.push(`Python snapshot could not be read: ${e && e.message || e}`);
    }
    lap("snapshot_check");
  }
  const { loadPyodide } = await pyodideModule;
  let packages = Promise.resolve();
  if (snap) {
    try {
      ({ pyodide, packages } = await bootFromSnapshot(snap, site, base, loadPyodide, wheelBytes, lap, t,
                                                      deferPackages));
      t.path = "snapshot";
    } catch (e) {
      const why = e && e.snapshotProblem || `did not restore (${e && e.message || e})`;
      warnings.push(`Python snapshot ${why}: evicted, booting fresh`);
      pyodide = null;
      await snap.cache.delete(snap.url).catch(() => {});
      lap("snapshot_failed");
    }
  }
  if (!pyodide) {
    pyodide = await bootFresh(site, base, loadPyodide, wheelBytes, lap, t);
    t.path = "fresh";
  }
  if (warnings.length) t.warnings = warnings;
  // After a fresh boot: makes the snapshot for the next visit when called (in a worker of its own)
  const makeSnapshot = snapshot && t.path === "fresh" && key && typeof caches !== "undefined"
    ? () => makeSnapshotInWorker(base, key, inputs) : null;
  if (t.packages === "background") globalThis.wfPackages = packages;
  return { pyodide, site, timings: t, makeSnapshot, packages };
}
