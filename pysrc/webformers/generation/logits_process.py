"""Logits processors and warpers in numpy.

Every processor is a callable ``(input_ids, scores) -> scores``: ``input_ids`` is the int64 array
``[batch, seq]`` of all tokens so far (prompt + generated), ``scores`` the float array ``[batch, vocab]``
of next-token logits. Processors return a new array (inputs are never modified in place); banned
tokens get ``-inf``. ``LogitsProcessorList`` chains them; ``build_logits_processor`` turns a
``GenerationConfig`` into the list (processors first, then, when sampling, the warpers, in the order
transformers uses).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "LogitsProcessor", "LogitsProcessorList", "TemperatureLogitsWarper", "TopKLogitsWarper",
    "TopPLogitsWarper", "MinPLogitsWarper", "RepetitionPenaltyLogitsProcessor",
    "NoRepeatNGramLogitsProcessor", "NoBadWordsLogitsProcessor", "SuppressTokensLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "build_logits_processor", "softmax", "sample_next_token",
    "greedy_next_token",
]

NEG_INF = -np.inf


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64 (``-inf`` entries get probability 0)."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.max(s, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.exp(s - m)
        return e / np.sum(e, axis=-1, keepdims=True)


def _2d(a, name):
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be [batch, n] (or 1-D for batch 1), got shape {a.shape}")
    return a


class LogitsProcessor:
    """Base class: subclasses implement ``_apply(input_ids [B, L], scores [B, V]) -> scores``."""

    def __call__(self, input_ids, scores):
        ids = _2d(input_ids, "input_ids").astype(np.int64, copy=False)
        sc = np.asarray(scores)
        one_d = sc.ndim == 1
        sc = _2d(sc, "scores")
        if not np.issubdtype(sc.dtype, np.floating):
            sc = sc.astype(np.float32)
        out = self._apply(ids, sc.copy())
        return out[0] if one_d else out

    def _apply(self, input_ids, scores):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LogitsProcessorList(list):
    """A list of processors applied in order."""

    def __call__(self, input_ids, scores):
        for p in self:
            scores = p(input_ids, scores)
        return scores


class TemperatureLogitsWarper(LogitsProcessor):
    """``scores / temperature``: < 1 sharpens the distribution, > 1 flattens it."""

    def __init__(self, temperature: float):
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def _apply(self, input_ids, scores):
        return scores / np.asarray(self.temperature, dtype=scores.dtype)


class TopKLogitsWarper(LogitsProcessor):
    """Keep the ``top_k`` highest scores (ties with the k-th score are kept), the rest become -inf."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        if int(top_k) <= 0:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.top_k = max(int(top_k), int(min_tokens_to_keep))

    def _apply(self, input_ids, scores):
        k = min(self.top_k, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
        return np.where(scores < kth, NEG_INF, scores).astype(scores.dtype, copy=False)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus sampling: keep the smallest set of most-likely tokens whose probability sums to >= top_p."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        top_p = float(top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.top_p = top_p
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def _apply(self, input_ids, scores):
        probs = softmax(scores)
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        mass_before = np.cumsum(sorted_p, axis=-1) - sorted_p
        keep_sorted = mass_before < self.top_p
        keep_sorted[:, : self.min_tokens_to_keep] = True
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        return np.where(keep, scores, NEG_INF).astype(scores.dtype, copy=False)


class MinPLogitsWarper(LogitsProcessor):
    """Drop tokens whose probability is below ``min_p`` times the top token's probability."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        min_p = float(min_p)
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
        self.min_p = min_p
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def _apply(self, input_ids, scores):
        probs = softmax(scores)
        threshold = self.min_p * probs.max(axis=-1, keepdims=True)
        keep = probs >= threshold
        if self.min_tokens_to_keep > 1:
            top = np.argsort(-probs, axis=-1, kind="stable")[:, : self.min_tokens_to_keep]
            np.put_along_axis(keep, top, True, axis=-1)
        return np.where(keep, scores, NEG_INF).astype(scores.dtype, copy=False)


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Penalise every token already in the sequence (prompt included), as in CTRL / transformers:
    a positive score is divided by ``penalty``, a negative one multiplied by it."""

    def __init__(self, penalty: float):
        if not float(penalty) > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty!r}")
        self.penalty = float(penalty)

    def _apply(self, input_ids, scores):
        for b in range(scores.shape[0]):
            seen = np.unique(input_ids[b])
            seen = seen[(seen >= 0) & (seen < scores.shape[-1])]
            s = scores[b, seen]
            scores[b, seen] = np.where(s < 0, s * self.penalty, s / self.penalty)
        return scores


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbid any token that would repeat an n-gram (of size ``ngram_size``) already in the sequence."""

    def __init__(self, ngram_size: int):
        if int(ngram_size) <= 0:
            raise ValueError(f"no_repeat_ngram_size must be a positive integer, got {ngram_size!r}")
        self.ngram_size = int(ngram_size)

    def banned_tokens(self, seq) -> set[int]:
        n = self.ngram_size
        seq = [int(t) for t in seq]
        if len(seq) + 1 < n:
            return set()
        prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        banned = set()
        for i in range(len(seq) - n + 1):
            if tuple(seq[i:i + n - 1]) == prefix:
                banned.add(seq[i + n - 1])
        return banned

    def _apply(self, input_ids, scores):
        for b in range(scores.shape[0]):
            banned = [t for t in self.banned_tokens(input_ids[b]) if 0 <= t < scores.shape[-1]]
            if banned:
                scores[b, banned] = NEG_INF
        return scores


class NoBadWordsLogitsProcessor(LogitsProcessor):
    """Never complete one of ``bad_words_ids``: a one-token entry is always banned; for a longer entry
    its last token is banned when the sequence ends with the entry's other tokens."""

    def __init__(self, bad_words_ids):
        seqs = [list(map(int, s)) for s in bad_words_ids]
        if not seqs or any(len(s) == 0 for s in seqs):
            raise ValueError("bad_words_ids must be a non-empty list of non-empty token id lists")
        self.single = sorted({s[0] for s in seqs if len(s) == 1})
        self.multi = [s for s in seqs if len(s) > 1]

    def _apply(self, input_ids, scores):
        vocab = scores.shape[-1]
        single = [t for t in self.single if 0 <= t < vocab]
        if single:
            scores[:, single] = NEG_INF
        for b in range(scores.shape[0]):
            row = input_ids[b]
            for s in self.multi:
                head = s[:-1]
                if len(row) >= len(head) and list(map(int, row[len(row) - len(head):])) == head:
                    if 0 <= s[-1] < vocab:
                        scores[b, s[-1]] = NEG_INF
        return scores


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Never generate the tokens in ``suppress_tokens`` (ids outside the vocabulary are ignored)."""

    def __init__(self, suppress_tokens):
        self.suppress_tokens = np.unique(np.asarray([int(t) for t in suppress_tokens], dtype=np.int64))

    def _apply(self, input_ids, scores):
        ids = self.suppress_tokens
        ids = ids[(ids >= 0) & (ids < scores.shape[-1])]
        if ids.size:
            scores[:, ids] = NEG_INF
        return scores


class SuppressTokensAtBeginLogitsProcessor(SuppressTokensLogitsProcessor):
    """Suppress ``begin_suppress_tokens`` for the first generated token only, i.e. while the sequence is
    ``begin_index`` tokens long (the prompt length); e.g. Whisper's blank and end-of-text at the start."""

    def __init__(self, begin_suppress_tokens, begin_index: int):
        super().__init__(begin_suppress_tokens)
        self.begin_index = int(begin_index)

    def _apply(self, input_ids, scores):
        if input_ids.shape[-1] != self.begin_index:
            return scores
        return super()._apply(input_ids, scores)


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """Forbid the eos tokens until ``min_new_tokens`` tokens have been generated after the prompt."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_id):
        self.prompt_length = int(prompt_length)
        self.min_new_tokens = int(min_new_tokens)
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        self.eos_token_ids = [int(e) for e in eos if e is not None]

    def _apply(self, input_ids, scores):
        generated = input_ids.shape[-1] - self.prompt_length
        if generated < self.min_new_tokens:
            ids = [t for t in self.eos_token_ids if 0 <= t < scores.shape[-1]]
            if ids:
                scores[:, ids] = NEG_INF
        return scores


def build_logits_processor(config, prompt_length: int) -> LogitsProcessorList:
    """The processors a ``GenerationConfig`` asks for (warpers only when ``do_sample``)."""
    procs = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.bad_words_ids:
        procs.append(NoBadWordsLogitsProcessor(config.bad_words_ids))
    if config.min_new_tokens and config.eos_token_ids:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens,
                                                       config.eos_token_ids))
    if config.suppress_tokens:
        procs.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
    if config.begin_suppress_tokens:
        procs.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, prompt_length))
    if config.do_sample:
        if config.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            procs.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            procs.append(TopPLogitsWarper(config.top_p))
        if config.min_p:
            procs.append(MinPLogitsWarper(config.min_p))
    return procs


def greedy_next_token(scores) -> np.ndarray:
    """argmax per row (the first index on ties)."""
    return np.argmax(_2d(scores, "scores"), axis=-1).astype(np.int64)


def sample_next_token(scores, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from ``softmax(scores)`` with ``rng`` (reproducible for a seeded generator)."""
    probs = softmax(_2d(scores, "scores"))
    if not np.all(np.isfinite(probs)):
        raise ValueError("every token was filtered out (all scores are -inf or NaN); loosen the "
                         "sampling controls (top_k, top_p, min_p, bad_words_ids, suppress_tokens)")
    cum = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[0]) * cum[:, -1]
    out = np.array([np.searchsorted(cum[b], u[b], side="right") for b in range(probs.shape[0])],
                   dtype=np.int64)
    return np.minimum(out, probs.shape[-1] - 1)
