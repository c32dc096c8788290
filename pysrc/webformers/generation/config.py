"""``GenerationConfig``: the decoding controls, read from ``generation_config.json`` and call kwargs."""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field

__all__ = ["GenerationConfig"]


@dataclass
class GenerationConfig:
    """Decoding controls (names and meanings follow Hugging Face transformers).

    ``GenerationConfig.from_dict(generation_config_json)`` keeps the keys it knows (unknown keys of a
    hub file, such as ``transformers_version``, are kept in ``extra`` and otherwise ignored);
    ``config.update(**kwargs)`` returns a copy with call kwargs applied and rejects unknown names.
    """

    max_new_tokens: int | None = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list | None = None
    suppress_tokens: list | None = None
    begin_suppress_tokens: list | None = None
    eos_token_id: int | list | None = None
    stop_strings: str | list | None = None
    seed: int | None = None
    max_time: float | None = None
    #: keys of a ``generation_config.json`` that webformers does not use (kept for round trips).
    extra: dict = field(default_factory=dict, repr=False)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def valid_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, d: dict | None) -> "GenerationConfig":
        """From a parsed ``generation_config.json``: known keys are used, others go to ``extra``.

        Hub files set ``top_k: 50`` etc. even for greedy models; like transformers, those only act when
        ``do_sample`` is true.
        """
        d = dict(d or {})
        names = set(cls.valid_names())
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        cfg = cls(**known, extra=extra)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, text: str) -> "GenerationConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"generation_config.json is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("generation_config.json must hold a JSON object")
        return cls.from_dict(d)

    def update(self, **kwargs) -> "GenerationConfig":
        """A copy with ``kwargs`` applied; an unknown name raises ``TypeError`` listing the valid ones."""
        valid = self.valid_names()
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            raise TypeError(
                f"unknown generation argument(s) {', '.join(map(repr, unknown))}; valid generation "
                f"arguments: {', '.join(valid)}")
        new = copy.deepcopy(self)
        for k, v in kwargs.items():
            setattr(new, k, v)
        new.validate()
        return new

    def to_dict(self) -> dict:
        d = {k: copy.deepcopy(getattr(self, k)) for k in self.valid_names()}
        return d

    # -- checks -------------------------------------------------------------------------------
    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        if e is None:
            return []
        if isinstance(e, (list, tuple)):
            return [int(x) for x in e]
        return [int(e)]

    @property
    def stop_string_list(self) -> list[str]:
        s = self.stop_strings
        if s is None:
            return []
        return [s] if isinstance(s, str) else list(s)

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f"generation argument {name}={getattr(self, name)!r} is invalid: {why}")

        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens < 0):
            bad("max_new_tokens", "must be an integer >= 0 (or None: until eos or the context is full)")
        if not _is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            bad("min_new_tokens", "must be an integer >= 0")
        if not isinstance(self.do_sample, bool):
            bad("do_sample", "must be True or False")
        if not _is_num(self.temperature) or (self.do_sample and self.temperature <= 0):
            bad("temperature", "must be a number > 0 when do_sample=True (do_sample=False is greedy)")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "must be an integer >= 0 (0 disables top-k)")
        if not _is_num(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1] (1 disables nucleus sampling)")
        if not _is_num(self.min_p) or not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1] (0 disables min-p)")
        if not _is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "must be a number > 0 (1 disables it)")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            bad("no_repeat_ngram_size", "must be an integer >= 0 (0 disables it)")
        if self.bad_words_ids is not None:
            ok = isinstance(self.bad_words_ids, (list, tuple)) and all(
                isinstance(seq, (list, tuple)) and len(seq) > 0 and all(_is_int(t) and t >= 0 for t in seq)
                for seq in self.bad_words_ids)
            if not ok:
                bad("bad_words_ids", "must be a list of non-empty lists of token ids, e.g. [[12], [7, 9]]")
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            ids = getattr(self, name)
            if ids is not None and (not isinstance(ids, (list, tuple)) or not all(_is_int(t) and t >= 0 for t in ids)):
                bad(name, "must be a list of token ids")
        e = self.eos_token_id
        if e is not None and not (_is_int(e) or (isinstance(e, (list, tuple)) and all(_is_int(x) for x in e))):
            bad("eos_token_id", "must be a token id, a list of token ids, or None")
        s = self.stop_strings
        if s is not None and not (isinstance(s, str) and s) and not (
                isinstance(s, (list, tuple)) and all(isinstance(x, str) and x for x in s)):
            bad("stop_strings", "must be a non-empty string or a list of non-empty strings")
        if self.seed is not None and not _is_int(self.seed):
            bad("seed", "must be an integer or None")
        if self.max_time is not None and (not _is_num(self.max_time) or self.max_time <= 0):
            bad("max_time", "must be a number of seconds > 0, or None")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) or (
        hasattr(x, "dtype") and getattr(x.dtype, "kind", "") in "iu" and getattr(x, "ndim", 1) == 0)


def _is_num(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) or (
        hasattr(x, "dtype") and getattr(x.dtype, "kind", "") in "iuf" and getattr(x, "ndim", 1) == 0)
