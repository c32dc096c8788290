"""Audio input for speech recognition, in numpy only (runs the same in Pyodide and on CPython).

- ``decode_wav(data) -> (samples float32 [n], sample_rate)``: RIFF/WAVE with PCM 8/16/24/32-bit integer
  or IEEE float 32/64-bit samples (``WAVE_FORMAT_EXTENSIBLE`` too), any channel count (mixed down to mono
  by averaging);
- ``resample(x, orig_sr, target_sr)``: band-limited (Kaiser-windowed sinc) resampling;
- ``load_audio(x, sampling_rate=None) -> float32 [n] at 16 kHz``: a numpy array / list (its rate given by
  ``sampling_rate``, default 16 kHz), WAV bytes, or a ``{"array"/"raw", "sampling_rate"}`` dict;
- ``log_mel_spectrogram(x)``: Whisper's input features ([n_mels, 3000] for a 30 s window), equal to
  Hugging Face's ``WhisperFeatureExtractor`` (numpy path): periodic Hann window, centred reflect-padded
  STFT (n_fft 400, hop 160), power spectrum, Slaney-normalised Slaney-scale mel filters, log10 with a
  1e-10 floor, last frame dropped, clamp to (max - 8), then ``(x + 4) / 4``.

Bad input raises ``AudioError`` (a ``ValueError``) saying what is wrong and what is accepted.
"""
from __future__ import annotations

import struct

import numpy as np

from ..platform import js_array

__all__ = [
    "AudioError", "SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "CHUNK_SECONDS", "N_SAMPLES",
    "decode_wav", "resample", "load_audio", "mel_filter_bank", "log_mel_spectrogram",
]

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples = 3000 frames

ACCEPTED = ("a float32 numpy array of samples (16 kHz unless sampling_rate= says otherwise), WAV file bytes "
            "(PCM 8/16/24/32-bit or float 32/64-bit, any channel count), or a dict "
            "{'array': samples, 'sampling_rate': hz}")

_FMT_PCM, _FMT_FLOAT, _FMT_EXTENSIBLE = 1, 3, 0xFFFE


class AudioError(ValueError):
    """The input is not audio webformers can use."""


# ------------------------------------------------------------------------------------------- WAV

