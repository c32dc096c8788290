"""Whisper in the page (Pyodide + onnxruntime-web, WASM): fp32 transcripts of the synthesized clips equal
CPython onnxruntime's with the same files, a per-module dtype mapping fetches exactly the two chosen files,
the report's WER grid is complete, and inputs that are not audio give clear errors."""
from __future__ import annotations

import json

import pytest

from helpers import run_py

pytestmark = pytest.mark.browser

MODEL = "openai/whisper-tiny.en"

# A page-side WAV decoder (16-bit PCM mono) giving the Float32Array a page would get from decodeAudioData.
JS_DECODE = r"""(async (url) => {
  const buf = await (await fetch(url)).arrayBuffer();
  const dv = new DataView(buf);
  let p = 12, off = -1, n = 0;
  while (p + 8 <= dv.byteLength) {
    const id = String.fromCharCode(dv.getUint8(p), dv.getUint8(p + 1), dv.getUint8(p + 2), dv.getUint8(p + 3));
    const size = dv.getUint32(p + 4, true);
    if (id === "data") { off = p + 8; n = size >> 1; break; }
    p += 8 + size + (size & 1);
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = dv.getInt16(off + 2 * i, true) / 32768;
  return out;
})"""


@pytest.fixture(scope="module")
def whisper_files(tmp_path_factory):
    from webformers.toolchain.whisper.convert import build_whisper_demo
    from webformers.toolchain.whisper.eval import synthesize_clips

    root = tmp_path_factory.mktemp("whisper-browser-models")
    build_whisper_demo(root)
    clips_dir = tmp_path_factory.mktemp("whisper-browser-clips")
    clips = synthesize_clips(clips_dir)
    return root, clips_dir, clips


@pytest.fixture
def hosts(server, whisper_files):
    root, clips_dir, clips = whisper_files
    server.add_root("/fixtures/whisper/", root)
    server.add_root("/fixtures/whisper-clips/", clips_dir)
    return server.url + "/fixtures/whisper", [server.url + "/fixtures/whisper-clips/" + c.name for c in clips]


def _load(host, enc, dec):
    return f"""
import json
from pyodide.code import run_js
from webformers.page import speech as webapp_asr
decode = run_js({JS_DECODE!r})
info = await webapp_asr.load({MODEL!r}, host={host!r}, device="wasm",
                             dtype={{"encoder_model": {enc!r}, "decoder_model_merged": {dec!r}}})
"""


def test_fp32_transcripts_equal_cpython(wf_page, hosts, whisper_files):
    from webformers.toolchain.whisper.convert import transcribe_files

    root, _, clips = whisper_files
    host, urls = hosts
    ref = transcribe_files(root / MODEL, "fp32", "fp32", clips)
    res = run_py(wf_page, _load(host, "fp32", "fp32") + f"""
texts = []
for url in {urls!r}:
    samples = await decode(url)
    texts.append((await webapp_asr.run(samples))["text"])
import js
wav = js.Uint8Array.new(await (await js.fetch({urls[0]!r})).arrayBuffer())
from_wav = (await webapp_asr.run(wav))["text"]
webapp_asr.dispose()
json.dumps({{"info": info, "texts": texts, "from_wav": from_wav}})
""")
    res = json.loads(res)
    assert res["info"]["dtypes"] == {"encoder_model": "fp32", "decoder_model_merged": "fp32"}
    assert res["texts"] == ref
    assert res["from_wav"] == ref[0]


def test_per_module_mapping_fetches_exactly_two_files(wf_page, hosts, whisper_files):
    from webformers.toolchain.whisper.convert import transcribe_files

    root, _, clips = whisper_files
    host, urls = hosts
    ref = transcribe_files(root / MODEL, "q4", "bnb4", clips[:1])
    res = json.loads(run_py(wf_page, _load(host, "q4", "bnb4") + f"""
text = (await webapp_asr.run(await decode({urls[0]!r})))["text"]
webapp_asr.dispose()
json.dumps({{"info": info, "text": text}})
"""))
    onnx = sorted({u.rsplit("/", 1)[-1] for u in wf_page.requests if u.endswith(".onnx") or "onnx_data" in u})
    assert onnx == ["decoder_model_merged_bnb4.onnx", "encoder_model_q4.onnx"]
    assert res["info"]["files"] == ["onnx/encoder_model_q4.onnx", "onnx/decoder_model_merged_bnb4.onnx"]
    # the README's recommended pair rounds no activation at run time, so the page transcribes exactly like
    # CPython onnxruntime (8-bit dynamic decoders can part on a 1-ulp float difference: see test_page.py)
    assert res["text"] == ref[0], (ref[0], res["text"])


def test_report_grid_and_not_audio_errors(shared_page, hosts, whisper_files):
    from webformers.toolchain.quantize import SUPPORTED

    host, urls = hosts
    res = json.loads(run_py(shared_page, _load(host, "q4", "q4") + f"""
import js
from webformers.speech.audio import AudioError
chart = await webapp_asr.model_info({MODEL!r}, host={host!r})
errors = []
bad = [js.Uint8Array.new(0), js.Uint8Array.new(3000),
       js.Float32Array.new(0), js.Int32Array.new(10)]
rnd = js.Uint8Array.new(4096)
for i in range(4096):
    rnd[i] = (i * 7919 + 13) % 251
bad.insert(1, rnd)
for b in bad:
    try:
        await webapp_asr.run(b)
        errors.append(None)
    except AudioError as e:
        errors.append(str(e))
webapp_asr.dispose()
json.dumps({{"chart": chart, "errors": errors}})
"""))
    chart, errors = res["chart"], res["errors"]
    assert chart["dtypes"] == list(SUPPORTED)
    assert len(chart["grid"]) == len(SUPPORTED) ** 2
    assert {(g["encoder_model"], g["decoder_model_merged"]) for g in chart["grid"]} == {
        (e, d) for e in SUPPORTED for d in SUPPORTED}
    assert "empty (0 bytes)" in errors[0]
    assert "not a WAV file" in errors[1]
    assert "not a WAV file" in errors[2]  # 3000 zero bytes
    assert "0 samples" in errors[3]
    assert "Int32Array is not audio" in errors[4]
