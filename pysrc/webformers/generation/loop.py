"""The generation loop (``GenerationMixin.generate``) and the stopping criteria.

The loop runs a decoder ONNX session with the transformers.js / optimum I/O: inputs ``input_ids``,
``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/.value`` ([batch, kv_heads, seq,
head_dim]) and optionally ``num_logits_to_keep``; outputs ``logits`` and ``present.{i}.key/.value``.

- prefill: the whole prompt in one run (``num_logits_to_keep=1``), then one run per new token;
- only ``logits`` is fetched to numpy; the ``present.*`` outputs stay backend tensors (JS / GPU in
  the browser) and are fed back as ``past_key_values.*``; the previous step's are released;
- the last sequence and its cache stay on the model, so a following prompt that starts with that
  sequence (the next chat turn) only prefills its new tokens;
- ``last_generation_stats`` holds prefill / per-step run times and the Python overhead per step.
"""
from __future__ import annotations

import asyncio
import re
import time

import numpy as np

from .config import GenerationConfig
from .logits_process import build_logits_processor, greedy_next_token, sample_next_token
from .streamers import TextStreamer, make_stream_decoder

__all__ = [
    "StoppingCriteria", "StoppingCriteriaList", "MaxNewTokensCriteria", "EosTokenCriteria",
    "StopStringCriteria", "MaxTimeCriteria", "CancelCriteria", "GenerationMixin", "trim_stop_strings",
    "ContextLengthError",
]


class ContextLengthError(ValueError):
    """The prompt does not fit in the model's context window."""


# ---------------------------------------------------------------------------------------------
# stopping criteria: callables (new_token_id, n_generated) -> reason string or None
# ---------------------------------------------------------------------------------------------
class StoppingCriteria:
    reason = "stopped"

    def __call__(self, token_id: int, n_generated: int) -> str | None:  # pragma: no cover
        raise NotImplementedError


class MaxNewTokensCriteria(StoppingCriteria):
    reason = "max_new_tokens"

    def __init__(self, max_new_tokens: int):
        self.max_new_tokens = int(max_new_tokens)

    def __call__(self, token_id, n_generated):
        return self.reason if n_generated >= self.max_new_tokens else None


class EosTokenCriteria(StoppingCriteria):
    reason = "eos"

    def __init__(self, eos_token_ids):
        self.eos_token_ids = frozenset(int(e) for e in eos_token_ids)

    def __call__(self, token_id, n_generated):
        return self.reason if int(token_id) in self.eos_token_ids else None


class StopStringCriteria(StoppingCriteria):
    """Stops once the generated text contains one of ``stop_strings`` (decoded incrementally)."""

    reason = "stop_string"

    def __init__(self, tokenizer, stop_strings):
        self.stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        self._decoder = make_stream_decoder(tokenizer, skip_special_tokens=False)
        self._window = max(len(s) for s in self.stop_strings)
        self.text = ""

    def __call__(self, token_id, n_generated):
        piece = self._decoder.step(token_id)
        if not piece:
            return None
        start = max(0, len(self.text) - self._window + 1)
        self.text += piece
        tail = self.text[start:]
        return self.reason if any(s in tail for s in self.stop_strings) else None


class MaxTimeCriteria(StoppingCriteria):
    reason = "max_time"

    def __init__(self, max_time: float, start: float | None = None):
        self.max_time = float(max_time)
        self.start = time.perf_counter() if start is None else start

    def __call__(self, token_id, n_generated):
        return self.reason if time.perf_counter() - self.start > self.max_time else None


class CancelCriteria(StoppingCriteria):
    """``cancel`` is an object with ``is_set()`` (e.g. ``asyncio.Event``) or a callable -> bool."""

    reason = "cancelled"

    def __init__(self, cancel):
        if callable(getattr(cancel, "is_set", None)):
            self._check = cancel.is_set
        elif callable(cancel):
            self._check = cancel
        else:
            raise TypeError(f"cancel must have an is_set() method (like asyncio.Event) or be a callable "
                            f"returning True to stop; got {type(cancel).__name__}")

    def is_set(self) -> bool:
        return bool(self._check())

    def __call__(self, token_id, n_generated):
        return self.reason if self.is_set() else None


class StoppingCriteriaList(list):
    def __call__(self, token_id, n_generated) -> str | None:
        for c in self:
            r = c(token_id, n_generated)
            if r:
                return r
        return None


def trim_stop_strings(text: str, stop_strings) -> str:
    """``text`` cut before the first occurrence of any stop string."""
    if not stop_strings:
        return text
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
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


