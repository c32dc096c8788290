"""The demo page's speech-recognition panel (web/ui/asr.js + webformers.page.speech) in headless Chromium.

Driven like a person: pick the encoder / decoder dtypes, press Load, upload a WAV synthesized by espeak-ng
through the file input. The transcript must equal CPython onnxruntime's (``pipeline(...)`` on the same
repo files, same dtypes) and the page worker's own ``speech.run`` of the raw WAV bytes; exactly
the two chosen ONNX files are fetched; the WER chart is drawn; a non-audio file and the (absent) microphone
give clear errors in the page.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from helpers import ARTIFACTS, SITE, run_async, run_py

pytestmark = pytest.mark.browser

MODEL = "openai/whisper-tiny.en"
ENC, DEC = "fp32", "q4"
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is missing: run `python3 build.py setup` (installs it)")
    d = tmp_path_factory.mktemp("asr-page-clip")
    wav = d / "clip.wav"
    subprocess.run([espeak, "-w", str(wav), SENTENCE], check=True, capture_output=True, timeout=60)
    assert wav.stat().st_size > 1000
    return wav


def _repo():
    p = SITE / "models" / MODEL
    idx = json.loads((SITE / "models" / "index.json").read_text())["models"]
    entry = next((m for m in idx if m["id"] == MODEL), None)
    if entry is None or not (p / "onnx" / "manifest.json").exists():
        pytest.fail(f"{MODEL} is not in dist/site/models: run `python3 build.py build`")
    assert entry["task"] == "automatic-speech-recognition"
    return p


def _cpython_transcript(repo, wav) -> str:
    from webformers import pipeline

    async def go():
        asr = await pipeline("automatic-speech-recognition", str(repo), device="wasm",
                             dtype={"encoder_model": ENC, "decoder_model_merged": DEC})
        try:
            return (await asr(wav.read_bytes()))["text"]
        finally:
            asr.dispose()

    return run_async(go())


def test_asr_panel_transcribes_an_uploaded_wav(wf_page, clip):
    repo = _repo()
    page = wf_page.page
    page.set_default_timeout(300_000)
    ref = _cpython_transcript(repo, clip)
    assert ref.strip(), "CPython gave an empty transcript for the espeak clip"

    # the grid arrives after boot: the options then carry sizes and WERs
    page.wait_for_function("window.wfAsr && window.wfAsr.grid !== null")
    page.wait_for_function("!document.getElementById('asr-load-button').disabled")
    # keyboard: Tab walks model -> device -> encoder dtype -> decoder dtype -> Load
    page.focus("#asr-model-select")
    order = ["asr-model-select"]
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["asr-model-select", "asr-device-select", "asr-dtype-encoder_model",
                     "asr-dtype-decoder_model_merged", "asr-load-button"], order
    page.locator("#asr-model-select").select_option(MODEL)
    page.locator("#asr-device-select").select_option("wasm")
    page.locator("#asr-dtype-encoder_model").select_option(ENC)
    page.locator("#asr-dtype-decoder_model_merged").select_option(DEC)
    grid = json.loads((repo / "quantization_report.json").read_text())["grid"]
    cell = next(g for g in grid if g["encoder_model"] == ENC and g["decoder_model_merged"] == DEC)
    enc_label = page.locator("#asr-dtype-encoder_model option:checked").inner_text()
    dec_label = page.locator("#asr-dtype-decoder_model_merged option:checked").inner_text()
    wer_txt = f"WER {100 * cell['wer']:.1f}%"
    assert enc_label.startswith(f"{ENC} — ") and "MB" in enc_label and wer_txt in enc_label, enc_label
    assert dec_label.startswith(f"{DEC} — ") and wer_txt in dec_label, dec_label
    assert wer_txt in page.locator("#asr-pair-note").inner_text()

    # the chart: every measured pair, the selection and the recommendation, drawn on the canvas
    page.wait_for_function("window.wfAsr.chart && window.wfAsr.chart.data.datasets[2].data.length === 1")
    chart = page.evaluate("""() => {
      const c = window.wfAsr.chart, cv = document.getElementById('asr-chart');
      const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
      let inked = 0;
      for (let i = 3; i < px.length; i += 4) if (px[i] > 0) inked++;
      return { counts: c.data.datasets.map((d) => d.data.length), sel: c.data.datasets[2].data[0],
               rec: c.data.datasets[1].data[0] || null, inked, w: cv.width, h: cv.height };
    }""")
    measured = [g for g in grid if isinstance(g.get("wer"), (int, float))]
    assert sum(chart["counts"]) == len(measured) == 81
    assert (chart["sel"]["enc"], chart["sel"]["dec"]) == (ENC, DEC)
    assert abs(chart["sel"]["y"] - 100 * cell["wer"]) < 1e-9
    rec = json.loads((repo / "quantization_report.json").read_text())["recommended"]
    assert (chart["rec"]["enc"], chart["rec"]["dec"]) == (rec["encoder_model"], rec["decoder_model_merged"])
    assert chart["inked"] > 0.02 * chart["w"] * chart["h"], chart

    # load through the form; the download bars are the ASR panel's own
    before = len(wf_page.requests)
    page.locator("#asr-load-button").click()
    page.wait_for_function("document.getElementById('asr-load-status').className !== ''")
    status = page.locator("#asr-load-status").inner_text()
    assert status.startswith("Loaded"), status + "\n" + page.locator("#asr-error").inner_text()
    assert page.locator("#asr-file-bars li").count() >= 2
    onnx = sorted({u.rsplit("/", 1)[-1] for u in wf_page.requests[before:] if ".onnx" in u})
    assert onnx == ["decoder_model_merged_q4.onnx", "encoder_model.onnx"], onnx
    assert all(f"/models/{MODEL}/" in u for u in wf_page.requests[before:] if ".onnx" in u)
    assert page.locator("#file-bars li").count() == 0  # the chat's bars stay untouched

    # upload the WAV like a person
    page.locator("#asr-file-input").set_input_files(str(clip))
    page.wait_for_function("['done', 'failed'].includes(document.getElementById('asr-transcript').dataset.state)")
    assert page.locator("#asr-error").inner_text() == ""
    text = page.locator("#asr-transcript").inner_text()
    timing = page.locator("#asr-timing").inner_text()
    assert text == ref.strip(), (text, ref)
    assert "decoded in" in timing and "transcribed in" in timing and "tokens" in timing, timing
    last = page.evaluate("window.wfAsr.lastResult")
    assert last["sample_rate"] == 22050 and last["channels"] == 1  # espeak-ng's rate, kept for Python to resample

    # the worker's own decode of the same WAV bytes (speech.run(Uint8Array)) agrees
    server = wf_page.server
    server.add_root("/fixtures/asr-page-clip/", clip.parent)
    same = run_py(wf_page, f"""
