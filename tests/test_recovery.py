"""Recovery in a real browser (the demo's worker, served site, offline): the onnxruntime worker crashing
mid-generation and the WebGPU device being lost.

- crash (test hook: the onnxruntime worker stops when a run request arrives, after a few tokens): the
  generation raises RuntimeCrashed naming the session and the restart; the next ``generate`` on the same model
  and a new ``pipeline(...)`` give the tokens of before (CPython onnxruntime's greedy), their sessions made
  again from the Cache API (the server sees no model file requested);
- device lost (test hook: ``device.destroy()`` on onnxruntime-web's GPUDevice during a WebGPU run): the
  generation raises DeviceLost; by default the model's sessions are re-created on wasm (a warning event,
  ``model.device`` and ``load_timings`` say so) and the next call gives CPython's greedy tokens for that
  variant; with ``strict=True`` the error says there is no fallback and the model stays unusable. A Whisper
  model (the speech pipeline, two sessions) falls back the same way: its ``device`` says wasm, both sessions
  run there and the next call transcribes like CPython onnxruntime.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import SITE, PageSession, dump_json, origin_violations, run_async, run_py

pytestmark = pytest.mark.browser

TINY = "webformers/tiny-random-llama"
WHISPER = "openai/whisper-tiny.en"
WHISPER_DTYPES = {"encoder_model": "fp32", "decoder_model_merged": "q4"}
SENTENCE = "The quick brown fox jumps over the lazy dog."
PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203]
NEW = 8


def _reference(dtype: str) -> list[int]:
    from webformers.toolchain import reference_greedy
    return [int(t) for t in reference_greedy(SITE / "models" / TINY, dtype, PROMPT, NEW)][-NEW:]


# a streamer that arms a test hook once `after` tokens were generated (the hook fires at the next run)
ARM = """
from webformers.runtime.backend import _ortweb

class _Arm:
    def __init__(self, hook, after):
        self.hook, self.after, self.n = hook, after, -1  # the first put() is the prompt
    def put(self, ids):
        self.n += 1
        if self.hook and self.n == self.after:
            _ortweb.test_hook(self.hook, "run")
    def end(self):
        pass

async def _tokens(m, **kw):
    out = await m.generate({prompt!r}, max_new_tokens={new}, do_sample=False, **kw)
    return [int(x) for x in out[0, {n_prompt}:]]

# [error type, message, tokens generated before it] of a generation (hook armed after `after` tokens),
# or None when it succeeded
async def _failing(m, hook=None, after=0):
    _streamer = _Arm(hook, after)
    try:
        await _tokens(m, streamer=_streamer)
    except Exception as e:
        return [type(e).__name__, str(e), _streamer.n]
    return None
""".format(prompt=PROMPT, new=NEW, n_prompt=len(PROMPT))


def _model_requests(server, before: int) -> list[str]:
    """Model files (.onnx, .onnx_data*) the server was asked for since ``before`` (a new repo's manifest is
    fetched network-first, which is no model byte)."""
    return [r["path"] for r in server.log[before:] if r["path"].startswith(f"/models/{TINY}/")
            and (r["path"].endswith(".onnx") or ".onnx_data" in r["path"])]


@pytest.fixture
def page(browser, server):
    s = PageSession(browser, server)
    run_py(s, ARM + "None")
    yield s
    s.close()


def test_crash_mid_generation_restarts_the_runtime_and_recreates_sessions_from_the_cache(page, server):
    want = _reference("q4")
    got = run_py(page, f"""
from webformers import AutoModelForCausalLM
_m = await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype="q4", device="wasm", strict=True)
await _tokens(_m)
""")
    assert got == want
    before = len(server.log)
    err = run_py(page, "await _failing(_m, 'crash', 3)", timeout_ms=120_000)  # a hang fails here
    assert err is not None, "the generation did not fail although the onnxruntime worker stopped"
    kind, message, tokens = err
    assert kind == "RuntimeCrashed", err
    assert tokens == 3, err  # it failed at the run after the third token, not later
    assert f"{TINY} model (q4 on wasm)" in message and "onnxruntime worker" in message, message
    assert "during run" in message and "next call starts a new worker" in message, message
    # the same model object: sessions re-created in the new worker, the same tokens, no model file fetched
    again = run_py(page, """
import time
_t0 = time.perf_counter()
_again = await _tokens(_m)
[_again, _m.load_timings.get("recovered"), _ortweb.runtime_info()["mode"],
 {"first_call_after_crash_ms": round((time.perf_counter() - _t0) * 1000, 1),
  "session_recreate_ms": _m.load_timings["session:model"]}]
""")
    figures = again.pop()
    assert again == [want, ["model"], "worker"], again
    dump_json("recovery.json", figures)
    # a new pipeline after another crash (while idle) loads from the cache too
    got_pipe = run_py(page, f"""
_ortweb.test_hook("crash")
from webformers import pipeline
import asyncio
await asyncio.sleep(0.5)
_p = await pipeline("text-generation", {TINY!r}, dtype="q4", device="wasm")
_ids = await _p.model.generate({PROMPT!r}, max_new_tokens={NEW}, do_sample=False)
[[int(x) for x in _ids[0, {len(PROMPT)}:]], await _tokens(_m)]
""")
    assert got_pipe == [want, want]
    assert _model_requests(server, before) == [], "recovery downloaded model files again"
    assert not origin_violations(page)


def test_device_lost_falls_back_to_wasm(page, server):
    want = _reference("q4")
    run_py(page, f"""
from webformers import AutoModelForCausalLM
_events = []
_m = await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype="q4", device="webgpu", strict=False,
                                                progress_callback=_events.append)
None
""")
    before = len(server.log)
    res = run_py(page, """
