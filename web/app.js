// The demo page: pickers, load progress, chat, quality chart and cache manager. Python runs in the
// worker (web/worker.js); this thread only updates the DOM, so it stays responsive.
import { WebformersClient } from "./wf-client.js";
import { $, el, callPage, fmtBytes, fmtKl, fmtPct, pyErrorLine } from "./ui/util.js";
import { ProgressView } from "./ui/progress.js";
import { ChatView } from "./ui/chat.js";
import { QualityChart } from "./ui/chart.js";
import { CacheView } from "./ui/cache.js";
import { AsrView } from "./ui/asr.js";

// Warm start: the sessions of the model this browser loaded last are created while Pyodide boots.
const LAST_MODEL_KEY = "webformers:last-model";
const lastModel = (() => { try { return localStorage.getItem(LAST_MODEL_KEY); } catch (e) { return null; } })();
// ?snapshot=0: a fresh Python boot, no memory snapshot
const client = new WebformersClient({ ...(lastModel ? { warmStart: lastModel } : {}),
                                      snapshot: new URLSearchParams(location.search).get("snapshot") !== "0" });
window.wf = client;  // the test harness and the console drive Python through this

const chatCall = (fn, args = [], kwargs = {}) => callPage(client, "chat", fn, args, kwargs);
const browserCall = (fn, args = [], kwargs = {}) => callPage(client, "browser", fn, args, kwargs);
const progress = new ProgressView();
const chat = new ChatView();
const chart = new QualityChart();
const cache = new CacheView(browserCall, (m) => showError(m));
const asr = new AsrView(client, () => state.env);
window.wfAsr = asr;  // tests and the console

const state = {
  env: null,          // browser.environment()
  models: [],         // /models/index.json
  info: null,         // chat.model_info() of the selected model
  loaded: null,       // chat.load() result (or the "loaded" event)
  busy: null,         // "load" | "chat" | null
  warnings: new Set(),
};
window.wfApp = state;

// ------------------------------------------------------------------------------------ messages

export function showError(message, detail) {
  const p = el("p", { className: "error" }, message);
  if (detail && detail !== message) {
    p.append(el("details", {}, el("summary", {}, "details"), el("pre", {}, detail)));
  }
  $("errors").append(p);
  p.scrollIntoView({ block: "nearest" });
}

function showWarning(message) {
  if (state.warnings.has(message)) return;
  state.warnings.add(message);
  if (!$("warnings").firstChild) $("warnings").append(el("h2", { className: "visually-hidden" }, "Warnings"));
  $("warnings").append(el("p", { className: "warning" }, "⚠ ", message));
}

function clearMessages() {
  state.warnings.clear();
  $("warnings").replaceChildren();
  $("errors").replaceChildren();
}

function reportPyError(what, e) {
  const msg = String(e && e.message || e);
  showError(`${what}: ${pyErrorLine(msg)}`, msg);
}

// ------------------------------------------------------------------------------------ boot

client.addEventListener("boot", async (ev) => {
  const t = ev.detail;
  $("boot-status").dataset.state = "ready";
  const how = t.path === "snapshot" ? "Python restored from its snapshot" : "fresh Python boot";
  $("boot-status").textContent = `Ready: Pyodide ${t.pyodide_version}, onnxruntime-web ${t.ort_version}, ` +
    `booted in ${(t.total / 1000).toFixed(1)} s (${how}).`;
  showBootTimings(t);
  for (const w of t.warnings || []) showWarning(w);  // e.g. a stale snapshot, evicted
  $("boot-details").hidden = false;
  try {
    state.env = await browserCall("environment");
  } catch (e) {
    reportPyError("could not query the device", e);
    return;
  }
  showAdapter(state.env.adapter);
  $("cache-refresh").disabled = false;
  cache.refresh();
  asr.onBoot();
  await modelsListed;
  await refreshModelInfo();
});

