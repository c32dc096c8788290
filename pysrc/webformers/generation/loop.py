"""The generation loop, shared by every model: process the logits, choose a token, emit it, stop?, step.

A model takes part through a ``DecoderStep``: ``await step(ids)`` feeds the next tokens (the prompt on the
first call, then one token per call) and returns the next-token logits ``[1, vocab]`` (float32), keeping
its KV cache between calls. The causal LM (``webformers.text.causal_lm``) and the Whisper decoder
(``webformers.speech.whisper``) each implement one. ``generate_tokens(step, prompt, config)`` does the rest:
the token budget, the logits processors, the stopping criteria, feeding the streamers, and the run
statistics.
"""
from __future__ import annotations

import asyncio
import time

import numpy as np

from ..runtime.backend import run_with_state
from .logits_process import build_logits_processor, greedy_next_token, sample_next_token
from .stopping import CancelCriteria, stopping_criteria
from .streamers import StreamerList

__all__ = ["DecoderStep", "ContextLengthError", "generate_tokens"]


class ContextLengthError(ValueError):
    """The prompt does not fit in the model's context window."""


class DecoderStep:
    """One model's part of ``generate_tokens`` (subclasses implement ``__call__``).

    ``await step(ids) -> logits [1, vocab] float32``: run the model over ``ids``, the tokens after those
    fed so far, and keep what the next call needs. ``close()`` is called when generation ends normally,
    ``abort()`` when it fails (free everything). ``run(feeds)`` (or ``run_state``, the KV outputs kept as one
    backend state) is the one timed session run: it fetches only ``logits`` (the KV outputs stay backend
    tensors) and asks for the last position's logits when the session has a ``num_logits_to_keep`` input. ``run_ms`` lists the run times (the first is the prefill);
    ``reused_tokens`` counts prompt tokens a kept cache already held.
    """

    reused_tokens = 0

    def __init__(self, session):
        self.session = session
        self.run_ms: list[float] = []
        self._keep_last = "num_logits_to_keep" in session.input_names

    async def __call__(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(ids) -> logits")

    async def run(self, feeds: dict) -> dict:
        if self._keep_last:
            feeds["num_logits_to_keep"] = np.array(1, dtype=np.int64)
        t0 = time.perf_counter()
        out = await self.session.run(feeds, fetch=["logits"])
        self.run_ms.append((time.perf_counter() - t0) * 1000.0)
        return out

    async def run_state(self, feeds: dict, state, pairs) -> tuple[dict, object]:
        """``run`` through ``session.run_state`` (``runtime.backend.run_with_state``): (outputs, the new state
        of ``pairs``' outputs)."""
        if self._keep_last:
            feeds["num_logits_to_keep"] = np.array(1, dtype=np.int64)
        t0 = time.perf_counter()
        out = await run_with_state(self.session, feeds, state, pairs, fetch=["logits"])
        self.run_ms.append((time.perf_counter() - t0) * 1000.0)
        return out

    @staticmethod
    def last_logits(out: dict) -> np.ndarray:
        """The last position's logits [1, vocab] (float32) of a run's outputs."""
        logits = np.asarray(out["logits"])
        if logits.ndim == 3:
            logits = logits[:, -1, :]
        elif logits.ndim != 2:
            raise ValueError(f"unexpected logits shape {logits.shape}; expected [batch, seq, vocab]")
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        """Generation ended (finished, stopped or cancelled)."""

    def abort(self) -> None:
        """Generation failed: free what the step holds."""
        self.close()


async def _decode(step, ids, n_prompt, logits, processors, choose, streamer, stopping, marks) -> tuple[int, str]:
    """The loop over a prefilled ``step``: returns (sequence length, stop reason)."""
    n = n_prompt
    while True:
        token = choose(processors(ids[:, :n], logits))
        ids[0, n] = token
        n += 1
        marks.append(time.perf_counter())
        streamer.put(ids[0, n - 1:n])
        await asyncio.sleep(0)  # let the event loop stream the text and deliver a cancel
        reason = stopping(token, n - n_prompt)
        if reason is not None:
            return n, reason
        logits = await step([token])


def _chooser(config):
    if not config.do_sample:
        return lambda scores: int(greedy_next_token(scores)[0])
    rng = np.random.default_rng(config.seed)
    return lambda scores: int(sample_next_token(scores, rng)[0])


def _token_budget(n_prompt: int, max_new_tokens: int | None, max_positions: int | None) -> tuple[int, bool]:
    """(how many tokens may be generated, whether the context cut ``max_new_tokens`` down)."""
    if max_positions is not None and n_prompt >= max_positions:
        raise ContextLengthError(
            f"the prompt has {n_prompt} tokens but the model's context (max_position_embeddings) is "
            f"{max_positions}: it must be at most {max_positions - 1} tokens to leave room for one new token; "
            f"shorten the prompt")
    room = None if max_positions is None else max_positions - n_prompt
    if max_new_tokens is None:
        if room is None:
            raise ValueError("max_new_tokens=None needs a model with max_position_embeddings in config.json; "
                             "pass max_new_tokens")
        return room, False
    if room is not None and max_new_tokens > room:
        return room, True
    return max_new_tokens, False


async def generate_tokens(step: DecoderStep, prompt: list[int], config, *, streamer=None, cancel=None,
                          tokenizer=None, max_positions: int | None = None, stats: dict | None = None) -> np.ndarray:
    """Generate after ``prompt`` with ``step``; returns the int64 array [1, prompt + new].

    ``config`` is a ``GenerationConfig``; ``streamer`` (``put`` / ``end``) gets the prompt, then each new
    token, then ``end()``; ``cancel`` (``is_set()`` or a callable) is checked after every token and before
    the first run; ``tokenizer`` is needed for stop strings; ``max_positions`` is the model's context
    length. ``stats`` (a dict) is filled with the prompt size, the run times (prefill, per step), the
    Python time per step outside the runs, throughput and ``stop_reason``, also when generation fails.
    """
    t_start = time.perf_counter()
    max_new, capped = _token_budget(len(prompt), config.max_new_tokens, max_positions)
    canceller = CancelCriteria(cancel) if cancel is not None else None
    stopping = stopping_criteria(config, max_new, tokenizer=tokenizer, cancel=canceller, start=t_start)
    processors = build_logits_processor(config, len(prompt))
    choose = _chooser(config)
    streamer = streamer if streamer is not None else StreamerList()
    stats = {} if stats is None else stats
    stats.update({"prompt_tokens": len(prompt), "reused_tokens": 0, "new_tokens": 0, "prefill_ms": None,
                  "ttft_ms": None, "max_new_tokens_capped_to_context": capped})

    ids = np.zeros((1, len(prompt) + max_new), dtype=np.int64)
    ids[0, :len(prompt)] = prompt
    n, reason, marks = len(prompt), None, []
    streamer.put(ids[:, :n])
    try:
        if canceller is not None and canceller.is_set():
            reason = canceller.reason
        elif max_new == 0:
            reason = "max_new_tokens"
        else:
            logits = await step(list(prompt))
            n, reason = await _decode(step, ids, len(prompt), logits, processors, choose, streamer, stopping, marks)
        step.close()
    except BaseException:
        step.abort()
        raise
    finally:
        streamer.end()
        _fill_stats(stats, step, reason, t_start, marks)
    return ids[:, :n].copy()


def _fill_stats(stats: dict, step: DecoderStep, reason, t_start: float, marks: list[float]) -> None:
    """``marks`` are the times each new token was chosen: the time between two marks is one step (its run and
    the Python around it), the last step ends now."""
    t_end = time.perf_counter()
    n_new = len(marks)
    runs = step.run_ms
    decode_runs = runs[1:]
    ends = marks[1:] + [t_end]
    overhead = [(b - a) * 1000.0 - (decode_runs[i] if i < len(decode_runs) else 0.0)
                for i, (a, b) in enumerate(zip(marks, ends))]
    total = (t_end - t_start) * 1000.0
    stats.update({
        "reused_tokens": step.reused_tokens,
        "new_tokens": n_new,
        "prefill_ms": runs[0] if runs else None,
        "ttft_ms": (marks[0] - t_start) * 1000.0 if marks else None,
        "stop_reason": reason,
        "total_ms": total,
        "step_run_ms": decode_runs,
        "step_overhead_ms": overhead,
        "step_run_ms_mean": float(np.mean(decode_runs)) if decode_runs else None,
        "step_overhead_ms_mean": float(np.mean(overhead)) if overhead else None,
        "tokens_per_s": (n_new / (total / 1000.0)) if total > 0 and n_new else 0.0,
        "decode_tokens_per_s": (len(decode_runs) / (sum(decode_runs) + sum(overhead[:len(decode_runs)])) * 1000.0)
        if decode_runs else None,
    })
