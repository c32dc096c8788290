"""Whisper on CPython: audio decoding and features (vs Hugging Face's WhisperFeatureExtractor), the
CTranslate2 reader, WER, and the built repo (two modules, every dtype, WER grid, pipeline, errors)."""
from __future__ import annotations

import io
import json
import struct
import wave

import numpy as np
import pytest

from helpers import run_async

from webformers.speech.audio import (AudioError, decode_wav, load_audio, log_mel_spectrogram, mel_filter_bank,
                              resample)
from webformers.toolchain.whisper.eval import SENTENCES, normalize_text, wer

MODEL = "openai/whisper-tiny.en"


# ----------------------------------------------------------------------------------- helpers

def _pcm_wav(x: np.ndarray, sr: int, bits: int, channels: int = 1) -> bytes:
    """A WAV written by the standard library's ``wave`` module (PCM)."""
    frames = np.repeat(x[:, None], channels, axis=1) if channels > 1 else x[:, None]
    if bits == 16:
        data = np.round(frames * 32767).astype("<i2").tobytes()
    elif bits == 32:
        data = np.round(frames * (2 ** 31 - 1)).astype("<i4").tobytes()
    elif bits == 24:
        v = np.round(frames * (2 ** 23 - 1)).astype(np.int32).reshape(-1)
        u = (v & 0xFFFFFF).astype(np.uint32)
        data = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    else:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(bits // 8)
        w.setframerate(sr)
        w.writeframes(data)
    return buf.getvalue()


def _float_wav(frames: np.ndarray, sr: int) -> bytes:
    """IEEE float32 WAV (format tag 3), frames [n, channels]."""
    ch = frames.shape[1]
    data = frames.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, ch, sr, sr * 4 * ch, 4 * ch, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _tone(sr: int, seconds: float = 0.5, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# ------------------------------------------------------------------------------------- audio

@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_decode_pcm_wav(bits):
    x = _tone(16000)
    got, sr = decode_wav(_pcm_wav(x, 16000, bits))
    assert sr == 16000 and got.dtype == np.float32 and got.shape == x.shape
    assert np.abs(got - x).max() < (1.5 / 2 ** (bits - 1))


def test_decode_float_stereo_and_resample():
    x = _tone(44100, hz=300)
    stereo = np.stack([x, 0.5 * x], axis=1)
    got, sr = decode_wav(_float_wav(stereo, 44100))
    assert sr == 44100
    np.testing.assert_allclose(got, 0.75 * x, atol=1e-7)  # channels averaged
    y = load_audio(_float_wav(stereo, 44100))  # resampled to 16 kHz
    assert abs(y.size - round(x.size * 16000 / 44100)) <= 1
    t = np.arange(y.size) / 16000
    ref = 0.75 * 0.5 * np.sin(2 * np.pi * 300 * t)
    assert np.abs(y[200:-200] - ref[200:-200]).max() < 1e-3


def test_resample_preserves_band_and_removes_alias():
    sr = 48000
    lo, hi = _tone(sr, 1.0, 1000.0), _tone(sr, 1.0, 12000.0)  # 12 kHz is above the 8 kHz Nyquist of 16 kHz
    y_lo, y_hi = resample(lo, sr, 16000), resample(hi, sr, 16000)
    t = np.arange(y_lo.size) / 16000
    assert np.abs(y_lo[100:-100] - 0.5 * np.sin(2 * np.pi * 1000 * t[100:-100])).max() < 1e-3
    assert np.sqrt(np.mean(y_hi[100:-100] ** 2)) < 1e-3


def test_log_mel_equals_hf_feature_extractor():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80)
    np.testing.assert_allclose(mel_filter_bank(80), fe.mel_filters, atol=1e-12)
    rng = np.random.default_rng(0)
    speechy = np.concatenate([_tone(16000, 1.0, 220.0), 0.1 * rng.standard_normal(24000).astype(np.float32),
                              _tone(16000, 0.7, 3000.0)])
    for x in (speechy, 0.01 * rng.standard_normal(16000 * 31).astype(np.float32), np.zeros(100, np.float32)):
        ours = log_mel_spectrogram(x)
        ref = fe(x, sampling_rate=16000, return_tensors="np").input_features[0]
        assert ours.shape == ref.shape == (80, 3000)
        assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("bad, msg", [
    (b"", "empty"),
    (bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8)), "not a WAV file"),
    (b"RIFF\x10\x00\x00\x00WAVEjunk", "no 'fmt ' chunk"),
    (np.zeros(0, np.float32), "empty (0 samples)"),
    ("speech.wav", "got a string"),
    (np.array(["a", "b"]), "must be numbers"),
    (np.full(100, np.nan, np.float32), "NaN"),
])
def test_not_audio_is_a_clear_error(bad, msg):
    with pytest.raises(AudioError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_audio(bad)


def test_wav_without_samples_and_bad_encoding():
    empty = _float_wav(np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(empty)
    alaw = bytearray(_pcm_wav(_tone(8000), 8000, 16))
    alaw[20:22] = struct.pack("<H", 6)  # A-law format tag
    with pytest.raises(AudioError, match="unsupported WAV encoding"):
        load_audio(bytes(alaw))


def test_wer():
    assert normalize_text("The quick, brown fox!") == ["the", "quick", "brown", "fox"]
    assert wer(["a b c d"], ["a b c d"]) == 0.0
    assert wer(["a b c d"], ["a x c"]) == 0.5  # one substitution + one deletion
    assert wer(["a b", "c d"], ["a b", ""]) == 0.5


def test_read_ct2_format(tmp_path):
    from webformers.toolchain.whisper.convert import read_ct2

    def s(x):
        b = x.encode()
        return struct.pack("<H", len(b) + 1) + b + b"\0"
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    blob = struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 2)
    blob += s("a/weight") + struct.pack("<B", 2) + struct.pack("<II", 2, 3) + struct.pack("<B", 4)
    blob += struct.pack("<I", w.nbytes) + w.tobytes()
    blob += s("a/flag") + struct.pack("<B", 0) + struct.pack("<B", 1) + struct.pack("<I", 1) + b"\x01"
    blob += struct.pack("<I", 1) + s("b/weight") + s("a/weight")
    (tmp_path / "model.bin").write_bytes(blob)
    variables, aliases = read_ct2(tmp_path / "model.bin")
    np.testing.assert_array_equal(variables["a/weight"], w)
    assert variables["a/flag"].dtype == np.int8 and int(variables["a/flag"]) == 1
    assert aliases == {"b/weight": "a/weight"}
    (tmp_path / "model.bin").write_bytes(blob + b"x")
    with pytest.raises(ValueError, match="trailing"):
        read_ct2(tmp_path / "model.bin")


# --------------------------------------------------------------- decoding on the shared generation loop

class _FakeEncoder:
    input_names = ["input_features"]

    async def run(self, feeds, fetch=None):
        assert feeds["input_features"].shape == (1, 80, 3000)
        return {"last_hidden_state": np.zeros((1, 4, 8), np.float32)}

    def dispose(self):
        pass


class _FakeMergedDecoder:
    """The merged Whisper decoder's I/O (one layer, 2 heads of 4) over a table of logits by position."""

    PAST = [f"past_key_values.0.{p}.{kv}" for p in ("decoder", "encoder") for kv in ("key", "value")]

    def __init__(self, table):
        self.table = table
        self.input_names = ["input_ids", "encoder_hidden_states", "use_cache_branch", *self.PAST]
        self.output_names = ["logits", *(n.replace("past_key_values", "present") for n in self.PAST)]
        self.calls = []

    async def run(self, feeds, fetch=None):
        ids, past = feeds["input_ids"], feeds["past_key_values.0.decoder.key"]
        past_len, n = past.shape[2], ids.shape[1]
        self.calls.append((ids[0].tolist(), past_len, bool(feeds["use_cache_branch"][0]), fetch))
        grown = np.zeros((1, 2, past_len + n, 4), np.float32)
        out = {"logits": self.table[past_len:past_len + n][None].astype(np.float32)}
        out.update({f"present.0.decoder.{kv}": grown for kv in ("key", "value")})
        out.update({f"present.0.encoder.{kv}": np.zeros((1, 2, 4, 4), np.float32) for kv in ("key", "value")})
        return out

    def dispose(self):
        pass


def _fake_whisper(table):
    from webformers.speech.whisper import WhisperModel

    config = {"decoder_attention_heads": 2, "d_model": 8, "vocab_size": 60, "max_target_positions": 12}
    gen = {"decoder_start_token_id": 40, "eos_token_id": 4, "no_timestamps_token_id": 50, "suppress_tokens": [7],
           "begin_suppress_tokens": [3, 4], "forced_decoder_ids": None, "do_sample": None}
    return WhisperModel(_FakeEncoder(), _FakeMergedDecoder(table), config, gen)


def test_whisper_decoding_suppresses_and_stops_on_the_generation_loop():
    """Prompt = start + no-timestamps; blank/eos suppressed on the first token only; suppress_tokens and the
    timestamps always; eos ends the window (and is not returned); one run per token, the cache fed back."""
    table = np.random.default_rng(0).normal(0, 0.1, (12, 60))
    table[1, [3, 4, 20]] = [10, 9, 5]  # first token: 3 and eos are begin-suppressed -> 20
    table[2, [55, 7, 3]] = [10, 9, 5]  # a timestamp and a suppressed token lose -> 3 (no longer begin)
    table[3, 21] = 5
    table[4, 4] = 10  # eos
    wm = _fake_whisper(table)
    assert wm.prompt_ids() == [40, 50]
    feats = np.zeros((80, 3000), np.float32)
    assert run_async(wm.generate(feats)) == [20, 3, 21]
    assert wm.decoder.calls == [([40, 50], 0, False, ["logits"]), ([20], 2, True, ["logits"]),
                                ([3], 3, True, ["logits"]), ([21], 4, True, ["logits"])]
    assert wm.last_stats["new_tokens"] == 3
    wm.decoder.calls.clear()
    assert run_async(wm.generate(feats, max_new_tokens=2)) == [20, 3] and len(wm.decoder.calls) == 2
    table[:, 4] = -100  # no eos: decoding runs until the decoder's context (12 positions) is full
    wm = _fake_whisper(table)
    out = run_async(wm.generate(feats))
    assert len(out) == 12 - 2 and len(wm.decoder.calls) == 10
    assert not set(out) & {4, 7, *range(50, 60)}


# ------------------------------------------------------------------------- the built model repo

@pytest.fixture(scope="session")
def whisper_root(tmp_path_factory):
    """The Whisper repo (built once, then from ~/.cache/webformers/models) + the synthesized clips."""
    from webformers.toolchain.whisper.convert import build_whisper_demo
    from webformers.toolchain.whisper.eval import synthesize_clips

    root = tmp_path_factory.mktemp("whisper-models")
    build_whisper_demo(root)
    clips = synthesize_clips(tmp_path_factory.mktemp("whisper-clips"))
    return root, clips


def test_repo_layout_and_report(whisper_root):
    from webformers.dtypes import onnx_file
    from webformers.store.manifest import Manifest
    from webformers.toolchain.quantize import SUPPORTED

    root, _ = whisper_root
    repo = root / MODEL
    for f in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
              "tokenizer_config.json", "quantization_report.json"):
        assert (repo / f).is_file(), f
    man = Manifest.from_json((repo / "onnx" / "manifest.json").read_text())
    assert set(man.modules) == {"encoder_model", "decoder_model_merged"}
    for m in man.modules:
        assert man.modules[m] == list(SUPPORTED)
        for d in SUPPORTED:
            assert (repo / onnx_file(m, d)).is_file()
    rep = json.loads((repo / "quantization_report.json").read_text())
    assert rep["metric"] == "wer"
    assert rep["eval"]["execution_form"] == "fp32"  # the grid decodes quantized matmuls once per session
    pairs = {(g["encoder_model"], g["decoder_model_merged"]) for g in rep["grid"]}
    assert pairs == {(e, d) for e in SUPPORTED for d in SUPPORTED}  # the full grid
    for g in rep["grid"]:
        assert 0.0 <= g["wer"] and g["bytes"] == (rep["modules"]["encoder_model"][g["encoder_model"]]["bytes"]
                                                  + rep["modules"]["decoder_model_merged"][g["decoder_model_merged"]]["bytes"])
    for m in man.modules:
        for d in SUPPORTED:
            assert rep["modules"][m][d]["bytes"] == man.variant(m, d)["bytes"]
    base = next(g for g in rep["grid"] if g["encoder_model"] == g["decoder_model_merged"] == "fp32")
    assert base["wer"] < 0.35, base  # tiny.en on espeak-ng speech: most words right
    gen = json.loads((repo / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == 50257 and gen["no_timestamps_token_id"] == 50362


def test_report_cli_prints_the_wer_grid(whisper_root, capsys):
    from webformers.cli import main
    from webformers.toolchain.quantize import SUPPORTED

    root, _ = whisper_root
    repo = root / MODEL
    rep = json.loads((repo / "quantization_report.json").read_text())
    assert main(["report", str(repo)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "WER, encoder_model (rows) x decoder_model_merged (columns):"
    assert out[1].split() == ["encoder", *SUPPORTED]
    wer = {(g["encoder_model"], g["decoder_model_merged"]): g["wer"] for g in rep["grid"]}
    for line in out[3:3 + len(SUPPORTED)]:
        enc, *cells = line.split()
        assert cells == [f"{wer[enc, d]:.3f}" for d in SUPPORTED], line
    r = rep["recommended"]
    assert any(ln.startswith("recommended") and f"encoder_model {r['encoder_model']} + decoder_model_merged "
               f"{r['decoder_model_merged']}" in ln for ln in out), out[-3:]


def test_pipeline_transcribes_and_matches_reference_loop(whisper_root):
    from webformers import pipeline
    from webformers.toolchain.whisper.convert import transcribe_files

    root, clips = whisper_root
    ref = transcribe_files(root / MODEL, "fp32", "fp32", clips[:3])

    async def go():
        asr = await pipeline("automatic-speech-recognition", MODEL, host=str(root), device="wasm",
                             dtype={"encoder_model": "fp32", "decoder_model_merged": "fp32"})
        assert asr.model.files == ["onnx/encoder_model.onnx", "onnx/decoder_model_merged.onnx"]
        out = [(await asr(c.read_bytes()))["text"] for c in clips[:3]]
        x, sr = decode_wav(clips[0].read_bytes())
        arr = (await asr(x))["text"]
        x44 = resample(x, 16000, 44100)
        arr44 = (await asr(x44, sampling_rate=44100))["text"]
        asr.dispose()
        return out, arr, arr44

    out, arr, arr44 = run_async(go())
    assert out == ref
    assert arr == out[0]
    assert wer([out[0]], [arr44]) <= 0.2
    assert wer(SENTENCES[:3], out) < 0.35


def test_long_audio_in_30_second_windows(whisper_root):
    from webformers import pipeline

    root, clips = whisper_root
    a, _ = decode_wav(clips[1].read_bytes())
    b, _ = decode_wav(clips[4].read_bytes())
    gap = np.zeros(30 * 16000 - a.size + 8000, np.float32)  # clip b starts 0.5 s into the second window
    audio = np.concatenate([a, gap, b])

    async def go():
        asr = await pipeline("automatic-speech-recognition", MODEL, host=str(root), device="wasm",
                             dtype={"encoder_model": "q8", "decoder_model_merged": "q8"})
        one = (await asr(a))["text"]
        two = (await asr(b))["text"]
        both = await asr(audio, return_chunks=True)
        asr.dispose()
        return one, two, both

    one, two, both = run_async(go())
    assert [c["timestamp"] for c in both["chunks"]] == [(0, 30), (30, round(audio.size / 16000, 3))]
    assert both["chunks"][0]["text"] == one
    assert wer([two], [both["chunks"][1]["text"]]) <= 0.2
    assert normalize_text(both["text"])[:3] == normalize_text(one)[:3]


def test_errors(whisper_root):
    from webformers import pipeline

    root, _ = whisper_root

    async def go():
        msgs = []
        for dt in ({"encoder_model": "q3"}, {"encoder": "q4"}):
            try:
                await pipeline("automatic-speech-recognition", MODEL, host=str(root), dtype=dt)
            except ValueError as e:
                msgs.append(str(e))
        asr = await pipeline("automatic-speech-recognition", MODEL, host=str(root), device="wasm",
                             dtype={"encoder_model": "q4", "decoder_model_merged": "q4"})
        for bad in (b"", np.random.default_rng(3).bytes(4000), np.zeros(0, np.float32)):
            try:
                await asr(bad)
            except AudioError as e:
                msgs.append(str(e))
        asr.dispose()
        return msgs

    msgs = run_async(go())
    assert len(msgs) == 5
    assert "unknown dtype 'q3'" in msgs[0] and "fp32" in msgs[0]
    assert "unknown module" in msgs[1] and "encoder_model" in msgs[1]
    assert "empty" in msgs[2] and "not a WAV file" in msgs[3] and "0 samples" in msgs[4]


def test_webapp_functions(whisper_root):
    from webformers.page import speech as webapp_asr

    root, clips = whisper_root

    async def go():
        info = await webapp_asr.load(MODEL, host=str(root), device="wasm",
                                     dtype={"encoder_model": "q4", "decoder_model_merged": "fp32"})
        res = await webapp_asr.run(clips[2].read_bytes())
        chart = await webapp_asr.model_info(MODEL, host=str(root))
        webapp_asr.dispose()
        return info, res, chart

    info, res, chart = run_async(go())
    assert info["dtypes"] == {"encoder_model": "q4", "decoder_model_merged": "fp32"}
    assert info["files"] == ["onnx/encoder_model_q4.onnx", "onnx/decoder_model_merged.onnx"]
    assert wer([SENTENCES[2]], [res["text"]]) < 0.5 and res["stats"]["audio_seconds"] > 1
    n = len(chart["dtypes"])
    assert len(chart["matrix"]) == n and all(len(r) == n and None not in r for r in chart["matrix"])
    assert chart["recommended"]["wer"] <= chart["recommended"]["fp32_wer"] + 0.02