// the steps, then the details of the Python boot that ran (see webformers/pyboot.js); after a snapshot
// restore numpy loads in the background ("numpy: loading…" until its python-packages event)
function showBootTimings(t) {
  const rows = ["pyodide", "numpy", "wheel", "ort", "total", "snapshot_check", "numpy_load", "numpy_import",
                "snapshot_failed"].filter((k) => t[k] !== undefined || (k === "numpy" && t.packages === "background"));
  $("boot-timings").querySelector("tbody").replaceChildren(
    ...rows.map((k) => el("tr", {}, el("th", { scope: "row" }, k),
                          el("td", { className: "num" }, t[k] === undefined ? "loading…" : t[k]))),
    el("tr", {}, el("th", { scope: "row" }, "path"), el("td", {}, t.path || "fresh")));
}

client.addEventListener("wf-event", (ev) => {
  if (!ev.detail || ev.detail.status !== "python-packages" || !client.timings) return;
  const { numpy, numpy_load, numpy_import } = ev.detail;
  showBootTimings(Object.assign(client.timings, { numpy, numpy_load, numpy_import }));
});

// after a fresh boot: the snapshot the next visit restores
client.addEventListener("wf-event", (ev) => {
  if (!ev.detail || ev.detail.status !== "python-snapshot") return;
  $("boot-details").append(el("p", { className: "muted" },
    `Python snapshot saved for the next visit (${(ev.detail.bytes / 1e6).toFixed(1)} MB).`));
});

client.addEventListener("boot-error", (ev) => {
  $("boot-status").dataset.state = "error";
  $("boot-status").textContent = `Boot failed: ${ev.detail}`;
  showError(ev.detail);
});

function showAdapter(a) {
  const gpu = a.webgpu
    ? `WebGPU adapter ${a.vendor ? `“${a.vendor}”` : "present"}${a.isFallbackAdapter ? " (software fallback adapter)" : ""}`
    : `no WebGPU adapter${a.error ? ` (${a.error})` : ""}`;
  const f16 = a.webgpu ? `shader-f16: ${(a.features || []).includes("shader-f16") ? "yes" : "no"}` : null;
  const coi = `cross-origin isolated: ${a.crossOriginIsolated ? "yes" : "no"}`;
  const threads = `WASM threads: ${a.wasmThreads}`;
  $("adapter-info").textContent = [gpu, f16, coi, threads].filter(Boolean).join(" · ");
  const gpuOpt = $("device-select").querySelector('option[value="webgpu"]');
  gpuOpt.textContent = a.webgpu
    ? `WebGPU${a.isFallbackAdapter ? " (software)" : ""}${(a.features || []).includes("shader-f16") ? ", shader-f16" : ", no shader-f16"}`
    : "WebGPU (no adapter: falls back to WASM)";
  $("device-select").querySelector('option[value="auto"]').textContent =
    `auto (${a.webgpu ? "WebGPU" : "WASM"})`;
  $("device-note").textContent = a.webgpu ? `WebGPU ${f16}.` : "No WebGPU adapter: WebGPU loads fall back to WASM.";
  if (a.webgpu && a.isFallbackAdapter) {
    // a software adapter (e.g. SwiftShader) is far slower than WASM: start on WASM, WebGPU stays selectable
    $("device-select").value = "wasm";
    $("device-note").textContent += " The adapter is a software fallback (much slower than WASM), so WASM is preselected.";
  }
}

// ------------------------------------------------------------------------------------ pickers

