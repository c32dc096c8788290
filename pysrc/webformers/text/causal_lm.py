"""``CausalLM``: a decoder-only language model on one session, made by ``AutoModelForCausalLM.from_pretrained``
(``.auto``, re-exported here).

    tok = await AutoTokenizer.from_pretrained("webformers/tiny-random-llama", host=...)
    model = await AutoModelForCausalLM.from_pretrained("webformers/tiny-random-llama", dtype="q4")
    out = await model.generate(tok.encode("Once upon a time"), max_new_tokens=20)
    print(tok.decode(out[0].tolist()))
    print(model.last_generation_stats)

The same code runs in Pyodide (onnxruntime-web) and on CPython (onnxruntime). The session has the
transformers.js / optimum I/O: inputs ``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.{i}.key/.value`` ([batch, kv_heads, seq, head_dim]) and optionally
``num_logits_to_keep``; outputs ``logits`` and ``present.{i}.key/.value``.

- the prompt runs in one prefill, then one run per new token (``webformers.generation.loop``);
- only ``logits`` is fetched to numpy; the ``present.*`` outputs stay backend tensors (JS / GPU in the
  browser) and are fed back as ``past_key_values.*``; the previous step's are released;
- the last sequence and its cache stay on the model, so a following prompt that starts with that
  sequence (the next chat turn) only prefills its new tokens.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from ..generation.config import GenerationConfig
from ..generation.loop import DecoderStep, generate_tokens
from ..generation.streamers import generation_streamers
from ..runtime import backend as _backend
from .auto import AutoModelForCausalLM

__all__ = ["AutoModelForCausalLM", "CausalLM", "CausalLMStep"]

_ORT_TYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32}
_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def _as_prompt(input_ids) -> list[int]:
    if isinstance(input_ids, dict):  # apply_chat_template(..., return_dict=True)
        if "input_ids" not in input_ids:
            raise TypeError("a dict passed as input_ids must have an 'input_ids' entry")
        input_ids = input_ids["input_ids"]
    if hasattr(input_ids, "tolist"):
        input_ids = input_ids.tolist()
    if isinstance(input_ids, int):
        input_ids = [input_ids]
    if not isinstance(input_ids, (list, tuple)):
        raise TypeError(f"input_ids must be a list of token ids or a [1, n] array, got "
                        f"{type(input_ids).__name__}")
    if input_ids and isinstance(input_ids[0], (list, tuple)):
        if len(input_ids) != 1:
            raise ValueError(f"generate supports batch size 1 only (got a batch of {len(input_ids)}); "
                             "call it once per prompt")
        input_ids = input_ids[0]
    ids = [int(t) for t in input_ids]
    if not ids:
        raise ValueError("input_ids is empty: generation needs at least one prompt token")
    return ids


class CausalLM:
    """A decoder-only language model on one backend session.

    Attributes: ``config`` (config.json), ``generation_config``, ``session``, ``dtype``, ``device``,
    ``warnings`` (from loading), ``load_timings``, ``max_position_embeddings``, ``num_kv_heads``,
    ``head_dim``, ``kv_dtype``, ``tokenizer`` (or None), ``last_generation_stats``.
    """

    last_generation_stats: dict | None = None
    #: the cache kept from the last generation (a backend state of ``Session.run_state``) and the tokens it holds
    _kv = None
    _kv_ids: list[int] | None = None

    def __init__(self, session, config: dict, generation_config: GenerationConfig | None = None, *,
                 dtype: str | None = None, device: str | None = None, warnings=(), tokenizer=None,
                 backend=None):
        self.session = session
        self.config = dict(config)
        self.backend = backend if backend is not None else _backend
        self.dtype = dtype
        self.device = device if device is not None else getattr(session, "device", None)
        self.warnings = list(warnings)
        self.load_timings: dict = {}  # set by from_pretrained: see runtime.load.Loaded.timings
        self.tokenizer = tokenizer
        gc = generation_config if generation_config is not None else GenerationConfig()
        if gc.eos_token_id is None and self.config.get("eos_token_id") is not None:
            gc = gc.update(eos_token_id=self.config["eos_token_id"])
        self.generation_config = gc
        cfg = self.config
        text_cfg = cfg.get("text_config") or {}
        get = lambda k: cfg.get(k, text_cfg.get(k))  # noqa: E731
        self.max_position_embeddings = get("max_position_embeddings")
        n_heads = get("num_attention_heads")
        self.num_kv_heads = get("num_key_value_heads") or n_heads
        self.head_dim = get("head_dim") or (get("hidden_size") // n_heads if n_heads and get("hidden_size") else None)
        self._check_layout()
        self.kv_dtype = self._kv_dtype()

    def _check_layout(self):
        names = self.session.input_names
        if "input_ids" not in names:
            raise ValueError(f"the model has no 'input_ids' input (inputs: {', '.join(names)}); not a decoder")
        if "logits" not in self.session.output_names:
            raise ValueError(f"the model has no 'logits' output (outputs: {', '.join(self.session.output_names)})")
        has_past = any(n.startswith("past_key_values.") for n in names)
        if has_past and (not self.num_kv_heads or not self.head_dim):
            raise ValueError("config.json lacks num_attention_heads / hidden_size (or head_dim), needed to "
                             "build the empty KV cache")

    def _kv_dtype(self):
        """The KV cache element type, as the session declares it (fp16 files converted with
        ``keep_io_types`` keep a float32 cache; onnx-community's q4f16 files use float16)."""
        types = getattr(self.session, "input_types", None) or {}
        for n, t in types.items():
            if n.startswith("past_key_values."):
                if t not in _ORT_TYPES:
                    raise ValueError(f"unsupported KV cache type {t} for {n}; supported: {', '.join(_ORT_TYPES)}")
                return np.dtype(_ORT_TYPES[t])
        return np.dtype(np.float32)

    # -- the KV cache ---------------------------------------------------------------------------------------
    @functools.cached_property
    def kv_pairs(self) -> list[tuple[str, str]]:
        """(``past_key_values.{i}.key|value`` input, its ``present.*`` output) for every layer, in order."""
        names = self.session.input_names
        past = sorted((n for n in names if _PAST_RE.match(n)),
                      key=lambda n: (int(_PAST_RE.match(n).group(1)), _PAST_RE.match(n).group(2)))
        pairs = []
        for n in past:
            present = "present." + n[len("past_key_values."):]
            if present not in self.session.output_names:
                raise ValueError(f"the model has input {n!r} but no output {present!r}; outputs: "
                                 f"{', '.join(self.session.output_names)}")
            pairs.append((n, present))
        return pairs

    def empty_past(self) -> dict:
        """Empty ``past_key_values.*`` feeds ([1, kv_heads, 0, head_dim]) for a run without a cache."""
        shape = (1, int(self.num_kv_heads), 0, int(self.head_dim))
        return {p: np.zeros(shape, dtype=self.kv_dtype) for p, _ in self.kv_pairs}

    def release(self, tensors) -> None:
        """Free backend tensors: a state of ``Session.run_state``, a dict of tensors, or None."""
        if isinstance(tensors, dict):
            for v in tensors.values():
                self.backend.release(v)
        elif tensors is not None:
            self.backend.release(tensors)

    def clear_cache(self) -> None:
        """Drop the KV cache kept from the last generation (frees its backend tensors)."""
        self.release(self._kv)
        self._kv = None
        self._kv_ids = None

    def take_cache(self, prompt: list[int]) -> tuple[int, dict | None]:
        """Hand the kept cache over for ``prompt`` when the prompt extends its sequence: (tokens it holds,
        the cache); else free it: (0, None). The model keeps no cache afterwards."""
        kept, ids = self._kv, self._kv_ids
        self._kv = self._kv_ids = None
        values = kept.values() if isinstance(kept, dict) else [kept]
        lost = kept is not None and any(getattr(v, "lost", False) for v in values)  # crashed / device lost
        if kept is not None and ids is not None and not lost and len(ids) < len(prompt) and prompt[:len(ids)] == ids:
            return len(ids), kept
        self.release(kept)
        return 0, None

    def keep_cache(self, past, ids: list[int]) -> None:
        """Keep ``past`` (the cache of the tokens ``ids``) for the next generation."""
        self.clear_cache()
        self._kv, self._kv_ids = past, list(ids)

    # -- generation -----------------------------------------------------------------------------------------
    async def generate(self, input_ids, generation_config: GenerationConfig | None = None, *,
                       streamer=None, callback_function=None, cancel=None, tokenizer=None,
                       use_cache: bool = True, reuse_cache: bool = True, **kwargs) -> np.ndarray:
        """Generate from ``input_ids`` (a list of ids, a [1, n] array, or ``{"input_ids": ...}``); returns
        the int64 array [1, prompt + new] (prompt included, like transformers).

        ``kwargs`` are ``GenerationConfig`` fields (unknown names raise ``TypeError``).
        ``streamer`` gets ``put(ids)`` / ``end()``; ``callback_function(text)`` receives each new piece
        of text; ``cancel`` (``is_set()`` or a callable) is checked after every token and before the first
        run; ``tokenizer`` is needed for stop strings and ``callback_function`` (defaults to
        ``self.tokenizer``). ``use_cache=False`` recomputes the whole sequence every step (slow; for
        checking); ``reuse_cache=False`` ignores the cache kept from the previous call.
        ``last_generation_stats`` then holds the prompt size, reused tokens, prefill / per-step run times,
        the Python time per step and the stop reason.
        """
        base = generation_config if generation_config is not None else self.generation_config
        if not isinstance(base, GenerationConfig):
            raise TypeError("generation_config must be a GenerationConfig (kwargs carry single controls)")
        config = base.update(**kwargs)
        prompt = _as_prompt(input_ids)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        streamers = generation_streamers(streamer, callback_function, tokenizer, config.stop_string_list)
        stats = {"use_cache": use_cache, "device": getattr(self.session, "device", None)}
        self.last_generation_stats = stats
        step = CausalLMStep(self, use_cache=use_cache, reuse_cache=reuse_cache)
        return await generate_tokens(step, prompt, config, streamer=streamers, cancel=cancel, tokenizer=tokenizer,
                                     max_positions=self.max_position_embeddings, stats=stats)

    @property
    def num_layers(self) -> int:
        return sum(1 for n in self.session.input_names if n.startswith("past_key_values.") and n.endswith(".key"))

    def dispose(self) -> None:
        """Free the KV cache and the session."""
        self.clear_cache()
        self.session.dispose()

    def __repr__(self):
        return (f"CausalLM(model_type={self.config.get('model_type')!r}, dtype={self.dtype!r}, "
                f"device={self.device!r}, layers={self.num_layers})")


class CausalLMStep(DecoderStep):
    """A ``CausalLM``'s step: the prompt (after the kept cache's tokens, when reused), then one token per call,
    each run fed the previous run's ``present.*`` as ``past_key_values.*`` (``Session.run_state``: the cache
    stays in the backend as one state). With ``use_cache=False`` every call recomputes the whole sequence from
    an empty cache. At the end the cache goes back to the model."""

    def __init__(self, lm: CausalLM, *, use_cache: bool = True, reuse_cache: bool = True):
        super().__init__(lm.session)
        self.lm = lm
        self.use_cache = use_cache
        self.reuse_cache = reuse_cache
        self.fed: list[int] = []  # every token run so far: the cache holds them
        self.past = None  # the state holding the cache of ``fed`` (None: empty)

    async def __call__(self, ids: list[int]) -> np.ndarray:
        lm = self.lm
        if not self.use_cache:
            self.fed += ids
            logits, present = await self._forward(self.fed, 0, None)
            lm.release(present)
            return logits
        if not self.fed:  # the prompt
            if self.reuse_cache:
                past_len, self.past = lm.take_cache(ids)
            else:
                past_len, self.past = 0, None
                lm.clear_cache()
            self.reused_tokens = past_len
            self.fed, ids = list(ids[:past_len]), ids[past_len:]
        past, self.past = self.past, None  # consumed by the run
        logits, self.past = await self._forward(ids, len(self.fed), past)
        if isinstance(past, dict):  # the tensors of a session without run_state (backend.run_with_state)
            lm.release(past)
        self.fed += ids
        return logits

    async def _forward(self, ids: list[int], past_len: int, past):
        """One run over ``ids`` after ``past_len`` cached tokens (the state ``past``, None: empty): (logits
        [1, V], the state holding the cache of all of them)."""
        names = self.session.input_names
        n = len(ids)
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if "attention_mask" in names:
            feeds["attention_mask"] = np.ones((1, past_len + n), dtype=np.int64)
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
        if past is None:
            feeds.update(self.lm.empty_past())
        out, present = await self.run_state(feeds, past, self.lm.kv_pairs)
        return self.last_logits(out), present

    def close(self) -> None:
        """Keep the cache on the model: it holds every token fed (all but the last generated one)."""
        if self.use_cache and self.past is not None:
            self.lm.keep_cache(self.past, self.fed)
        self.past = None

    def abort(self) -> None:
        self.lm.release(self.past)
        self.past = None
        self.lm.clear_cache()
