// Download progress: one bar per file plus one overall bar, from the store's progress events.
import { $, el, fmtBytes } from "./util.js";

const CHAT_IDS = { bars: "file-bars", panel: "load-progress", status: "load-status", overall: "overall-bar",
                   overallText: "overall-text", barPrefix: "bar-" };

export class ProgressView {
  /** `ids` names the panel's elements (the chat's by default; the speech panel has its own). */
  constructor(ids = CHAT_IDS) {
    this.ids = ids;
    this.files = new Map(); // file -> {loaded, total, cached, done, row}
    this.finished = true;
    this.model = null;
  }

  /** Forget the previous load and show an empty panel for `model`. */
  start(model) {
    this.files.clear();
    this.finished = false;
    this.model = model;
    $(this.ids.bars).replaceChildren();
    $(this.ids.panel).hidden = false;
    $(this.ids.status).textContent = `Loading ${model}…`;
    $(this.ids.status).className = "";
    this._overall();
  }

  /** Handle a store event ({status, name, file, loaded, total, cached}). */
  onEvent(ev) {
    if (!ev.file || !["initiate", "download", "progress", "done"].includes(ev.status)) return;
    if (this.finished) this.start(ev.name || "model"); // a load started from elsewhere (console, tests)
    let f = this.files.get(ev.file);
    if (!f) {
      const bar = el("progress", { max: 1, value: 0, id: `${this.ids.barPrefix}${this.files.size}` });
      const label = el("label", { htmlFor: bar.id, className: "file-name" }, ev.file);
      const text = el("span", { className: "num" });
      const row = el("li", { className: "bar-row", dataset: { file: ev.file } }, label, bar, text);
      $(this.ids.bars).append(row);
      f = { loaded: 0, total: ev.total || 0, cached: false, done: false, row, bar, text };
      this.files.set(ev.file, f);
    }
    if (typeof ev.total === "number" && ev.total > 0) f.total = ev.total;
    if (typeof ev.loaded === "number") f.loaded = ev.loaded;
    if (ev.cached) f.cached = true;
    if (ev.status === "done") { f.done = true; f.loaded = f.total; }
    f.bar.max = Math.max(f.total, 1);
    f.bar.value = f.total ? f.loaded : (f.done ? 1 : 0);
    f.text.textContent = `${fmtBytes(f.loaded)} / ${fmtBytes(f.total)}` + (f.cached ? " · cached" : "");
    f.row.dataset.state = f.done ? (f.cached ? "cached" : "done") : "loading";
    this._overall();
  }

  _overall() {
    let loaded = 0, total = 0, cached = 0;
    for (const f of this.files.values()) {
      loaded += f.loaded; total += f.total;
      if (f.cached) cached++;
    }
    const bar = $(this.ids.overall);
    bar.max = Math.max(total, 1);
    bar.value = total ? loaded : 0;
    const n = this.files.size;
    $(this.ids.overallText).textContent = `${fmtBytes(loaded)} / ${fmtBytes(total)}` +
      (n ? ` · ${n} file${n > 1 ? "s" : ""}${cached ? `, ${cached} cached` : ""}` : "");
  }

  /** The load finished: show the dtypes, execution forms other than native, and the timing (info from
   *  chat.load); the status's tooltip says why each module runs in its form. */
  finish(info) {
    this.finished = true;
    const forms = info.forms || {};
    const dt = Object.entries(info.dtypes || {}).map(([m, d]) =>
      `${m}: ${d}` + (forms[m] && forms[m].form !== "native" ? `, ${forms[m].form} form` : "")).join(", ");
    $(this.ids.status).textContent =
      `Loaded ${info.model} (${dt}) on ${info.device} in ${(info.load_ms / 1000).toFixed(2)} s.`;
    $(this.ids.status).title = Object.entries(forms).map(([m, f]) => `${m}: ${f.reason}`).join("\n");
    $(this.ids.status).className = "ok";
  }

  fail(message) {
    this.finished = true;
    $(this.ids.status).textContent = `Loading failed: ${message}`;
    $(this.ids.status).className = "error";
  }
}
