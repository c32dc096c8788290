"""``AutomaticSpeechRecognitionPipeline``: Whisper speech recognition, audio in, text out.

    asr = await pipeline("automatic-speech-recognition", "openai/whisper-tiny.en",
                         dtype={"encoder_model": "q8", "decoder_model_merged": "q4"}, device="wasm")
    await asr(samples_16k)            # float32 numpy array (16 kHz), or WAV bytes, or a JS Float32Array
    # {"text": " The quick brown fox ..."}
    await asr(wav_bytes, return_chunks=True)   # + "chunks": one entry per 30-second window

The same code runs in Pyodide (onnxruntime-web) and on CPython (onnxruntime). Audio longer than 30 s is cut
into consecutive 30-second windows, each transcribed on its own (``WhisperModel.generate``); the texts are
joined.
"""
from __future__ import annotations

import time

import numpy as np

from ..text.tokenizer import AutoTokenizer
from .audio import CHUNK_SECONDS, N_SAMPLES, SAMPLE_RATE, load_audio, log_mel_spectrogram
from .whisper import WhisperModel, load_whisper

__all__ = ["AutomaticSpeechRecognitionPipeline"]


class AutomaticSpeechRecognitionPipeline:
    """``await asr(audio, sampling_rate=None, max_new_tokens=None, return_chunks=False)``."""

    task = "automatic-speech-recognition"

    def __init__(self, model: WhisperModel, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    async def from_pretrained(cls, model, *, dtype="auto", device="auto", revision="main", host=None,
                              progress_callback=None, strict=False, max_bytes=None, execution="auto", max_memory=None):
        """Load both Whisper modules (``webformers.speech.whisper.load_whisper``) and the tokenizer;
        arguments as ``pipeline``. When the tokenizer fails, the sessions are freed and the error raised."""
        wm, repo = await load_whisper(model, dtype=dtype, device=device, revision=revision, host=host,
                                      progress_callback=progress_callback, strict=strict, max_bytes=max_bytes,
                                      execution=execution, max_memory=max_memory)
        try:
            tok = await AutoTokenizer.from_pretrained(repo)
        except BaseException:
            wm.dispose()
            raise
        return cls(wm, tok)

    def features(self, samples: np.ndarray) -> list[np.ndarray]:
        """Log-mel features [n_mels, 3000] of each 30-second window of 16 kHz ``samples``."""
        n = max(1, -(-samples.size // N_SAMPLES))
        return [log_mel_spectrogram(samples[i * N_SAMPLES:(i + 1) * N_SAMPLES], self.model.n_mels) for i in range(n)]

    async def __call__(self, audio, *, sampling_rate: int | None = None, max_new_tokens: int | None = None,
                       return_chunks: bool = False):
        """Transcribe ``audio``: a float32 numpy array at 16 kHz (or at ``sampling_rate``), WAV bytes, a JS
        Float32Array / Uint8Array, or a list of those (then a list of results). Returns ``{"text": ...}``
        (plus ``"chunks": [{"timestamp": (start_s, end_s), "text": ...}]`` with ``return_chunks=True``)."""
        if isinstance(audio, list) and audio and not isinstance(audio[0], (int, float, np.number)):
            return [await self(a, sampling_rate=sampling_rate, max_new_tokens=max_new_tokens,
                               return_chunks=return_chunks) for a in audio]
        if self.model is None or self.model.encoder is None:
            raise RuntimeError("this pipeline was disposed")
        samples = load_audio(audio, sampling_rate)
        t0 = time.perf_counter()
        texts, chunks, stats = [], [], []
        for i, feats in enumerate(self.features(samples)):
            ids = await self.model.generate(feats, max_new_tokens=max_new_tokens)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            texts.append(text)
            start = i * CHUNK_SECONDS
            end = min(samples.size / SAMPLE_RATE, start + CHUNK_SECONDS)
            chunks.append({"timestamp": (round(start, 3), round(end, 3)), "text": text, "tokens": ids})
            stats.append(dict(self.model.last_stats))
        self.last_stats = {"seconds": time.perf_counter() - t0, "audio_seconds": samples.size / SAMPLE_RATE,
                           "windows": stats}
        out = {"text": _join(texts)}
        if return_chunks:
            out["chunks"] = [{"timestamp": c["timestamp"], "text": c["text"]} for c in chunks]
        return out

    def dispose(self) -> None:
        if self.model is not None:
            self.model.dispose()


def _join(texts: list[str]) -> str:
    out = ""
    for t in texts:
        if out and t and not out.endswith(" ") and not t.startswith(" "):
            out += " "
        out += t
    return out