_first = await _tokens(_m)
_dev0 = _m.device
_err = await _failing(_m, "lose-device", 2)
[_first, _dev0, _err, _m.device, _m.load_timings.get("device_lost"),
 [e["message"] for e in _events if e.get("status") == "warning"]]
""")
    first, dev0, err, dev1, lost, warnings = res
    assert (first, dev0) == (want, "webgpu")
    assert err is not None and err[0] == "DeviceLost", err
    assert "WebGPU device" in err[1] and "was lost" in err[1] and "now runs on wasm" in err[1], err
    assert dev1 == "wasm" and lost and lost["fallback"] == "wasm", res
    assert any("re-created on wasm" in w for w in warnings), warnings
    again = run_py(page, "[await _tokens(_m), _m.session.device, _m.last_generation_stats['device'], "
                         "_m.session.form['form'], _m.load_timings['forms']['model']['form']]")
    # the q4 model ran natively on WebGPU; on wasm its execution form is chosen again: the fp32 form
    assert again == [want, "wasm", "wasm", "fp32", "fp32"]
    assert _model_requests(server, before) == [], "the fallback downloaded model files again"
    assert not origin_violations(page)


def test_device_lost_with_strict_keeps_the_error(page):
    res = run_py(page, f"""
from webformers import AutoModelForCausalLM
_m = await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype="q4", device="webgpu", strict=True)
_first = await _tokens(_m)
_err = await _failing(_m, "lose-device", 2)
_err2 = await _failing(_m)
[_err, _err2, _m.device]
""")
    err, err2, device = res
    assert err is not None and err[0] == "DeviceLost", err
    assert "strict=True: no fallback" in err[1] and "device='wasm'" in err[1], err
    assert err2 is not None and err2[0] == "DeviceLost" and "strict=True" in err2[1], err2  # no fallback later
    assert device == "webgpu"
    # a new load asking for WebGPU with strict=True is refused, one allowing the fallback plans wasm
    res = run_py(page, f"""
try:
    await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype="q4", device="webgpu", strict=True)
    _refused = None
except Exception as e:
    _refused = [type(e).__name__, str(e)]
_m2 = await AutoModelForCausalLM.from_pretrained({TINY!r}, dtype="q4", device="webgpu")
[_refused, _m2.device, await _tokens(_m2)]
""")
    refused, device2, tokens2 = res
    assert refused is not None and refused[0] == "DeviceLost" and "device='wasm'" in refused[1], refused
    assert device2 == "wasm" and tokens2 == _reference("q4")


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory):
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is missing: run `python3 build.py setup` (installs it)")
    wav = tmp_path_factory.mktemp("recovery-clip") / "clip.wav"
    subprocess.run([espeak, "-w", str(wav), SENTENCE], check=True, capture_output=True, timeout=60)
    return wav


def _whisper_reference(wav) -> str:
    """CPython onnxruntime's transcript of ``wav`` with the site's Whisper files (the same dtypes)."""
    from webformers import pipeline

    repo = SITE / "models" / WHISPER
    if not (repo / "onnx" / "manifest.json").is_file():
        pytest.fail(f"{WHISPER} is not in dist/site/models: run `python3 build.py build`")

    async def go():
        asr = await pipeline("automatic-speech-recognition", str(repo), device="wasm", dtype=WHISPER_DTYPES)
        try:
            return (await asr(wav.read_bytes()))["text"]
        finally:
            asr.dispose()

    return run_async(go())


def test_device_lost_whisper_falls_back_to_wasm(page, server, speech_clip):
    want = _whisper_reference(speech_clip)
    assert want.strip(), "CPython gave an empty transcript for the espeak clip"
    server.add_root("/fixtures/recovery-clip/", speech_clip.parent)
    run_py(page, f"""
import js
from webformers import pipeline
_wevents = []
_asr = await pipeline("automatic-speech-recognition", {WHISPER!r}, dtype={WHISPER_DTYPES!r}, device="webgpu",
                      progress_callback=_wevents.append)
_wav = js.Uint8Array.new(await (await js.fetch("/fixtures/recovery-clip/{speech_clip.name}")).arrayBuffer())
None
""")
    before = len(server.log)
    res = run_py(page, """
_wm = _asr.model
_dev0 = [_wm.device, _wm.encoder.device, _wm.decoder.device]
_ortweb.test_hook("lose-device", "run")  # the encoder's run of the first call
try:
    await _asr(_wav)
    _err = None
except Exception as e:
    _err = [type(e).__name__, str(e)]
_again = (await _asr(_wav))["text"]
[_dev0, _err, [_wm.device, _wm.encoder.device, _wm.decoder.device], _wm.load_timings.get("device_lost"),
 list(_wm.warnings), [e["message"] for e in _wevents if e.get("status") == "warning"], _again]
""", timeout_ms=900_000)
    dev0, err, dev1, lost, model_warnings, warnings, again = res
    assert dev0 == ["webgpu", "webgpu", "webgpu"], res
    assert err is not None and err[0] == "DeviceLost", err
    assert "WebGPU device" in err[1] and "was lost" in err[1] and "now runs on wasm" in err[1], err
    assert dev1 == ["wasm", "wasm", "wasm"] and lost and lost["fallback"] == "wasm", res
    assert any("re-created on wasm" in w for w in model_warnings), model_warnings
    assert any("re-created on wasm" in w for w in warnings), warnings
    assert again == want, (again, want)
    assert [r["path"] for r in server.log[before:] if r["path"].startswith(f"/models/{WHISPER}/")
            and (r["path"].endswith(".onnx") or ".onnx_data" in r["path"])] == [], "the fallback downloaded model files"
    assert not origin_violations(page)
