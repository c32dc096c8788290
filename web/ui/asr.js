// The speech-recognition panel: model + per-module dtype pickers (size and measured WER of each pair),
// load with progress, audio from a file or the microphone (decoded by Web Audio into mono Float32
// samples), the transcript with timings, and the WER-vs-bytes chart of every encoder × decoder pair.
// Python side: webformers.page.speech in the worker.
import { loadChartJsOr } from "./chart.js";
import { ProgressView } from "./progress.js";
import { $, el, callPage, fmtBytes, pyErrorLine } from "./util.js";

export const ASR_TASK = "automatic-speech-recognition";
const ENCODER = "encoder_model";
const DECODER = "decoder_model_merged";
const MODULES = [ENCODER, DECODER];
const AUDIO_KINDS = "WAV, MP3, OGG/Opus, FLAC, WebM or M4A/AAC";

/** Transcribe mono Float32 `samples` at `sampleRate` Hz in the worker (handed over as a blob URL). */
async function transcribeSamples(client, samples, sampleRate) {
  const url = URL.createObjectURL(new Blob([samples.buffer]));
  try {
    const out = await client.runPython(`
import json, js
from webformers.page import speech as _page
_resp = await js.fetch(${JSON.stringify(url)})
_samples = js.Float32Array.new(await _resp.arrayBuffer())
_r = await _page.run(_samples, sampling_rate=${Math.round(sampleRate)})
del _samples, _resp
json.dumps(_r)
`);
    return JSON.parse(out);
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** The sample rate in a RIFF/WAVE header (null for anything else), so WAV files decode without resampling. */
function wavSampleRate(buf) {
  if (buf.byteLength < 28) return null;
  const dv = new DataView(buf);
  const tag = (p) => String.fromCharCode(dv.getUint8(p), dv.getUint8(p + 1), dv.getUint8(p + 2), dv.getUint8(p + 3));
  if (!["RIFF", "RF64"].includes(tag(0)) || tag(8) !== "WAVE") return null;
  let p = 12;
  while (p + 8 <= dv.byteLength) {
    const size = dv.getUint32(p + 4, true);
    if (tag(p) === "fmt " && p + 16 <= dv.byteLength) return dv.getUint32(p + 12, true) || null;
    p += 8 + size + (size & 1);
  }
  return null;
}

/**
 * Decode any audio the browser can play into mono float samples: {samples, sampleRate, seconds, channels}.
 * WAV keeps its own rate (Python resamples to 16 kHz exactly as on CPython); other formats are decoded
 * at 16 kHz, Whisper's rate.
 */
export async function decodeAudio(arrayBuffer, name) {
  if (!arrayBuffer.byteLength) throw new Error(`“${name}” is empty (0 bytes): choose an audio file (${AUDIO_KINDS})`);
  if (typeof OfflineAudioContext === "undefined") throw new Error("this browser has no Web Audio (OfflineAudioContext) to decode audio");
  const wavRate = wavSampleRate(arrayBuffer);
  const rate = wavRate && wavRate >= 3000 && wavRate <= 384000 ? wavRate : 16000;
  const ctx = new OfflineAudioContext(1, 1, rate);
  let audio;
  try {
    audio = await ctx.decodeAudioData(arrayBuffer.slice(0));
  } catch (e) {
    throw new Error(`“${name}” is not audio the browser can decode (${e && e.name ? `${e.name}: ` : ""}` +
      `${e && e.message || e}); choose an audio file (${AUDIO_KINDS})`);
  }
  const n = audio.length, ch = audio.numberOfChannels;
  if (!n) throw new Error(`“${name}” decodes to 0 audio samples: choose a file with sound in it`);
  const samples = new Float32Array(n);
  for (let c = 0; c < ch; c++) {
    const data = audio.getChannelData(c);
    for (let i = 0; i < n; i++) samples[i] += data[i] / ch;
  }
  return { samples, sampleRate: audio.sampleRate, seconds: audio.duration, channels: ch };
}


const fmtWer = (w) => (w === null || w === undefined ? "not measured" : `${(100 * w).toFixed(1)}%`);

export class AsrView {
  /** `client`: the WebformersClient; `getEnv()`: browser.environment() once booted (adapter info). */
  constructor(client, getEnv) {
    this.client = client;
    this.getEnv = getEnv;
    this.models = [];
    this.grid = null;          // speech.model_info() of the selected model: its WER grid
    this.loaded = null;        // speech.load() result
    this.busy = null;          // "load" | "transcribe" | "record" | null
    this.booted = false;
    this.chart = null;
    this.progress = new ProgressView({ bars: "asr-file-bars", panel: "asr-progress", status: "asr-load-status",
                                       overall: "asr-overall-bar", overallText: "asr-overall-text",
                                       barPrefix: "asr-bar-" });
    this.loadingModel = null;
    this.recorder = null;
    this.lastResult = null;
    this._gridToken = 0;

    $("asr-model-select").addEventListener("change", () => this.refreshGrid());
    for (const m of MODULES) {
      $(`asr-dtype-${m}`).addEventListener("change", () => { this.relabel(); this.renderChart(); });
    }
    $("asr-form").addEventListener("submit", (ev) => { ev.preventDefault(); this.load(); });
    $("asr-file-input").addEventListener("change", (ev) => {
      const f = ev.target.files && ev.target.files[0];
      if (f) this.fromFile(f);
    });
    $("asr-record-button").addEventListener("click", () => this.toggleRecord());
    this.listed = this.listModels();
    this.setControls();
  }

  // ------------------------------------------------------------------------------ messages
  error(message) {
    const box = $("asr-error");
    box.replaceChildren(el("p", { className: "error" }, message));
  }

  clearError() { $("asr-error").replaceChildren(); }

  status(text, cls = "") {
    $("asr-status").textContent = text;
    $("asr-status").className = cls;
  }

  // ------------------------------------------------------------------------------ models + grid
  async listModels() {
    try {
      const resp = await fetch("models/index.json", { cache: "no-cache" });
      if (!resp.ok) throw new Error(`models/index.json answered HTTP ${resp.status}: build the models with python3 build.py build`);
      this.models = ((await resp.json()).models || []).filter((m) => m.task === ASR_TASK);
    } catch (e) {
      this.error(`could not list the speech-recognition models: ${e.message || e}`);
      return;
    }
    const sel = $("asr-model-select");
    if (!this.models.length) {
      sel.replaceChildren(el("option", {}, "no speech-recognition models built"));
      this.error("models/index.json lists no automatic-speech-recognition model: build one with python3 build.py build");
      return;
    }
    sel.replaceChildren(...this.models.map((m) => el("option", { value: m.id }, m.id)));
    this.setControls();
  }

  /** The worker is up: choose a device default and read the selected model's WER grid. */
  async onBoot() {
    this.booted = true;
    const env = this.getEnv();
    const a = env && env.adapter;
    const dev = $("asr-device-select");
    if (!a || !a.webgpu || a.isFallbackAdapter) {
      dev.value = "wasm";
      $("asr-device-note").textContent = !a || !a.webgpu
        ? "No WebGPU adapter: WASM is used."
        : "The WebGPU adapter is a software fallback (much slower than WASM), so WASM is preselected.";
    }
    await this.listed;
    this.setControls();
    await this.refreshGrid();
  }

  modelEntry(id) { return this.models.find((m) => m.id === id) || null; }

  async refreshGrid() {
    const model = $("asr-model-select").value;
    if (!this.booted || !this.modelEntry(model)) return;
    if (this.grid && this.grid.model === model) return;  // re-selecting the same model keeps its grid
    const token = ++this._gridToken;
    this.grid = null;
    this.renderSelects();
    try {
      const grid = await callPage(this.client, "speech", "model_info", [model]);
      if (token !== this._gridToken) return;
      this.grid = grid;
    } catch (e) {
      if (token !== this._gridToken) return;
      $("asr-chart-note").textContent = `${model}: no measured WER (${pyErrorLine(e.message || e)}).`;
    }
    this.renderSelects();
    this.renderChart();
  }

  /** Sizes per module/dtype: the report's, else the models index's. */
  sizes(module) {
    if (this.grid && this.grid.module_bytes && this.grid.module_bytes[module]) return this.grid.module_bytes[module];
    const m = this.modelEntry($("asr-model-select").value);
    return (m && m.bytes && m.bytes[module]) || {};
  }

  cell(enc, dec) {
    if (!this.grid) return null;
    return this.grid.grid.find((g) => g[ENCODER] === enc && g[DECODER] === dec) || null;
  }

  selected() {
    return Object.fromEntries(MODULES.map((m) => [m, $(`asr-dtype-${m}`).value]));
  }

  renderSelects() {
    const m = this.modelEntry($("asr-model-select").value);
    const rec = this.grid && this.grid.recommended;
    for (const module of MODULES) {
      const sel = $(`asr-dtype-${module}`);
      const prev = sel.value;
      const dtypes = (m && m.modules && m.modules[module]) || [];
      sel.replaceChildren(...dtypes.map((d) => el("option", { value: d }, d)));
      const want = dtypes.includes(prev) ? prev : rec && dtypes.includes(rec[module]) ? rec[module]
        : dtypes.includes("q8") ? "q8" : dtypes[0];
      if (want) sel.value = want;
    }
    this.relabel();
    this.setControls();
  }

  /** Each option: its size and the measured WER of the pair it makes with the other module's choice. */
  relabel() {
    const sel = this.selected();
    const rec = this.grid && this.grid.recommended;
    for (const module of MODULES) {
      const other = module === ENCODER ? DECODER : ENCODER;
      const sizes = this.sizes(module);
      for (const opt of $(`asr-dtype-${module}`).options) {
        const pair = module === ENCODER ? this.cell(opt.value, sel[DECODER]) : this.cell(sel[ENCODER], opt.value);
        const wer = this.grid ? ` · WER ${fmtWer(pair && pair.wer)} with ${other === DECODER ? "decoder" : "encoder"} ${sel[other]}` : "";
        const star = rec && rec[module] === opt.value ? " (recommended)" : "";
        opt.textContent = `${opt.value} — ${fmtBytes(sizes[opt.value])}${wer}${star}`;
      }
    }
    const c = this.cell(sel[ENCODER], sel[DECODER]);
    const total = (this.sizes(ENCODER)[sel[ENCODER]] || 0) + (this.sizes(DECODER)[sel[DECODER]] || 0);
    let note = `Selected pair: encoder ${sel[ENCODER]} + decoder ${sel[DECODER]} — ${fmtBytes(total)} to download`;
    if (this.grid) {
      note += `, measured WER ${fmtWer(c && c.wer)}`;
      if (rec) note += ` (recommended: ${rec[ENCODER]} + ${rec[DECODER]}, ${fmtBytes(rec.bytes)}, WER ${fmtWer(rec.wer)})`;
    }
    $("asr-pair-note").textContent = note + ".";
  }

  // ------------------------------------------------------------------------------ chart
  async renderChart() {
    const note = $("asr-chart-note");
    const grid = this.grid;
    if (!grid) return;
    const sel = this.selected();
    const rec = grid.recommended || {};
    const pt = (g) => ({ x: g.bytes / 1e6, y: 100 * g.wer, enc: g[ENCODER], dec: g[DECODER] });
    const measured = grid.grid.filter((g) => typeof g.wer === "number" && typeof g.bytes === "number");
    const isSel = (g) => g[ENCODER] === sel[ENCODER] && g[DECODER] === sel[DECODER];
    const isRec = (g) => g[ENCODER] === rec[ENCODER] && g[DECODER] === rec[DECODER];
    const datasets = [
      { label: "encoder × decoder pairs", data: measured.filter((g) => !isSel(g) && !isRec(g)).map(pt),
        pointRadius: 4, pointBackgroundColor: "#ffffff", pointBorderColor: "#7b8496", pointBorderWidth: 1.5 },
      { label: "recommended", data: measured.filter(isRec).map(pt), pointStyle: "star", pointRadius: 11,
        pointBorderColor: "#d9480f", pointBackgroundColor: "#d9480f", pointBorderWidth: 2.5 },
      { label: "selected", data: measured.filter(isSel).map(pt), pointRadius: 8,
        pointBackgroundColor: "#2f6fdd", pointBorderColor: "#1d2330", pointBorderWidth: 2 },
    ];
    note.className = "hint";
    note.textContent = `${measured.length} encoder × decoder pairs of ${grid.model}: download size against word error ` +
      "rate on the toolchain's evaluation clips. Blue: the selected pair; orange star: the recommended one " +
      "(smallest within 2 points of fp32's WER). Click a point to select that pair.";
    const Chart = await loadChartJsOr(note);
    if (!Chart) return;
    const view = this;
    const config = {
      type: "scatter",
      data: { datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: {
          x: { type: "logarithmic", title: { display: true, text: "download size of the pair (MB, log)" },
               ticks: { maxRotation: 0, callback: (v) => {
                 const m = v / 10 ** Math.floor(Math.log10(v) + 1e-9);
                 return [1, 2, 5].some((k) => Math.abs(m - k) < 1e-6) ? String(Number(v.toPrecision(2))) : "";
               } } },
          y: { type: "linear", min: 0, title: { display: true, text: "word error rate (%)" } },
        },
        plugins: {
          legend: { display: true, labels: { usePointStyle: true } },
          tooltip: { callbacks: { label: (c) => `encoder ${c.raw.enc} + decoder ${c.raw.dec}: ` +
            `${c.raw.x.toFixed(1)} MB, WER ${c.raw.y.toFixed(1)}%` } },
        },
        onClick(_ev, elements) {
          const hit = elements && elements[0];
          if (!hit || view.busy) return;
          const p = datasets[hit.datasetIndex].data[hit.index];
          $(`asr-dtype-${ENCODER}`).value = p.enc;
          $(`asr-dtype-${DECODER}`).value = p.dec;
          view.relabel();
          view.renderChart();
        },
      },
      plugins: [{
        id: "pairLabels",
        afterDatasetsDraw(chart) {
          const ctx = chart.ctx;
          ctx.save();
          ctx.font = "bold 12px system-ui, sans-serif";
          ctx.fillStyle = "#1d2330";
          let dy = -12;
          for (const i of [2, 1]) {
            chart.getDatasetMeta(i).data.forEach((p, j) => {
              const d = chart.data.datasets[i].data[j];
              ctx.fillText(`${d.enc} + ${d.dec}`, Math.min(p.x + 10, chart.chartArea.right - 90), p.y + dy);
            });
            dy = 22;
          }
          ctx.restore();
        },
      }],
    };
    if (this.chart) this.chart.destroy();
    this.chart = new Chart($("asr-chart"), config);
  }

  // ------------------------------------------------------------------------------ loading
  setControls() {
    const busy = this.busy !== null;
    const haveModels = this.models.length > 0;
    $("asr-model-select").disabled = !this.booted || busy || !haveModels;
    $("asr-device-select").disabled = !this.booted || busy;
    for (const m of MODULES) $(`asr-dtype-${m}`).disabled = !this.booted || busy || !$(`asr-dtype-${m}`).options.length;
    $("asr-load-button").disabled = !this.booted || busy || !haveModels;
    const ready = !!this.loaded && !busy;
    $("asr-file-input").disabled = !ready;
    $("asr-record-button").disabled = !this.loaded || (busy && this.busy !== "record");
    $("asr-audio-hint").textContent = this.loaded
      ? `Loaded: ${this.loaded.model} (encoder ${this.loaded.dtypes[ENCODER]}, decoder ${this.loaded.dtypes[DECODER]}) on ${this.loaded.device}.`
      : "Load a speech model first.";
  }

  /** Is this store event about the speech model being loaded? (app.js routes it here, not to the chat bars.) */
  owns(ev) {
    return this.busy === "load" && !!ev && ev.name === this.loadingModel;
  }

  async load() {
    if (this.busy) return;
    const model = $("asr-model-select").value;
    if (!this.modelEntry(model)) {
      this.error(`choose a speech-recognition model (built: ${this.models.map((m) => m.id).join(", ") || "none"})`);
      return;
    }
    const dtype = this.selected();
    const device = $("asr-device-select").value;
    this.clearError();
    this.busy = "load";
    this.loadingModel = model;
    this.loaded = null;
    this.progress.start(model);
    this.setControls();
    const t0 = performance.now();
    try {
      const info = await callPage(this.client, "speech", "load", [model], { dtype, device });
      info.load_ms = performance.now() - t0;
      this.loaded = info;
      $("asr-load-status").textContent = `Loaded ${model} (encoder ${info.dtypes[ENCODER]}, decoder ` +
        `${info.dtypes[DECODER]}) on ${info.device} in ${(info.load_ms / 1000).toFixed(2)} s.` +
        (info.warnings && info.warnings.length ? ` Warnings: ${info.warnings.join("; ")}` : "");
      $("asr-load-status").className = "ok";
    } catch (e) {
      const line = pyErrorLine(e.message || e);
      $("asr-load-status").textContent = `Loading failed: ${line}`;
      $("asr-load-status").className = "error";
      this.error(`loading ${model} failed: ${line}`);
    } finally {
      this.busy = null;
      this.loadingModel = null;
      this.setControls();
    }
  }

  /** A store event ({status, name, file, loaded, total, cached}) of the load in progress. */
  onEvent(ev) {
    this.progress.onEvent(ev);
  }

  // ------------------------------------------------------------------------------ audio
  async fromFile(file) {
    if (this.busy) return;
    let buf;
    try {
      buf = await file.arrayBuffer();
    } catch (e) {
      this.error(`could not read “${file.name}”: ${e.message || e}`);
      return;
    }
    await this.transcribeBuffer(buf, file.name);
    $("asr-file-input").value = "";
  }

  async transcribeBuffer(buf, name) {
    if (!this.loaded) {
      this.error("load a speech model before giving it audio");
      return;
    }
    this.clearError();
    this.busy = "transcribe";
    this.setControls();
    $("asr-transcript").textContent = "";
    $("asr-transcript").dataset.state = "working";
    $("asr-timing").textContent = "";
    this.status(`Decoding “${name}”…`);
    try {
      const t0 = performance.now();
      let audio;
      try {
        audio = await decodeAudio(buf, name);
      } catch (e) {
        throw Object.assign(new Error(e.message || String(e)), { audio: true });
      }
      const decodeMs = performance.now() - t0;
      this.status(`Transcribing ${audio.seconds.toFixed(1)} s of audio…`);
      const t1 = performance.now();
      const res = await transcribeSamples(this.client, audio.samples, audio.sampleRate);
      const wallMs = performance.now() - t1;
      this.lastResult = { ...res, name, decode_ms: decodeMs, wall_ms: wallMs, sample_rate: audio.sampleRate,
                          channels: audio.channels, seconds: audio.seconds };
      const text = res.text.trim();
      $("asr-transcript").textContent = text || "(no speech recognized)";
      $("asr-transcript").dataset.state = "done";
      const s = res.stats || {};
      const win = s.windows || [];
      const enc = win.reduce((a, w) => a + (w.encoder_s || 0), 0);
      const dec = win.reduce((a, w) => a + (w.decoder_s || 0), 0);
      const toks = win.reduce((a, w) => a + (w.new_tokens || 0), 0);
      $("asr-timing").textContent = `“${name}”: ${audio.seconds.toFixed(2)} s of audio (${audio.sampleRate} Hz, ` +
        `${audio.channels} channel${audio.channels > 1 ? "s" : ""}) decoded in ${decodeMs.toFixed(0)} ms · ` +
        `transcribed in ${(wallMs / 1000).toFixed(2)} s (${(wallMs / 1000 / audio.seconds).toFixed(2)}× real time): ` +
        `encoder ${enc.toFixed(2)} s, decoder ${dec.toFixed(2)} s for ${toks} tokens` +
        (win.length > 1 ? ` over ${win.length} 30-second windows` : "") + ".";
      this.status("Done.", "ok");
    } catch (e) {
      $("asr-transcript").dataset.state = "failed";
      const msg = e.audio ? e.message : `transcription failed: ${pyErrorLine(e.message || e)}`;
      this.error(msg);
      this.status("Failed: see the error above.", "error");
    } finally {
      this.busy = null;
      this.setControls();
    }
  }

  async toggleRecord() {
    if (this.recorder) {
      this.recorder.stop();
      return;
    }
    if (this.busy || !this.loaded) return;
    const btn = $("asr-record-button");
    const fail = (msg) => { this.error(msg); this.status("", ""); };
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      fail("The microphone is unavailable: this page has no navigator.mediaDevices (it needs a secure context, " +
        "https or localhost). Upload an audio file instead.");
      return;
    }
    if (typeof MediaRecorder === "undefined") {
      fail("Recording is unavailable: this browser has no MediaRecorder. Upload an audio file instead.");
      return;
    }
    this.clearError();
    this.status("Asking for the microphone…");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      const why = e && e.name === "NotAllowedError" ? "access was denied"
        : e && e.name === "NotFoundError" ? "no microphone was found" : "it could not be opened";
      fail(`The microphone is unavailable: ${why} (${e && e.name || "Error"}: ${e && e.message || e}). ` +
        "Allow microphone access or upload an audio file instead.");
      return;
    }
    const chunks = [];
    let rec;
    try {
      rec = new MediaRecorder(stream);
    } catch (e) {
      stream.getTracks().forEach((t) => t.stop());
      fail(`Recording is unavailable: ${e.message || e}. Upload an audio file instead.`);
      return;
    }
    this.recorder = rec;
    this.busy = "record";
    this.setControls();
    btn.textContent = "Stop recording";
    btn.setAttribute("aria-pressed", "true");
    this.status("Recording… press “Stop recording” when done.");
    const t0 = performance.now();
    rec.ondataavailable = (ev) => { if (ev.data && ev.data.size) chunks.push(ev.data); };
    rec.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      this.recorder = null;
      this.busy = null;
      btn.textContent = "Record";
      btn.setAttribute("aria-pressed", "false");
      const blob = new Blob(chunks, { type: rec.mimeType || "audio/webm" });
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      await this.transcribeBuffer(await blob.arrayBuffer(), `recording (${secs} s)`);
    };
    rec.start();
  }
}
