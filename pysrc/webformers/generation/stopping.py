"""When generation stops: the stopping criteria, and ``StopStrings``, the one stop-string matcher.

A criterion is a callable ``(token_id, n_generated) -> reason | None`` called after each new token;
``StoppingCriteriaList`` returns the first reason (``"eos"``, ``"stop_string"``, ``"max_time"``,
``"cancelled"``, ``"max_new_tokens"``). ``stopping_criteria(config, ...)`` builds the list ``generate``
uses. ``StopStrings`` finds stop strings in text: where generation stops (``StopStringCriteria``), what a
streamer may emit while a stop string could still be forming (``TextStreamer``), and what the pipeline
trims from its result.
"""
from __future__ import annotations

import time

from ..text.tokenizer.stream import TokenStreamDecoder

__all__ = [
    "StopStrings", "StoppingCriteria", "StoppingCriteriaList", "MaxNewTokensCriteria", "EosTokenCriteria",
    "StopStringCriteria", "MaxTimeCriteria", "CancelCriteria", "stopping_criteria",
]


class StopStrings:
    """A set of stop strings (None, one string or a list of them) and the questions asked about text."""

    def __init__(self, stop_strings=None):
        if stop_strings is None:
            self.strings: list[str] = []
        else:
            self.strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not all(isinstance(s, str) and s for s in self.strings):
            raise ValueError(f"stop strings must be non-empty strings, got {stop_strings!r}")
        #: the longest stop string's length: text further back cannot be part of a new match
        self.longest = max((len(s) for s in self.strings), default=0)

    def __bool__(self) -> bool:
        return bool(self.strings)

    def find(self, text: str, start: int = 0) -> int:
        """Index of the earliest stop string in ``text[start:]`` (as an index into ``text``), or -1."""
        found = [i for i in (text.find(s, start) for s in self.strings) if i >= 0]
        return min(found) if found else -1

    def trim(self, text: str) -> str:
        """``text`` cut before its first stop string."""
        i = self.find(text)
        return text if i < 0 else text[:i]

    def safe_prefix(self, text: str) -> tuple[int, bool]:
        """(how much of ``text`` can be emitted now, whether it holds a stop string): up to the first stop
        string when there is one, else all but a tail that could be the start of one."""
        i = self.find(text)
        if i >= 0:
            return i, True
        hold = 0
        for s in self.strings:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return len(text) - hold, False


class StoppingCriteria:
    reason = "stopped"

    def __call__(self, token_id: int, n_generated: int) -> str | None:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(token_id, n_generated)")


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
    """Stops once the generated text (decoded incrementally) contains one of ``stop_strings``."""

    reason = "stop_string"

    def __init__(self, tokenizer, stop_strings):
        self.stops = stop_strings if isinstance(stop_strings, StopStrings) else StopStrings(stop_strings)
        self._decoder = TokenStreamDecoder(tokenizer, skip_special_tokens=False)
        self.text = ""

    def __call__(self, token_id, n_generated):
        piece = self._decoder.put(token_id)
        if not piece:
            return None
        start = max(0, len(self.text) - self.stops.longest + 1)
        self.text += piece
        return self.reason if self.stops.find(self.text, start) >= 0 else None


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


def stopping_criteria(config, max_new_tokens: int, *, tokenizer=None, cancel=None,
                      start: float | None = None) -> StoppingCriteriaList:
    """The criteria of a ``GenerationConfig`` (eos, stop strings, max_time), then ``cancel`` and the
    ``max_new_tokens`` budget. Stop strings need the ``tokenizer`` to see the text."""
    criteria = StoppingCriteriaList()
    if config.eos_token_ids:
        criteria.append(EosTokenCriteria(config.eos_token_ids))
    if config.stop_string_list:
        if tokenizer is None:
            raise ValueError("stop_strings need a tokenizer: pass tokenizer=... to generate")
        criteria.append(StopStringCriteria(tokenizer, config.stop_string_list))
    if config.max_time is not None:
        criteria.append(MaxTimeCriteria(config.max_time, start))
    if cancel is not None:
        criteria.append(cancel if isinstance(cancel, CancelCriteria) else CancelCriteria(cancel))
    criteria.append(MaxNewTokensCriteria(max_new_tokens))
    return criteria
