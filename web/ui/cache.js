// Cache manager: cached models and variants with sizes, delete a variant or a model, storage, persist.
import { $, el, fmtBytes } from "./util.js";

export class CacheView {
  /** `call(fn, args, kwargs)` runs a `webformers.page.browser` function; `onError(msg)` shows an error. */
  constructor(call, onError) {
    this.call = call;
    this.onError = onError;
    $("cache-refresh").addEventListener("click", () => this.refresh());
    $("persist-button").addEventListener("click", () => this.persist());
  }

  async refresh() {
    try {
      this.render(await this.call("cache_list"));
    } catch (e) {
      this.onError(`could not list the cache: ${e.message || e}`);
    }
  }

  async remove(model, dtype, module) {
    try {
      const res = await this.call("cache_delete", [model], dtype ? { dtype, module } : {});
      this.render(res);
      $("storage-text").append(` Freed ${fmtBytes(res.freed)}.`);
    } catch (e) {
      this.onError(`could not delete ${model}${dtype ? ` ${dtype}` : ""} from the cache: ${e.message || e}`);
    }
  }

  async persist() {
    // navigator.storage.persist() exists on the page only (not in the worker).
    if (!navigator.storage || !navigator.storage.persist) {
      this.onError("this browser cannot make storage persistent (navigator.storage.persist is missing)");
      return;
    }
    const ok = await navigator.storage.persist();
    $("persist-button").dataset.result = ok ? "granted" : "denied";
    await this.refresh();
    if (!ok) $("storage-text").append(" The browser declined to persist storage (it may still evict it under pressure).");
  }

  render(data) {
    const s = data.storage || {};
    const pct = s.quota ? ` (${(100 * s.usage / s.quota).toFixed(2)}%)` : "";
    $("storage-text").textContent = `Storage used ${fmtBytes(s.usage)} of ${fmtBytes(s.quota)}${pct}; ` +
      `model cache ${fmtBytes(s.cache_bytes)}; persistent: ${s.persisted ? "yes" : "no"}.`;
    $("persist-button").disabled = !!s.persisted;
    const table = $("cache-table");
    const models = data.models || [];
    if (!models.length) {
      table.replaceChildren(el("caption", {}, "Nothing cached yet: loaded models are kept here."));
      return;
    }
    const head = el("tr", {}, ...["model / variant", "files", "size", ""].map((h) => el("th", { scope: "col" }, h)));
    const body = [];
    for (const m of models) {
      body.push(el("tr", { className: "model-row", dataset: { model: m.model } },
        el("th", { scope: "row" }, m.model, m.revision && m.revision !== "main" ? ` @${m.revision}` : ""),
        el("td", { className: "num" }, m.files), el("td", { className: "num" }, fmtBytes(m.bytes)),
        el("td", {}, el("button", { type: "button", className: "danger", onclick: () => this.remove(m.model),
          "aria-label": `Delete all cached files of ${m.model}` }, "Delete model"))));
      for (const v of m.variants) {
        body.push(el("tr", { className: "variant-row", dataset: { model: m.model, dtype: v.dtype, module: v.module } },
          el("td", { className: "indent" }, `${v.module} · ${v.dtype}`),
          el("td", { className: "num" }, v.files), el("td", { className: "num" }, fmtBytes(v.bytes)),
          el("td", {}, el("button", { type: "button", onclick: () => this.remove(m.model, v.dtype, v.module),
            "aria-label": `Delete ${m.model} ${v.module} ${v.dtype}` }, "Delete"))));
      }
      if (m.other_bytes) {
        body.push(el("tr", { className: "other-row" }, el("td", { className: "indent" }, "config, tokenizer, manifest"),
          el("td"), el("td", { className: "num" }, fmtBytes(m.other_bytes)), el("td")));
      }
    }
    table.replaceChildren(el("caption", {}, "Cached in this browser (Cache API)"), el("thead", {}, head),
      el("tbody", {}, ...body));
  }
}
