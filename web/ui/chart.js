// Size-vs-quality chart (Chart.js from /vendor, loaded on first use) + the same data as a table.
import { $, el, fmtBytes, fmtKl, fmtPct } from "./util.js";

let chartLib = null;

/** Chart.js from /vendor, loaded once (a failed load may be retried). */
export function loadChartJs() {
  if (chartLib) return chartLib;
  chartLib = new Promise((resolve, reject) => {
    if (window.Chart) { resolve(window.Chart); return; }
    const s = document.createElement("script");
    s.src = new URL("../vendor/chart.umd.min.js", import.meta.url).href;
    s.onload = () => (window.Chart ? resolve(window.Chart) : reject(new Error("Chart.js did not define Chart")));
    s.onerror = () => { chartLib = null; reject(new Error("vendor/chart.umd.min.js could not be loaded (rebuild the site)")); };
    document.head.append(s);
  });
  return chartLib;
}

// fp32 (the reference) has KL 0: on the log axis it is drawn at a floor below the smallest measured KL
function klFloor(opts) {
  const pos = opts.map((o) => o.kl).filter((k) => typeof k === "number" && k > 0);
  const min = pos.length ? Math.min(...pos) : 1e-6;
  return 10 ** Math.floor(Math.log10(min) - 0.5);
}
const isDecade = (v) => Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9;
// log-axis tick labels: only 1, 2 and 5 times a power of ten
function logTick(v) {
  const m = v / 10 ** Math.floor(Math.log10(v) + 1e-9);
  return [1, 2, 5].some((k) => Math.abs(m - k) < 1e-6) ? String(Number(v.toPrecision(2))) : "";
}
const COLORS = ["#2f6fdd", "#d9480f", "#2b8a3e", "#862e9c"];

/** Chart.js, or null after showing why it could not load in `note`. */
export async function loadChartJsOr(note) {
  try {
    return await loadChartJs();
  } catch (e) {
    note.textContent = String(e.message || e);
    note.className = "error";
    return null;
  }
}

export class QualityChart {
  constructor() {
    this.chart = null;
    this.info = null;          // chat.model_info result
    this.selected = {};        // module -> dtype
    this.metric = "kl";
  }

  setModel(info) { this.info = info; this.render(); }
  setSelection(selected) { this.selected = { ...selected }; this.render(); }
  setMetric(metric) { this.metric = metric; this.render(); }

  _points(module, opts) {
    const floor = klFloor(opts);
    return opts.filter((o) => (this.metric === "kl" ? o.kl !== null && o.kl !== undefined : o.top1 !== null && o.top1 !== undefined))
      .map((o) => ({ x: o.bytes / 1e6, y: this.metric === "kl" ? Math.max(o.kl, floor) : 100 * o.top1, dtype: o.dtype,
        selected: this.selected[module] === o.dtype }));
  }

  async render() {
    this._table();
    const info = this.info;
    if (!info) return;
    const note = $("quality-note");
    if (!info.has_report) {
      note.textContent = `${info.model} has no quantization_report.json: no measured quality to chart.`;
    } else {
      const floor = klFloor(Object.values(info.modules).flat());
      note.textContent = (this.metric === "kl" ? `KL on a log axis; fp32 is the reference (KL 0, drawn at ${floor}). ` : "") +
        "The filled, larger point is the current selection.";
    }
    const Chart = await loadChartJsOr(note);
    if (!Chart) return;
    const datasets = Object.entries(info.modules).map(([module, opts], i) => {
      const pts = this._points(module, opts);
      const color = COLORS[i % COLORS.length];
      return {
        label: module, data: pts,
        pointRadius: pts.map((p) => (p.selected ? 9 : 5)),
        pointHoverRadius: pts.map((p) => (p.selected ? 11 : 7)),
        pointBackgroundColor: pts.map((p) => (p.selected ? color : "#ffffff")),
        pointBorderColor: color, pointBorderWidth: pts.map((p) => (p.selected ? 3 : 2)),
      };
    });
    const xs = datasets.flatMap((d) => d.data.map((p) => p.x));
    const xmin = xs.length ? Math.min(...xs) / 1.25 : undefined;
    const xmax = xs.length ? Math.max(...xs) * 1.6 : undefined;  // room for the labels right of the points
    const yTitle = this.metric === "kl" ? "KL divergence to fp32 (log)" : "top-1 agreement with fp32 (%)";
    const config = {
      type: "scatter",
      data: { datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: {
          x: { type: "logarithmic", min: xmin, max: xmax, ticks: { callback: logTick, maxRotation: 0 }, title: { display: true, text: "download size (MB, log)" } },
          y: { type: this.metric === "kl" ? "logarithmic" : "linear",
               ticks: this.metric === "kl" ? { callback: (v) => (isDecade(v) ? Number(v).toExponential(0) : "") } : {}, title: { display: true, text: yTitle } },
        },
        plugins: {
          legend: { display: datasets.length > 1 },
          tooltip: { callbacks: { label: (c) => `${c.raw.dtype}: ${c.raw.x.toFixed(2)} MB, ` +
            (this.metric === "kl" ? `KL ${fmtKl(c.raw.y)}` : `top-1 ${c.raw.y.toFixed(1)}%`) } },
        },
      },
      plugins: [{
        id: "dtypeLabels",
        afterDatasetsDraw(chart) {
          const ctx = chart.ctx;
          ctx.save();
          ctx.font = "11px system-ui, sans-serif";
          ctx.fillStyle = "#1d2330";
          const placed = []; // label boxes drawn so far: move a label down until it overlaps none
          const overlaps = (b) => placed.some((q) => b.x < q.x + q.w && q.x < b.x + b.w && b.y < q.y + q.h && q.y < b.y + b.h);
          chart.data.datasets.forEach((ds, i) => {
            chart.getDatasetMeta(i).data.forEach((pt, j) => {
              const p = ds.data[j];
              ctx.font = p.selected ? "bold 12px system-ui, sans-serif" : "11px system-ui, sans-serif";
              const box = { x: pt.x + 7, y: pt.y - 17, w: ctx.measureText(p.dtype).width, h: 12 };
              for (let k = 0; k < 8 && overlaps(box); k++) box.y += 12;
              placed.push(box);
              ctx.fillText(p.dtype, box.x, box.y + 11);
            });
          });
          ctx.restore();
        },
      }],
    };
    if (this.chart) this.chart.destroy();
    this.chart = new Chart($("quality-chart"), config);
  }

  _table() {
    const t = $("quality-table");
    if (!this.info) { t.replaceChildren(); return; }
    const head = el("tr", {}, ...["module", "dtype", "size", "KL", "top-1", "perplexity", "greedy agreement"]
      .map((h) => el("th", { scope: "col" }, h)));
    const rows = [];
    for (const [module, opts] of Object.entries(this.info.modules)) {
      for (const o of opts) {
        rows.push(el("tr", { className: this.selected[module] === o.dtype ? "selected" : "" },
          el("td", {}, module), el("th", { scope: "row" }, o.dtype), el("td", { className: "num" }, fmtBytes(o.bytes)),
          el("td", { className: "num" }, fmtKl(o.kl)), el("td", { className: "num" }, fmtPct(o.top1)),
          el("td", { className: "num" }, o.perplexity === null || o.perplexity === undefined ? "–" : o.perplexity.toFixed(2)),
          el("td", { className: "num" }, fmtPct(o.greedy_agreement))));
      }
    }
    t.replaceChildren(el("caption", {}, `${this.info.model}: each dtype against fp32`), el("thead", {}, head),
      el("tbody", {}, ...rows));
  }
}