class GenerationMixin:
    """The decoding loop. The class using it provides:

    ``session`` (a backend Session), ``backend`` (the backend module, for ``release``),
    ``generation_config`` (``GenerationConfig``), ``max_position_embeddings`` (int or None),
    ``num_kv_heads``, ``head_dim``, ``kv_dtype`` (numpy dtype), ``tokenizer`` (or None).
    """

    last_generation_stats: dict | None = None
    _kv_ids: list[int] | None = None
    _kv: dict | None = None

    # -- cache bookkeeping ----------------------------------------------------------------------
    def _kv_layout(self):
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

    def _empty_past(self, pairs):
        shape = (1, int(self.num_kv_heads), 0, int(self.head_dim))
        return {p: np.zeros(shape, dtype=self.kv_dtype) for p, _ in pairs}

    def _release(self, tensors) -> None:
        if tensors:
            for v in tensors.values():
                self.backend.release(v)

    def clear_cache(self) -> None:
        """Drop the KV cache kept from the last generation (frees its backend tensors)."""
        self._release(self._kv)
        self._kv = None
        self._kv_ids = None

    async def _run(self, ids_chunk, past_len, past_feeds, stats_runs):
        """One model run over ``ids_chunk`` (tokens after ``past_len`` cached ones).
        Returns (last-position logits [1, V] float32, present tensors by past name)."""
        s = self.session
        n = len(ids_chunk)
        names = set(s.input_names)
        feeds = {"input_ids": np.asarray([ids_chunk], dtype=np.int64)}
        if "attention_mask" in names:
            feeds["attention_mask"] = np.ones((1, past_len + n), dtype=np.int64)
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
        if "num_logits_to_keep" in names:
            feeds["num_logits_to_keep"] = self._num_logits_to_keep_value()
        feeds.update(past_feeds)
        t0 = time.perf_counter()
        out = await s.run(feeds, fetch=["logits"])
        stats_runs.append((time.perf_counter() - t0) * 1000.0)
        logits = np.asarray(out["logits"])
        if logits.ndim == 3:
            logits = logits[:, -1, :]
        elif logits.ndim != 2:
            raise ValueError(f"unexpected logits shape {logits.shape}; expected [batch, seq, vocab]")
        presents = {p: out[pr] for p, pr in self._pairs}
        return logits.astype(np.float32, copy=False), presents

    def _num_logits_to_keep_value(self):
        shape = getattr(self, "num_logits_to_keep_shape", ())
        return np.ones(shape, dtype=np.int64) if shape else np.array(1, dtype=np.int64)

    # -- public ---------------------------------------------------------------------------------
    async def generate(self, input_ids, generation_config: GenerationConfig | None = None, *,
                       streamer=None, callback_function=None, cancel=None, tokenizer=None,
                       use_cache: bool = True, reuse_cache: bool = True, **kwargs) -> np.ndarray:
        """Generate from ``input_ids`` (a list of ids or a [1, n] array); returns the int64 array
        [1, prompt + new] (prompt included, like transformers).

        ``kwargs`` are ``GenerationConfig`` fields (unknown names raise ``TypeError``).
        ``streamer`` gets ``put(ids)`` / ``end()``; ``callback_function(text)`` receives each new piece
        of text; ``cancel`` (``is_set()`` or a callable) is checked before every model run;
        ``tokenizer`` is needed for stop strings and ``callback_function`` (defaults to
        ``self.tokenizer``). ``use_cache=False`` recomputes the whole sequence every step (slow; for
        checking); ``reuse_cache=False`` ignores the cache kept from the previous call.
        """
        t_start = time.perf_counter()
        base = generation_config if generation_config is not None else self.generation_config
        if not isinstance(base, GenerationConfig):
            raise TypeError("generation_config must be a GenerationConfig (kwargs carry single controls)")
        cfg = base.update(**kwargs)
        prompt = _as_prompt(input_ids)
        tokenizer = tokenizer if tokenizer is not None else getattr(self, "tokenizer", None)

        max_pos = self.max_position_embeddings
        if max_pos is not None and len(prompt) >= max_pos:
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens but the model's context "
                f"(max_position_embeddings) is {max_pos}: it must be at most {max_pos - 1} tokens to "
                f"leave room for one new token; shorten the prompt")
        room = (max_pos - len(prompt)) if max_pos is not None else None
        max_new = cfg.max_new_tokens
        if max_new is None:
            if room is None:
                raise ValueError("max_new_tokens=None needs a model with max_position_embeddings in "
                                 "config.json; pass max_new_tokens")
            max_new = room
        capped = room is not None and max_new > room
        if capped:
            max_new = room

        if cfg.stop_string_list and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer: pass tokenizer=... to generate")
        if callback_function is not None:
            if tokenizer is None:
                raise ValueError("callback_function needs a tokenizer: pass tokenizer=... to generate")
            if not callable(callback_function):
                raise TypeError("callback_function must be callable (it receives each new text piece)")
        streamers = []
        if streamer is not None:
            if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
                raise TypeError("streamer must have put(ids) and end() methods (see TextStreamer)")
            streamers.append(streamer)
        if callback_function is not None:
            streamers.append(TextStreamer(tokenizer, skip_prompt=True, callback_function=callback_function))
        for st in streamers:
            if cfg.stop_string_list and callable(getattr(st, "set_stop_strings", None)):
                st.set_stop_strings(cfg.stop_string_list)

        procs = build_logits_processor(cfg, len(prompt))
        rng = np.random.default_rng(cfg.seed) if cfg.do_sample else None
        criteria = StoppingCriteriaList()
        canceller = CancelCriteria(cancel) if cancel is not None else None
        if cfg.eos_token_ids:
            criteria.append(EosTokenCriteria(cfg.eos_token_ids))
        if cfg.stop_string_list:
            criteria.append(StopStringCriteria(tokenizer, cfg.stop_string_list))
        if cfg.max_time is not None:
            criteria.append(MaxTimeCriteria(cfg.max_time, t_start))
        if canceller is not None:
            criteria.append(canceller)
        criteria.append(MaxNewTokensCriteria(max_new))

        self._pairs = self._kv_layout()
        seq = np.zeros((1, len(prompt) + max_new), dtype=np.int64)
        seq[0, : len(prompt)] = prompt
        length = len(prompt)
        runs_ms: list[float] = []
        overhead_ms: list[float] = []
        stats = {
            "prompt_tokens": len(prompt), "reused_tokens": 0, "new_tokens": 0, "prefill_ms": None,
            "ttft_ms": None, "use_cache": use_cache, "device": getattr(self.session, "device", None),
            "max_new_tokens_capped_to_context": capped,
        }
        self.last_generation_stats = stats

        for st in streamers:
            st.put(np.asarray(prompt, dtype=np.int64)[None])

        stop_reason = None
        if canceller is not None and canceller.is_set():
            stop_reason = "cancelled"
        past = None
        try:
            if stop_reason is None:
                # ---- prefill (reusing the kept cache when the prompt extends its sequence)
                if use_cache:
                    reuse = (reuse_cache and self._kv is not None and self._kv_ids is not None
                             and len(self._kv_ids) < len(prompt) and prompt[: len(self._kv_ids)] == self._kv_ids)
                    if reuse:
                        past_len, past = len(self._kv_ids), self._kv
                    else:
                        self._release(self._kv)
                        past_len, past = 0, self._empty_past(self._pairs)
                    self._kv, self._kv_ids = None, None
                    stats["reused_tokens"] = past_len
                    logits, present = await self._run(prompt[past_len:], past_len, past, runs_ms)
                    if past_len:
                        self._release(past)
                    past = present
                else:
                    logits, present = await self._run(prompt, 0, self._empty_past(self._pairs), runs_ms)
                    self._release(present)
                stats["prefill_ms"] = runs_ms[0]
                # ---- decode
                while True:
                    t0 = time.perf_counter()
                    scores = procs(seq[:, :length], logits) if procs else logits
                    nxt = int((sample_next_token(scores, rng) if cfg.do_sample else greedy_next_token(scores))[0])
                    seq[0, length] = nxt
                    length += 1
                    n_gen = length - len(prompt)
                    if n_gen == 1:
                        stats["ttft_ms"] = (time.perf_counter() - t_start) * 1000.0
                    for st in streamers:
                        st.put(np.array([nxt], dtype=np.int64))
                    stop_reason = criteria(nxt, n_gen)
                    if stop_reason is None and max_pos is not None and length >= max_pos:
                        stop_reason = "context_full"
                    await asyncio.sleep(0)  # let the event loop deliver a cancel / stream the text
                    if stop_reason is None and canceller is not None and canceller.is_set():
                        stop_reason = "cancelled"
                    if stop_reason is not None:
                        overhead_ms.append((time.perf_counter() - t0) * 1000.0)
                        break
                    if use_cache:
                        t_run0 = len(runs_ms)
                        logits, present = await self._run([nxt], length - 1, past, runs_ms)
                        self._release(past)
                        past = present
                    else:
                        t_run0 = len(runs_ms)
                        logits, present = await self._run(seq[0, :length].tolist(), 0,
                                                          self._empty_past(self._pairs), runs_ms)
                        self._release(present)
                    overhead_ms.append((time.perf_counter() - t0) * 1000.0 - runs_ms[t_run0])
            if use_cache and past is not None:
                # keep the cache: it holds every token fed so far (all but the last generated one)
                self._kv, self._kv_ids = past, seq[0, : length - 1].tolist()
                past = None
        except BaseException:
            self._release(past)
            self.clear_cache()
            raise
        finally:
            for st in streamers:
                st.end()
            total = (time.perf_counter() - t_start) * 1000.0
            n_new = length - len(prompt)
            decode_runs = runs_ms[1:]
            stats.update({
                "new_tokens": n_new,
                "stop_reason": stop_reason,
                "total_ms": total,
                "step_run_ms": decode_runs,
                "step_overhead_ms": overhead_ms,
                "step_run_ms_mean": float(np.mean(decode_runs)) if decode_runs else None,
                "step_overhead_ms_mean": float(np.mean(overhead_ms)) if overhead_ms else None,
                "tokens_per_s": (n_new / (total / 1000.0)) if total > 0 and n_new else 0.0,
                "decode_tokens_per_s": (len(decode_runs) / (sum(decode_runs) + sum(overhead_ms[:len(decode_runs)])) * 1000.0)
                if decode_runs else None,
            })
        return seq[:, :length].copy()
