"""Pre-tokenizers (the ``pre_tokenizer`` entry of tokenizer.json): ``build_pre_tokenizer(spec)`` returns a
function over pieces ``[(text, starts_at_offset_0), ...]`` that splits (and rewrites) them.

Supported types: ByteLevel, Split, Digits, Whitespace, WhitespaceSplit, CharDelimiterSplit, Punctuation,
BertPreTokenizer, Metaspace, Sequence. Splits follow ``NormalizedString::split`` of the HF library
(behaviors Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous).
"""
from __future__ import annotations

import re

from .byte_level import to_byte_level
from .errors import TokenizerError
from .regex import char_class, compile_regex, is_whitespace, pattern_spec

__all__ = ["build_pre_tokenizer", "prepend_scheme", "GPT2_PATTERN"]

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _is_punct(ch: str) -> bool:
    # Rust: c.is_ascii_punctuation() || c.is_punctuation()
    return ("!" <= ch <= "/") or (":" <= ch <= "@") or ("[" <= ch <= "`") or ("{" <= ch <= "~") or \
        char_class("P")(ch)


_BEHAVIORS = ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")


def _regex_matches(rx: re.Pattern, text: str) -> list[tuple[int, int, bool]]:
    out, prev = [], 0
    for m in rx.finditer(text):
        s, e = m.span()
        if s == e:
            continue
        if prev != s:
            out.append((prev, s, False))
        out.append((s, e, True))
        prev = e
    if prev != len(text):
        out.append((prev, len(text), False))
    return out


def _char_matches(pred, text: str) -> list[tuple[int, int, bool]]:
    out, last = [], 0
    for i, ch in enumerate(text):
        if pred(ch):
            if last < i:
                out.append((last, i, False))
            out.append((i, i + 1, True))
            last = i + 1
    if last < len(text):
        out.append((last, len(text), False))
    return out


def _apply_behavior(matches: list[tuple[int, int, bool]], behavior: str) -> list[tuple[int, int]]:
    """Turn (start, end, is_match) covering the text into kept non-empty spans."""
    if behavior == "Isolated":
        spans = [(s, e) for s, e, _ in matches]
    elif behavior == "Removed":
        spans = [(s, e) for s, e, m in matches if not m]
    elif behavior == "Contiguous":
        spans, prev = [], False
        for s, e, m in matches:
            if m == prev and spans:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
            prev = m
    elif behavior == "MergedWithPrevious":
        spans, prev = [], False
        for s, e, m in matches:
            if m and not prev and spans:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
            prev = m
    elif behavior == "MergedWithNext":
        spans, prev = [], False
        for s, e, m in reversed(matches):
            if m and not prev and spans:
                spans[-1] = (s, spans[-1][1])
            else:
                spans.append((s, e))
            prev = m
        spans.reverse()
    else:
        raise TokenizerError(f"unknown split behavior {behavior!r}; valid: {', '.join(_BEHAVIORS)}")
    return [(s, e) for s, e in spans if e > s]


# Pieces flowing through the pre-tokenizers: (text, starts_at_original_offset_0)
Piece = tuple[str, bool]


def _split_pieces(pieces: list[Piece], fn) -> list[Piece]:
    out: list[Piece] = []
    for text, origin in pieces:
        for s, e in fn(text):
            out.append((text[s:e], origin and s == 0))
    return out


def prepend_scheme(spec: dict) -> str:
    """A Metaspace entry's ``prepend_scheme`` ("always", "first" or "never"; older files: ``add_prefix_space``)."""
    scheme = spec.get("prepend_scheme")
    if scheme is None:  # old serialization
        scheme = "always" if spec.get("add_prefix_space", True) else "never"
    scheme = str(scheme).lower()
    if scheme not in ("always", "first", "never"):
        raise TokenizerError(f"Metaspace prepend_scheme must be 'always', 'first' or 'never', got {scheme!r}")
    return scheme


def build_pre_tokenizer(spec: dict | None):
    """The pre-tokenizer ``spec`` describes (None for no pre-tokenizer)."""
    if spec is None:
        return None
    t = spec.get("type")
    if t == "ByteLevel":
        add_prefix = spec.get("add_prefix_space", True)
        rx = compile_regex(GPT2_PATTERN) if spec.get("use_regex", True) else None

        def byte_level(pieces):
            if add_prefix:
                pieces = [(p if p.startswith(" ") else " " + p, o) for p, o in pieces]
            if rx is not None:
                pieces = _split_pieces(pieces, lambda s: _apply_behavior(_regex_matches(rx, s), "Isolated"))
            return [(to_byte_level(p), o) for p, o in pieces]
        return byte_level
    if t == "Split":
        kind, pat = pattern_spec(spec.get("pattern"), "Split pre-tokenizer")
        rx = compile_regex(pat) if kind == "regex" else re.compile(re.escape(pat))
        behavior = spec.get("behavior", "Isolated")
        if behavior not in _BEHAVIORS:
            raise TokenizerError(f"unknown Split behavior {behavior!r}; valid: {', '.join(_BEHAVIORS)}")
        invert = bool(spec.get("invert", False))

        def split(s):
            ms = _regex_matches(rx, s) if s else []
            if invert:
                ms = [(a, b, not m) for a, b, m in ms]
            return _apply_behavior(ms, behavior)
        return lambda pieces: _split_pieces(pieces, split)
    if t == "Digits":
        beh = "Isolated" if spec.get("individual_digits", False) else "Contiguous"
        num = char_class("N")
        return lambda pieces: _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(num, s), beh))
    if t == "Whitespace":
        rx = compile_regex(r"\w+|[^\w\s]+")
        return lambda pieces: _split_pieces(
            pieces, lambda s: [(a, b) for a, b, m in _regex_matches(rx, s) if m])
    if t == "WhitespaceSplit":
        return lambda pieces: _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(is_whitespace, s), "Removed"))
    if t == "CharDelimiterSplit":
        delim = spec.get("delimiter")
        return lambda pieces: _split_pieces(
            pieces, lambda s: _apply_behavior(_char_matches(lambda c: c == delim, s), "Removed"))
    if t == "Punctuation":
        beh = spec.get("behavior", "Isolated")
        return lambda pieces: _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(_is_punct, s), beh))
    if t == "BertPreTokenizer":
        def bert(pieces):
            pieces = _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(is_whitespace, s), "Removed"))
            return _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(_is_punct, s), "Isolated"))
        return bert
    if t == "Metaspace":
        rep = spec.get("replacement", "\u2581")
        scheme = prepend_scheme(spec)
        do_split = spec.get("split", True)

        def metaspace(pieces):
            out = []
            for p, o in pieces:
                p = p.replace(" ", rep)
                if (scheme == "always" or (scheme == "first" and o)) and not p.startswith(rep):
                    p = rep + p
                out.append((p, o))
            if do_split:
                out = _split_pieces(out, lambda s: _apply_behavior(_char_matches(lambda c: c == rep, s),
                                                                   "MergedWithNext"))
            return out
        return metaspace
    if t == "Sequence":
        parts = [build_pre_tokenizer(p) for p in spec.get("pretokenizers", [])]

        def seq(pieces):
            for p in parts:
                if p is not None:
                    pieces = p(pieces)
            return pieces
        return seq
    raise TokenizerError(f"unsupported pre-tokenizer type {t!r}; supported: ByteLevel, Split, Digits, "
                         "Whitespace, WhitespaceSplit, CharDelimiterSplit, Punctuation, BertPreTokenizer, "
                         "Metaspace, Sequence")
