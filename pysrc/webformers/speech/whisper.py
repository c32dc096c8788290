"""The Whisper model on two ONNX modules, decoded by the shared generation loop.

Model repo: ``encoder_model`` (``input_features`` → ``last_hidden_state``) and ``decoder_model_merged``
(self-attention KV cache + cross-attention keys/values, ``use_cache_branch``; see
``webformers.toolchain.whisper.convert``). Decoding is greedy (``webformers.generation.loop``): the prompt is
``decoder_start_token_id`` then ``no_timestamps_token_id`` (from ``generation_config.json``; plus
``forced_decoder_ids`` when present); ``begin_suppress_tokens`` are suppressed on the first generated token
(``SuppressTokensAtBeginLogitsProcessor``), ``suppress_tokens`` and every timestamp token always
(``SuppressTokensLogitsProcessor``); decoding stops at ``eos_token_id`` or ``max_new_tokens`` (at most the
decoder's ``max_target_positions``).

    wm, repo = await load_whisper("openai/whisper-tiny.en", dtype={"encoder_model": "q8",
                                                                   "decoder_model_merged": "q4"})
    ids = await wm.generate(log_mel_spectrogram(samples))   # one 30-second window
"""
from __future__ import annotations

import time

import numpy as np

from ..generation.config import GenerationConfig
from ..generation.loop import DecoderStep, generate_tokens
from ..runtime import backend as _backend
from ..runtime.forms import check_form_args
from ..runtime.load import load_sessions
from ..store import ModelRepo

__all__ = ["WhisperModel", "WhisperDecoderStep", "load_whisper", "ENCODER", "DECODER", "MODULES"]

ENCODER = "encoder_model"
DECODER = "decoder_model_merged"
MODULES = (ENCODER, DECODER)


class WhisperDecoderStep(DecoderStep):
    """The merged decoder over one window's encoder states: the prompt, then one token per call; each run's
    ``present.*`` (self- and cross-attention) are fed back as ``past_key_values.*`` with
    ``use_cache_branch`` on. The step owns the encoder states and frees them (and the cache) at the end."""

    def __init__(self, decoder, encoder_hidden_states, n_layers: int, heads: int, head_dim: int, backend=None):
        super().__init__(decoder)
        self.backend = backend if backend is not None else _backend
        empty = np.zeros((1, heads, 0, head_dim), np.float32)
        self.past_names = [(f"past_key_values.{i}.{part}.{kv}", f"present.{i}.{part}.{kv}")
                           for i in range(n_layers) for part in ("decoder", "encoder") for kv in ("key", "value")]
        self.feeds = {"encoder_hidden_states": encoder_hidden_states, "use_cache_branch": np.array([False])}
        self.feeds.update({p: empty for p, _ in self.past_names})

    async def __call__(self, ids: list[int]) -> np.ndarray:
        self.feeds["input_ids"] = np.array([ids], np.int64)
        out = await self.run(self.feeds)
        self._release(keep=("encoder_hidden_states",))
        for p, pr in self.past_names:
            self.feeds[p] = out[pr]
        self.feeds["use_cache_branch"] = np.array([True])
        return self.last_logits(out)

    def _release(self, keep=()) -> None:
        for k, v in self.feeds.items():
            if k not in keep and not isinstance(v, np.ndarray):
                self.backend.release(v)

    def close(self) -> None:
        self._release()
        self.feeds = {}


