// Small DOM / formatting helpers and the Python call helper shared by the page's modules.

export const $ = (id) => document.getElementById(id);

/** Create an element: el("td", {className: "num"}, "text", childNode, ...). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export function fmtBytes(n) {
  if (n === null || n === undefined || !isFinite(n)) return "?";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function fmtKl(kl) {
  if (kl === null || kl === undefined) return "–";
  if (kl === 0) return "0";
  return kl < 0.001 ? kl.toExponential(1) : kl.toPrecision(2);
}

export const fmtPct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);

/** The last line of a Python traceback (the exception), for a one-line error. */
export function pyErrorLine(message) {
  const lines = String(message).trim().split("\n").filter((l) => l.trim());
  return lines.length ? lines[lines.length - 1] : String(message);
}

const PAGE_MODULES = ["chat", "speech", "browser"];

/**
 * Call `webformers.page.<module>.<fn>(*args, **kwargs)` in the worker (awaited when it is a coroutine).
 * `module`: "chat", "speech" or "browser". Arguments and the result travel as JSON (so None -> null and
 * nested dicts stay plain objects).
 */
export async function callPage(client, module, fn, args = [], kwargs = {}) {
  if (!PAGE_MODULES.includes(module)) {
    throw new Error(`unknown page module ${JSON.stringify(module)}; valid: ${PAGE_MODULES.join(", ")}`);
  }
  if (!/^[a-z_][a-z0-9_]*$/.test(fn)) throw new Error(`bad page function name ${JSON.stringify(fn)}`);
  const payload = JSON.stringify(JSON.stringify({ args, kwargs }));
  // webformers.page.chat imports without numpy and its loaders wait for it: its calls may start while
  // numpy still loads after a snapshot restore; the others wait for numpy
  const out = await client.runPython(`
import json, inspect
from webformers.page import ${module} as _page
_p = json.loads(${payload})
_r = _page.${fn}(*_p["args"], **_p["kwargs"])
if inspect.isawaitable(_r):
    _r = await _r
json.dumps(_r)
`, { beforePackages: module === "chat" });
  return out === undefined || out === null ? null : JSON.parse(out);
}