const modelsListed = (async () => {
  try {
    const resp = await fetch("models/index.json", { cache: "no-cache" });
    if (!resp.ok) throw new Error(`models/index.json answered HTTP ${resp.status}: build the models with python3 build.py build`);
    state.models = ((await resp.json()).models || []).filter((m) => (m.task || "text-generation") === "text-generation");
  } catch (e) {
    showError(`could not list the models: ${e.message || e}`);
    return;
  }
  const sel = $("model-select");
  if (!state.models.length) {
    sel.replaceChildren(el("option", {}, "no models built"));
    showError("no models in models/index.json: build them with python3 build.py build");
    return;
  }
  sel.replaceChildren(...state.models.map((m) => {
    const total = Object.values(m.bytes || {}).flatMap((d) => Object.values(d));
    const range = total.length ? ` (${fmtBytes(Math.min(...total))}–${fmtBytes(Math.max(...total))})` : "";
    return el("option", { value: m.id }, m.id + range);
  }));
  const smol = state.models.find((m) => m.id.includes("SmolLM2"));
  if (smol) sel.value = smol.id;
})();

function effectiveDevice() {
  const d = $("device-select").value;
  if (d !== "auto") return d === "webgpu" && !(state.env && state.env.adapter.webgpu) ? "wasm" : d;
  return state.env && state.env.adapter.webgpu ? "webgpu" : "wasm";
}

function optionLabel(o, device) {
  const q = o.kl === null || o.kl === undefined ? "not measured" : `KL ${fmtKl(o.kl)} · top-1 ${fmtPct(o.top1)}`;
  const sup = o.support[device];
  return `${o.dtype} — ${fmtBytes(o.bytes)} · ${q}` + (sup && !sup.native ? ` · ⚠ not native on ${device}: ${sup.reason}` : "");
}

async function refreshModelInfo() {
  const model = $("model-select").value;
  if (!state.env || !model) return;
  setControls();
  try {
    state.info = await chatCall("model_info", [model, "auto"]);
  } catch (e) {
    reportPyError(`could not read ${model}'s manifest`, e);
    return;
  }
  renderDtypeSelects();
  chart.setModel(state.info);
  updateChartSelection();
  setControls();
}

function renderDtypeSelects() {
  const info = state.info;
  if (!info) return;
  const device = effectiveDevice();
  const box = $("dtype-selects");
  const previous = Object.fromEntries([...box.querySelectorAll("select")].map((s) => [s.dataset.module, s.value]));
  box.replaceChildren(...Object.entries(info.modules).map(([module, opts]) => {
    const id = `dtype-${module}`;
    const sel = el("select", { id, dataset: { module } },
      el("option", { value: "auto" }, `auto — best measured quality that runs natively on ${device} (within the budget)`),
      ...opts.map((o) => el("option", { value: o.dtype, dataset: { native: String(o.support[device].native) } },
        optionLabel(o, device))));
    const want = previous[module] || (opts.some((o) => o.dtype === "q4") ? "q4" : "auto");
    sel.value = opts.some((o) => o.dtype === want) || want === "auto" ? want : "auto";
    sel.addEventListener("change", () => { updateBudget(); updateChartSelection(); });
    return el("div", { className: "field" }, el("label", { htmlFor: id }, module), sel);
  }));
  updateBudget();
}

function selectedDtypes() {
  return Object.fromEntries([...$("dtype-selects").querySelectorAll("select")].map((s) => [s.dataset.module, s.value]));
}

function updateBudget() {
  const anyAuto = Object.values(selectedDtypes()).includes("auto");
  $("budget-input").disabled = !anyAuto;
  $("budget-field").classList.toggle("disabled", !anyAuto);
}

function updateChartSelection() {
  const sel = selectedDtypes();
  const loaded = state.loaded && state.info && state.loaded.model === state.info.model ? state.loaded.dtypes : {};
  const highlight = {};
  for (const [m, d] of Object.entries(sel)) highlight[m] = d === "auto" ? loaded[m] : d;
  chart.setSelection(highlight);
}

function setControls() {
  const booted = !!state.env;
  const busy = state.busy !== null;
  $("model-select").disabled = !booted || busy || !state.models.length;
  $("device-select").disabled = !booted || busy;
  for (const s of $("dtype-selects").querySelectorAll("select")) s.disabled = busy;
  $("load-button").disabled = !booted || busy || !state.info;
  const canChat = !!state.loaded && !busy;
  $("chat-input").disabled = !state.loaded || state.busy === "load";
  $("chat-input").placeholder = state.loaded ? `Message ${state.loaded.model}` : "Load a model first";
  $("send-button").disabled = !canChat;
  $("stop-button").disabled = state.busy !== "chat";
}

