"""``pipeline("automatic-speech-recognition", model)``: Whisper speech recognition on two ONNX modules.

    asr = await pipeline("automatic-speech-recognition", "openai/whisper-tiny.en",
                         dtype={"encoder_model": "q8", "decoder_model_merged": "q4"}, device="wasm")
    await asr(samples_16k)            # float32 numpy array (16 kHz), or WAV bytes, or a JS Float32Array
    # {"text": " The quick brown fox ..."}
    await asr(wav_bytes, return_chunks=True)   # + "chunks": one entry per 30-second window

The same code runs in Pyodide (onnxruntime-web) and on CPython (onnxruntime).

Model repo: ``encoder_model`` (``input_features`` → ``last_hidden_state``) and ``decoder_model_merged``
(self-attention KV cache + cross-attention keys/values, ``use_cache_branch``; see
``webformers.toolchain.whisper.convert``). Decoding is greedy: the prompt is ``decoder_start_token_id`` then
``no_timestamps_token_id`` (from ``generation_config.json``; plus ``forced_decoder_ids`` when present),
``begin_suppress_tokens`` are masked on the first generated token, ``suppress_tokens`` and every timestamp
token always, and decoding stops at ``eos_token_id`` or ``max_new_tokens``. Audio longer than 30 s is cut
into consecutive 30-second windows, each transcribed on its own; the texts are joined.
"""
from __future__ import annotations

import time

import numpy as np

from ..runtime import backend as _backend
from .audio import (CHUNK_SECONDS, HOP_LENGTH, N_SAMPLES, SAMPLE_RATE, AudioError, load_audio,
                    log_mel_spectrogram)
from ..text.causal_lm import AutoTokenizer, _optional_json, open_repo

__all__ = ["AutomaticSpeechRecognitionPipeline", "WhisperModel", "load_whisper", "ENCODER", "DECODER"]

ENCODER = "encoder_model"
DECODER = "decoder_model_merged"
MODULES = (ENCODER, DECODER)


class WhisperModel:
    """Encoder + merged decoder sessions with Whisper's greedy decoding loop."""

    def __init__(self, encoder, decoder, config: dict, generation_config: dict, preprocessor_config: dict | None = None,
                 *, dtypes: dict | None = None, device: str | None = None, warnings=(), files=()):
        self.encoder = encoder
        self.decoder = decoder
        self.config = dict(config)
        self.generation_config = dict(generation_config or {})
        self.preprocessor_config = dict(preprocessor_config or {})
        self.dtypes = dict(dtypes or {})
        self.device = device
        self.warnings = list(warnings)
        self.files = list(files)
        self.last_stats: dict = {}
        self.n_mels = int(self.preprocessor_config.get("feature_size") or self.config.get("num_mel_bins") or 80)
        self.n_layers = sum(1 for n in decoder.input_names
                            if n.startswith("past_key_values.") and n.endswith(".decoder.key"))
        for name in ("input_ids", "encoder_hidden_states", "use_cache_branch"):
            if name not in decoder.input_names:
                raise ValueError(f"{DECODER} has no {name!r} input (inputs: {', '.join(decoder.input_names)}): "
                                 f"not a merged Whisper decoder")
        if "input_features" not in encoder.input_names:
            raise ValueError(f"{ENCODER} has no 'input_features' input (inputs: {', '.join(encoder.input_names)})")
        heads = int(self.config.get("decoder_attention_heads") or 6)
        self.heads, self.head_dim = heads, int(self.config.get("d_model") or 384) // heads
        gc = self.generation_config
        self.start_id = int(gc.get("decoder_start_token_id", self.config.get("decoder_start_token_id", 50257)))
        eos = gc.get("eos_token_id", self.config.get("eos_token_id", 50256))
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.no_timestamps_id = gc.get("no_timestamps_token_id")
        self.vocab_size = int(self.config.get("vocab_size") or 51864)
        self.max_target_positions = int(self.config.get("max_target_positions") or 448)

    # -- prompt and logits processing
    def prompt_ids(self) -> list[int]:
        ids = [self.start_id]
        forced = self.generation_config.get("forced_decoder_ids") or []
        for pos, tok in sorted(forced):
            if pos == len(ids) and tok is not None:
                ids.append(int(tok))
        if self.no_timestamps_id is not None and int(self.no_timestamps_id) not in ids:
            ids.append(int(self.no_timestamps_id))
        return ids

    def _suppress_masks(self, vocab: int):
        gc = self.generation_config
        always = np.zeros(vocab, bool)
        for t in gc.get("suppress_tokens") or []:
            if 0 <= int(t) < vocab:
                always[int(t)] = True
        if self.no_timestamps_id is not None:  # no-timestamp mode: timestamps and the marker itself
            always[int(self.no_timestamps_id):] = True
        first = always.copy()
        for t in gc.get("begin_suppress_tokens") or []:
            if 0 <= int(t) < vocab:
                first[int(t)] = True
        return first, always

    # -- the two modules
    async def encode(self, features: np.ndarray):
        """Encoder states for features [batch, n_mels, 3000] (a backend tensor: it stays in JS / on device)."""
        out = await self.encoder.run({"input_features": np.ascontiguousarray(features, np.float32)}, fetch=[])
        return out["last_hidden_state"]

    async def generate(self, features: np.ndarray, *, max_new_tokens: int | None = None) -> list[int]:
        """Greedy token ids (prompt excluded, EOS excluded) for one 30-second window of features."""
        if features.ndim == 2:
            features = features[None]
        t0 = time.perf_counter()
        hidden = await self.encode(features)
        t1 = time.perf_counter()
        prompt = self.prompt_ids()
        limit = self.max_target_positions - len(prompt)
        max_new = limit if max_new_tokens is None else max(0, min(int(max_new_tokens), limit))
        empty = np.zeros((1, self.heads, 0, self.head_dim), np.float32)
        feeds = {"encoder_hidden_states": hidden, "use_cache_branch": np.array([False])}
        for i in range(self.n_layers):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.decoder.{kv}"] = empty
                feeds[f"past_key_values.{i}.encoder.{kv}"] = empty
        has_keep = "num_logits_to_keep" in self.decoder.input_names
        ids = list(prompt)
        out_ids: list[int] = []
        step_in = prompt
        first_mask = always_mask = None
        try:
            while len(out_ids) < max_new:
                feeds["input_ids"] = np.array([step_in], np.int64)
                if has_keep:
                    feeds["num_logits_to_keep"] = np.array(1, np.int64)
                res = await self.decoder.run(feeds, fetch=["logits"])
                logits = np.asarray(res["logits"], np.float32)[0, -1]
                if first_mask is None:
                    first_mask, always_mask = self._suppress_masks(logits.shape[-1])
                logits = np.where(first_mask if not out_ids else always_mask, -np.inf, logits)
                tok = int(np.argmax(logits))
                _release_all(feeds, keep=("encoder_hidden_states",))
                for i in range(self.n_layers):
                    for part in ("decoder", "encoder"):
                        for kv in ("key", "value"):
                            feeds[f"past_key_values.{i}.{part}.{kv}"] = res[f"present.{i}.{part}.{kv}"]
                feeds["use_cache_branch"] = np.array([True])
                if tok in self.eos_ids:
                    break
                out_ids.append(tok)
                ids.append(tok)
                step_in = [tok]
        finally:
            _release_all(feeds, keep=())
        t2 = time.perf_counter()
        self.last_stats = {"encoder_s": t1 - t0, "decoder_s": t2 - t1, "new_tokens": len(out_ids),
                           "tokens_per_s": len(out_ids) / (t2 - t1) if t2 > t1 else None}
        return out_ids

    def dispose(self) -> None:
        for s in (self.encoder, self.decoder):
            if s is not None:
                s.dispose()
        self.encoder = self.decoder = None


