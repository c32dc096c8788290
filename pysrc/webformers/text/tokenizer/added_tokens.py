"""Added tokens (the ``added_tokens`` entry of tokenizer.json) and their matching in text.

``AddedTokenMatcher(tokens).split(text)`` cuts ``text`` into ``(start, end, token | None)`` spans: the
leftmost-longest occurrences of the added tokens, with their ``single_word``, ``lstrip`` and ``rstrip``
rules, as HF ``tokenizers`` finds them.
"""
from __future__ import annotations

import re

from .regex import WHITESPACE, compile_regex

__all__ = ["AddedToken", "AddedTokenMatcher"]


class AddedToken:
    __slots__ = ("id", "content", "single_word", "lstrip", "rstrip", "normalized", "special")

    def __init__(self, d: dict):
        self.id = int(d["id"])
        self.content = d["content"]
        self.single_word = bool(d.get("single_word", False))
        self.lstrip = bool(d.get("lstrip", False))
        self.rstrip = bool(d.get("rstrip", False))
        self.special = bool(d.get("special", False))
        self.normalized = bool(d.get("normalized", not self.special))


class AddedTokenMatcher:
    """Leftmost-longest matching of a set of added tokens (HF find_matches semantics)."""

    def __init__(self, tokens: list[tuple[str, AddedToken]]):
        self.by_content: dict[str, AddedToken] = {}
        for content, tok in tokens:
            if content:
                self.by_content.setdefault(content, tok)
        if self.by_content:
            alts = sorted(self.by_content, key=lambda s: (-len(s), s))
            self.rx = re.compile("|".join(re.escape(a) for a in alts))
        else:
            self.rx = None
        self._word_end = compile_regex(r"\w$")
        self._word_start = compile_regex(r"^\w")

    def split(self, text: str) -> list[tuple[int, int, AddedToken | None]]:
        if self.rx is None or not text:
            return [(0, len(text), None)]
        out = []
        start_offset = 0
        n = len(text)
        for m in self.rx.finditer(text):
            start, stop = m.span()
            tok = self.by_content[m.group()]
            if tok.single_word:
                start_space = start == 0 or not self._word_end.search(text[:start])
                stop_space = stop == n or not self._word_start.match(text[stop:])
                if not (start_space and stop_space):
                    continue
            if tok.lstrip:
                newstart = len(text[:start].rstrip(WHITESPACE))
                start = max(newstart, start_offset)
            if tok.rstrip:
                stop = n - len(text[stop:].lstrip(WHITESPACE))
            if start_offset < start:
                out.append((start_offset, start, None))
            out.append((start, stop, tok))
            start_offset = stop
        if start_offset != n:
            out.append((start_offset, n, None))
        return out

