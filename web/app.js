import { WebformersClient } from "./wf-client.js";

const client = new WebformersClient();
window.wf = client;  // the test harness and the console drive Python through this

const $ = (id) => document.getElementById(id);

export function showError(message) {
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = message;
  $("errors").append(p);
}

client.addEventListener("boot", (ev) => {
  const t = ev.detail;
  $("boot-status").dataset.state = "ready";
  $("boot-status").textContent = `Ready: Pyodide ${t.pyodide_version}, onnxruntime-web ${t.ort_version}, ` +
    `booted in ${(t.total / 1000).toFixed(1)} s.`;
  const body = $("boot-timings").querySelector("tbody");
  body.replaceChildren(...["pyodide", "numpy", "wheel", "ort", "total"].map((k) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<th scope="row">${k}</th><td>${t[k]}</td>`;
    return tr;
  }));
  $("boot-timings").hidden = false;
});

client.addEventListener("boot-error", (ev) => {
  $("boot-status").dataset.state = "error";
  $("boot-status").textContent = `Boot failed: ${ev.detail}`;
  showError(ev.detail);
});