def _release_all(feeds: dict, keep=()):
    for k, v in feeds.items():
        if k in keep or isinstance(v, np.ndarray):
            continue
        _backend.release(v)


async def load_whisper(model, *, dtype="auto", device="auto", revision="main", host=None, progress_callback=None,
                       strict=False, max_bytes=None):
    """``(WhisperModel, repo)``: open ``model`` and load both modules with ``dtype`` (a name, ``"auto"`` or
    ``{"encoder_model": ..., "decoder_model_merged": ...}``) on ``device``."""
    from ..runtime.load import load_sessions

    repo = await open_repo(model, revision=revision, host=host, progress_callback=progress_callback)
    have = repo.manifest.modules
    missing = [m for m in MODULES if m not in have]
    if missing:
        raise ValueError(f"{repo.model} is not a Whisper repo: it lacks module(s) {', '.join(missing)} "
                         f"(its modules: {', '.join(have)}); speech recognition needs {', '.join(MODULES)}")
    config = await repo.json("config.json")
    gen = await _optional_json(repo, "generation_config.json")
    pre = await _optional_json(repo, "preprocessor_config.json")
    n_layers = int(config.get("decoder_layers") or 0)
    keep = [f"present.{i}.{p}.{kv}" for i in range(n_layers) for p in ("decoder", "encoder") for kv in ("key", "value")]
    kw = {"dtype": dtype, "device": device, "strict": strict, "progress_callback": progress_callback,
          "keep_on_device": {ENCODER: ["last_hidden_state"], DECODER: keep}}
    if max_bytes is not None:
        kw["max_bytes"] = max_bytes
    loaded = await load_sessions(repo, list(MODULES), **kw)
    wm = WhisperModel(loaded.sessions[ENCODER], loaded.sessions[DECODER], config, gen, pre,
                      dtypes=loaded.dtypes, device=loaded.device, warnings=loaded.warnings, files=loaded.files)
    return wm, repo


class AutomaticSpeechRecognitionPipeline:
    """``await asr(audio, sampling_rate=None, max_new_tokens=None, return_chunks=False)``."""

    task = "automatic-speech-recognition"

    def __init__(self, model: WhisperModel, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    async def from_pretrained(cls, model, *, dtype="auto", device="auto", revision="main", host=None,
                              progress_callback=None, strict=False, max_bytes=None):
        wm, repo = await load_whisper(model, dtype=dtype, device=device, revision=revision, host=host,
                                      progress_callback=progress_callback, strict=strict, max_bytes=max_bytes)
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


__all__ += ["AudioError", "HOP_LENGTH"]