$("model-select").addEventListener("change", () => refreshModelInfo());
$("device-select").addEventListener("change", () => renderDtypeSelects());
$("metric-select").addEventListener("change", (e) => chart.setMetric(e.target.value));

// ------------------------------------------------------------------------------------ loading

$("load-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (state.busy) return;
  const model = $("model-select").value;
  const device = $("device-select").value;
  const dtypes = selectedDtypes();
  const mods = Object.keys(dtypes);
  const dtype = mods.length === 1 ? dtypes[mods[0]] : dtypes;
  let maxBytes = null;
  const budget = $("budget-input").value.trim();
  if (!$("budget-input").disabled && budget !== "") {
    const mb = Number(budget);
    if (!(mb > 0)) {
      showError(`memory budget: "${budget}" is not a positive number of MB`);
      $("budget-input").focus();
      return;
    }
    maxBytes = Math.floor(mb * 1e6);
  }
  clearMessages();
  state.busy = "load";
  state.loaded = null;
  setControls();
  progress.start(model);
  try {
    const info = await chatCall("load", [model, dtype, device, maxBytes]);
    onLoaded(info);
    try { localStorage.setItem(LAST_MODEL_KEY, model); } catch (e) { /* storage disabled: no warm start */ }
    chat.clear();
  } catch (e) {
    progress.fail(pyErrorLine(e.message || e));
    reportPyError(`loading ${model} failed`, e);
  } finally {
    state.busy = null;
    setControls();
    cache.refresh();
  }
  if (state.loaded) $("chat-input").focus();
});

function onLoaded(info) {
  state.loaded = info;
  progress.finish(info);
  updateChartSelection();
  setControls();
}

// ------------------------------------------------------------------------------------ chat

async function send() {
  if (state.busy || !state.loaded) return;
  const text = $("chat-input").value.trim();
  if (!text) return;
  let settings;
  try {
    settings = chat.settings();
  } catch (e) {
    showError(String(e.message || e));
    return;
  }
  $("chat-input").value = "";
  chat.addUser(text);
  chat.beginReply();
  state.busy = "chat";
  setControls();
  try {
    const res = await chatCall("run", [chat.messages, settings]);
    chat.endReply(res);
  } catch (e) {
    chat.failReply(pyErrorLine(e.message || e));
    reportPyError("generation failed", e);
  } finally {
    state.busy = null;
    setControls();
    $("chat-input").focus();
  }
}

$("chat-form").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
$("chat-input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    send();
  }
});
$("stop-button").addEventListener("click", () => {
  client.cancel();
  $("stop-button").disabled = true;
  $("stop-button").dataset.clickedAt = String(performance.now());
});
$("clear-button").addEventListener("click", async () => {
  if (state.busy === "chat") client.cancel();
  chat.clear();
  if (state.loaded && state.busy !== "chat") {
    try { await chatCall("reset_conversation"); } catch (e) { reportPyError("could not clear the conversation", e); }
  }
  $("chat-input").focus();
});

// ------------------------------------------------------------------------------------ events

client.addEventListener("wf-event", (ev) => {
  const e = ev.detail || {};
  switch (e.status) {
    case "initiate": case "download": case "progress": case "done":
      if (asr.owns(e)) asr.onEvent(e);  // the speech model's download has its own bars
      else progress.onEvent(e);
      break;
    case "warning":
      showWarning(e.file ? `${e.message}` : e.message);
      break;
    case "token":
      if (state.busy === "chat") chat.onToken(e.text);
      break;
    case "loaded":
      if (state.busy !== "load") onLoaded(e);  // a load started outside the form (console, tests)
      break;
    case "error":
      if (!state.busy) showError(e.message);
      break;
    default:
      break;
  }
});