def decode_wav(data) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate) of a RIFF/WAVE file's bytes."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise AudioError(f"WAV data must be bytes, got {type(data).__name__}")
    n = len(data)
    if n == 0:
        raise AudioError("the audio file is empty (0 bytes); expected a WAV (RIFF/WAVE) file")
    if n < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        head = bytes(data[:4])
        raise AudioError(f"not a WAV file: it starts with {head!r}, not b'RIFF'...b'WAVE' ({n} bytes); "
                         f"accepted audio: {ACCEPTED}")
    pos = 12
    fmt = None
    samples = None
    while pos + 8 <= n:
        cid = bytes(data[pos:pos + 4])
        size = struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + 16 > n:
                raise AudioError("corrupt WAV file: its 'fmt ' chunk is truncated")
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _FMT_EXTENSIBLE and size >= 40:
                tag = struct.unpack_from("<H", data, body + 24)[0]  # first 2 bytes of the sub-format GUID
            fmt = (tag, channels, rate, align, bits)
        elif cid == b"data":
            if fmt is None:
                raise AudioError("corrupt WAV file: the 'data' chunk comes before the 'fmt ' chunk")
            end = n if size == 0xFFFFFFFF else min(n, body + size)
            samples = bytes(data[body:end])
            break
        pos = body + size + (size & 1)
    if fmt is None:
        raise AudioError("corrupt WAV file: it has no 'fmt ' chunk")
    if samples is None:
        raise AudioError("corrupt WAV file: it has no 'data' chunk")
    tag, channels, rate, align, bits = fmt
    if channels < 1:
        raise AudioError(f"corrupt WAV file: {channels} channels")
    if not 1000 <= rate <= 384000:
        raise AudioError(f"corrupt WAV file: sample rate {rate} Hz is out of range (1000..384000)")
    width = bits // 8
    if tag == _FMT_PCM and bits in (8, 16, 24, 32):
        frame = width * channels
        usable = len(samples) - len(samples) % frame
        raw = np.frombuffer(samples[:usable], np.uint8)
        if bits == 8:
            x = (raw.astype(np.float32) - 128.0) / 128.0
        elif bits == 16:
            x = raw.view("<i2").astype(np.float32) / 32768.0
        elif bits == 24:
            b = raw.reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            v = np.where(v >= 1 << 23, v - (1 << 24), v)
            x = v.astype(np.float32) / float(1 << 23)
        else:
            x = (raw.view("<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    elif tag == _FMT_FLOAT and bits in (32, 64):
        frame = width * channels
        usable = len(samples) - len(samples) % frame
        x = np.frombuffer(samples[:usable], "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        kind = {_FMT_PCM: "PCM", _FMT_FLOAT: "float"}.get(tag, f"format tag {tag:#x}")
        raise AudioError(f"unsupported WAV encoding: {kind} with {bits}-bit samples; supported: PCM 8/16/24/32-bit, "
                         f"IEEE float 32/64-bit")
    x = x.reshape(-1, channels)
    if x.shape[0] == 0:
        raise AudioError("the WAV file has no samples (its 'data' chunk is empty)")
    mono = x.mean(axis=1, dtype=np.float32) if channels > 1 else x[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


# ------------------------------------------------------------------------------------- resampling

def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def resample(x: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE, *, half_width: int = 16,
             beta: float = 8.6) -> np.ndarray:
    """Resample ``x`` from ``orig_sr`` to ``target_sr`` with a Kaiser-windowed sinc low-pass (cut-off at the
    lower Nyquist frequency, ``half_width`` zero crossings either side)."""
    x = np.asarray(x, dtype=np.float32)
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr or x.size == 0:
        return x.copy()
    g = _gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    n_out = int(np.ceil(x.size * up / down))
    cutoff = min(1.0, up / down)  # in units of the input Nyquist
    width = int(np.ceil(half_width / cutoff))
    xp = np.concatenate([np.zeros(width, np.float32), x, np.zeros(width + 1, np.float32)])
    taps = np.arange(-width, width + 1)
    # one filter per fractional phase (up of them), computed once
    t = taps[None, :] - (np.arange(up) / up)[:, None]
    table = (cutoff * np.sinc(cutoff * t) * _kaiser(t / (width + 1), beta)).astype(np.float32)
    out = np.empty(n_out, np.float32)
    step = 16384
    for s in range(0, n_out, step):
        idx = np.arange(s, min(n_out, s + step), dtype=np.int64)
        base, phase = np.divmod(idx * down, up)
        samples = xp[(base[:, None] + width) + taps[None, :]]
        out[idx] = np.einsum("ij,ij->i", samples, table[phase])
    return out


def _kaiser(u: np.ndarray, beta: float) -> np.ndarray:
    """Kaiser window evaluated at ``u`` in [-1, 1] (0 outside)."""
    inside = np.abs(u) < 1.0
    arg = beta * np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))
    return np.where(inside, np.i0(arg) / np.i0(beta), 0.0)


# ------------------------------------------------------------------------------------------ input

def load_audio(audio, sampling_rate: int | None = None) -> np.ndarray:
    """Any accepted input (see ``ACCEPTED``) as mono float32 samples at 16 kHz."""
    if isinstance(audio, dict):
        arr = audio.get("array", audio.get("raw"))
        if arr is None:
            raise AudioError(f"an audio dict needs an 'array' (or 'raw') entry; got keys {sorted(audio)}")
        sr = audio.get("sampling_rate", sampling_rate)
        return load_audio(arr, sr)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        x, sr = decode_wav(audio)
        if sampling_rate is not None and int(sampling_rate) != sr:
            raise AudioError(f"sampling_rate={sampling_rate} contradicts the WAV header's {sr} Hz")
        return resample(x, sr, SAMPLE_RATE)
    if isinstance(audio, str):
        raise AudioError(f"got a string ({audio[:40]!r}); pass the audio itself: {ACCEPTED}")
    js = js_array(audio)  # a JS Float32Array / ArrayBuffer / Uint8Array handed over by the page
    if js is not None:
        name, arr = js
        if name in ("ArrayBuffer", "Uint8Array"):
            return load_audio(arr.tobytes(), sampling_rate)
        if name != "Float32Array":
            raise AudioError(f"a JS {name} is not audio; pass a Float32Array of samples or WAV bytes (Uint8Array)")
        audio = arr
    try:
        x = np.asarray(audio)
    except Exception as e:  # ragged lists and the like
        raise AudioError(f"could not read the input as audio samples ({e}); accepted: {ACCEPTED}") from None
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise AudioError(f"audio samples must be numbers, got dtype {x.dtype}; accepted: {ACCEPTED}")
    if x.ndim == 2 and min(x.shape) <= 8:  # (channels, n) or (n, channels): mix down
        x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
    if x.ndim != 1:
        raise AudioError(f"audio must be a 1-D array of samples (or [channels, n]), got shape {x.shape}")
    if x.size == 0:
        raise AudioError("the audio is empty (0 samples)")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise AudioError("the audio contains NaN or infinite samples")
    sr = SAMPLE_RATE if sampling_rate is None else int(sampling_rate)
    return resample(x, sr, SAMPLE_RATE) if sr != SAMPLE_RATE else x


# ----------------------------------------------------------------------------------- log-mel

def _hz_to_mel(f):
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


_MEL_CACHE: dict = {}


def mel_filter_bank(n_mels: int = 80, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
    """[n_fft//2+1, n_mels] triangular filters, Slaney mel scale, Slaney (area) normalisation, 0..sr/2."""
    key = (n_mels, n_fft, sr)
    if key in _MEL_CACHE:
        return _MEL_CACHE[key]
    n_freqs = n_fft // 2 + 1
    fft_freqs = np.linspace(0, sr // 2, n_freqs)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    diff = np.diff(hz_pts)
    slopes = hz_pts[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels+2]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= (2.0 / (hz_pts[2:n_mels + 2] - hz_pts[:n_mels]))[None, :]
    _MEL_CACHE[key] = fb
    return fb


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, *, n_samples: int = N_SAMPLES) -> np.ndarray:
    """Whisper input features [n_mels, n_samples // HOP_LENGTH] (float32) of 16 kHz ``audio``, zero-padded
    or truncated to ``n_samples`` first (30 s by default), as ``WhisperFeatureExtractor`` computes them."""
    x = np.asarray(audio, np.float32).reshape(-1)
    if x.size >= n_samples:
        x = x[:n_samples]
    else:
        x = np.concatenate([x, np.zeros(n_samples - x.size, np.float32)])
    pad = N_FFT // 2
    xp = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    n_frames = 1 + (xp.size - N_FFT) // HOP_LENGTH
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    frames = np.lib.stride_tricks.as_strided(xp, shape=(n_frames, N_FFT),
                                             strides=(xp.strides[0] * HOP_LENGTH, xp.strides[0]))
    power = np.empty((n_frames, N_FFT // 2 + 1), np.float64)
    for s in range(0, n_frames, 500):  # bounded temporaries
        spec = np.fft.rfft(frames[s:s + 500] * window, axis=1).astype(np.complex64)
        power[s:s + 500] = np.abs(spec, dtype=np.float64) ** 2
    mel = np.maximum(1e-10, mel_filter_bank(n_mels).T @ power.T)  # [n_mels, n_frames]
    log_spec = np.log10(mel)[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