class WhisperModel:
    """Encoder + merged decoder sessions; ``generate(features)`` transcribes one 30-second window."""

    def __init__(self, encoder, decoder, config: dict, generation_config: dict, preprocessor_config: dict | None = None,
                 *, dtypes: dict | None = None, device: str | None = None, warnings=(), files=()):
        self.encoder = encoder
        self.decoder = decoder
        self.config = dict(config)
        self.preprocessor_config = dict(preprocessor_config or {})
        self.dtypes = dict(dtypes or {})
        self.device = device
        self.warnings = list(warnings)
        self.files = list(files)
        self.last_stats: dict = {}
        #: the load's ``timings`` (``load_whisper`` sets them; a device-lost fallback adds ``device_lost``)
        self.load_timings: dict = {}
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
        gc = dict(generation_config or {})
        self.start_id = int(gc.get("decoder_start_token_id", self.config.get("decoder_start_token_id", 50257)))
        eos = gc.get("eos_token_id", self.config.get("eos_token_id", 50256))
        self.eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos])}
        self.no_timestamps_id = gc.get("no_timestamps_token_id")
        self.forced_decoder_ids = gc.get("forced_decoder_ids") or []
        self.vocab_size = int(self.config.get("vocab_size") or 51864)
        self.max_target_positions = int(self.config.get("max_target_positions") or 448)
        suppress = [int(t) for t in gc.get("suppress_tokens") or []]
        if self.no_timestamps_id is not None:  # no-timestamp mode: the timestamps and the marker itself
            suppress += range(int(self.no_timestamps_id), self.vocab_size)
        #: greedy decoding with Whisper's suppressions (the decoding controls of ``generation_config.json``)
        self.generation_config = GenerationConfig(
            max_new_tokens=None, eos_token_id=sorted(self.eos_ids), suppress_tokens=suppress,
            begin_suppress_tokens=[int(t) for t in gc.get("begin_suppress_tokens") or []])

    def prompt_ids(self) -> list[int]:
        ids = [self.start_id]
        for pos, tok in sorted(self.forced_decoder_ids):
            if pos == len(ids) and tok is not None:
                ids.append(int(tok))
        if self.no_timestamps_id is not None and int(self.no_timestamps_id) not in ids:
            ids.append(int(self.no_timestamps_id))
        return ids

    async def encode(self, features: np.ndarray):
        """Encoder states for features [batch, n_mels, 3000] (a backend tensor: it stays in JS / on device)."""
        out = await self.encoder.run({"input_features": np.ascontiguousarray(features, np.float32)}, fetch=[])
        return out["last_hidden_state"]

    async def generate(self, features: np.ndarray, *, max_new_tokens: int | None = None) -> list[int]:
        """Greedy token ids (prompt excluded, EOS excluded) for one 30-second window of features.
        ``last_stats``: encoder and decoder seconds, new tokens, tokens per second."""
        if features.ndim == 2:
            features = features[None]
        config = self.generation_config.update(max_new_tokens=max_new_tokens)
        t0 = time.perf_counter()
        hidden = await self.encode(features)
        t1 = time.perf_counter()
        prompt = self.prompt_ids()
        step = WhisperDecoderStep(self.decoder, hidden, self.n_layers, self.heads, self.head_dim)
        stats: dict = {}
        ids = await generate_tokens(step, prompt, config, max_positions=self.max_target_positions, stats=stats)
        out = ids[0, len(prompt):].tolist()
        if stats["stop_reason"] == "eos":
            out = out[:-1]
        t2 = time.perf_counter()
        self.last_stats = {"encoder_s": t1 - t0, "decoder_s": t2 - t1, "new_tokens": len(out),
                           "tokens_per_s": len(out) / (t2 - t1) if t2 > t1 else None}
        return out

    def dispose(self) -> None:
        for s in (self.encoder, self.decoder):
            if s is not None:
                s.dispose()
        self.encoder = self.decoder = None


async def load_whisper(model, *, dtype="auto", device="auto", revision="main", host=None, progress_callback=None,
                       strict=False, max_bytes=None, execution="auto", max_memory=None):
    """``(WhisperModel, repo)``: open ``model`` (a repo id or an open ``ModelRepo``) and load both modules with
    ``dtype`` (a name, ``"auto"`` or ``{"encoder_model": ..., "decoder_model_merged": ...}``) on ``device``, in
    the execution forms ``execution`` / ``max_memory`` choose (``runtime.forms``)."""
    form_request = check_form_args(execution, max_memory)
    repo = model if isinstance(model, ModelRepo) else await ModelRepo.open(
        model, revision=revision, host=host, progress_callback=progress_callback)
    have = repo.manifest.modules
    missing = [m for m in MODULES if m not in have]
    if missing:
        raise ValueError(f"{repo.model} is not a Whisper repo: it lacks module(s) {', '.join(missing)} "
                         f"(its modules: {', '.join(have)}); speech recognition needs {', '.join(MODULES)}")
    config = await repo.json("config.json")
    gen = await repo.optional_json("generation_config.json") or {}
    pre = await repo.optional_json("preprocessor_config.json") or {}
    n_layers = int(config.get("decoder_layers") or 0)
    keep = [f"present.{i}.{p}.{kv}" for i in range(n_layers) for p in ("decoder", "encoder") for kv in ("key", "value")]
    kw = {"dtype": dtype, "device": device, "strict": strict, "progress_callback": progress_callback,
          "keep_on_device": {ENCODER: ["last_hidden_state"], DECODER: keep}, "execution": form_request}
    if max_bytes is not None:
        kw["max_bytes"] = max_bytes
    loaded = await load_sessions(repo, list(MODULES), **kw)
    wm = WhisperModel(loaded.sessions[ENCODER], loaded.sessions[DECODER], config, gen, pre,
                      dtypes=loaded.dtypes, device=loaded.device, warnings=loaded.warnings, files=loaded.files)
    wm.load_timings = dict(loaded.timings)
    if loaded.recovery is not None:  # a fallback (lost WebGPU device) updates device / load_timings / warnings
        loaded.recovery.owners.append(wm)
    return wm, repo