import js
from webformers.page import speech
wav = js.Uint8Array.new(await (await js.fetch({server.url + '/fixtures/asr-page-clip/clip.wav'!r})).arrayBuffer())
(await speech.run(wav))["text"]
""")
    assert same.strip() == text

    page.locator("#asr").screenshot(path=str(ARTIFACTS / "page-asr.png"))

    # a file that is not audio: a clear error in the page, the transcript marked failed
    page.locator("#asr-file-input").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"these are not audio samples\n" * 40})
    page.wait_for_function("document.getElementById('asr-transcript').dataset.state === 'failed'")
    err = page.locator("#asr-error").inner_text()
    assert "notes.txt" in err and "not audio the browser can decode" in err and "WAV" in err, err

    # an empty file
    page.locator("#asr-file-input").set_input_files({"name": "empty.wav", "mimeType": "audio/wav", "buffer": b""})
    page.wait_for_function("document.getElementById('asr-error').innerText.includes('empty.wav')")
    assert "empty (0 bytes)" in page.locator("#asr-error").inner_text()

    # headless Chromium has no microphone: Record says so
    page.locator("#asr-record-button").click()
    page.wait_for_function("document.getElementById('asr-error').innerText.includes('microphone')")
    err = page.locator("#asr-error").inner_text()
    assert "microphone is unavailable" in err and "upload an audio file" in err, err
    assert page.locator("#asr-record-button").get_attribute("aria-pressed") == "false"

    # a phone-sized viewport: nothing in the panel overflows sideways, and the controls stay reachable
    page.set_viewport_size({"width": 375, "height": 800})
    overflowing = """() => [...document.querySelectorAll('#asr *')]
        .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
        .map((e) => e.id || e.tagName)"""
    try:  # Chart.js follows its box's size on the next ResizeObserver callback
        page.wait_for_function(f"({overflowing})().length === 0", timeout=10_000)
    except Exception:
        pass
    overflow = page.evaluate(overflowing)
    assert overflow == [], overflow
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("#asr").screenshot(path=str(ARTIFACTS / "page-asr-375.png"))
