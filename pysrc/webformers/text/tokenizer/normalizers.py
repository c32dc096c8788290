"""Normalizers (the ``normalizer`` entry of tokenizer.json): ``build_normalizer(spec) -> (str) -> str``.

Supported types: NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, Append, ByteLevel,
BertNormalizer, Sequence.
"""
from __future__ import annotations

import unicodedata

from .byte_level import to_byte_level
from .errors import TokenizerError
from .regex import WHITESPACE, char_class, compile_regex, is_whitespace, pattern_spec

__all__ = ["build_normalizer"]


def _lowercase(s: str) -> str:
    # Rust lowercases char by char (no final-sigma rule), Python's str.lower() has one for U+03A3.
    return s.lower() if "\u03a3" not in s else "".join(ch.lower() for ch in s)


_CHINESE = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
            (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]


def _is_chinese(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _CHINESE)


def build_normalizer(spec: dict | None):
    """The normalizer ``spec`` describes (None for no normalizer)."""
    if spec is None:
        return None
    t = spec.get("type")
    if t in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda s, _f=t: unicodedata.normalize(_f, s)
    if t == "Lowercase":
        return _lowercase
    if t == "Strip":
        left, right = spec.get("strip_left", True), spec.get("strip_right", True)

        def strip(s):
            if left:
                s = s.lstrip(WHITESPACE)
            if right:
                s = s.rstrip(WHITESPACE)
            return s
        return strip
    if t == "StripAccents":  # removes every combining mark (M*), unlike BertNormalizer (Mn only)
        mark = char_class("M")
        return lambda s: "".join(ch for ch in s if not mark(ch))
    if t == "Replace":
        kind, pat = pattern_spec(spec.get("pattern"), "Replace normalizer")
        content = spec.get("content", "")
        if kind == "string":
            return lambda s: s.replace(pat, content) if pat else s
        rx = compile_regex(pat)
        return lambda s: rx.sub(lambda _m: content, s)
    if t == "Prepend":
        pre = spec.get("prepend", "")
        return lambda s: pre + s if s else s
    if t == "Append":
        app = spec.get("append", "")
        return lambda s: s + app if s else s
    if t == "ByteLevel":
        return to_byte_level
    if t == "BertNormalizer":
        clean = spec.get("clean_text", True)
        chinese = spec.get("handle_chinese_chars", True)
        lower = spec.get("lowercase", True)
        strip_acc = spec.get("strip_accents")
        strip_acc = lower if strip_acc is None else strip_acc
        other, mn = char_class("C"), char_class("Mn")

        def bert(s):
            if clean:
                s = "".join(" " if (ch in "\t\n\r" or is_whitespace(ch)) else ch for ch in s
                            if not (ch == "\x00" or ch == "\ufffd" or (ch not in "\t\n\r" and other(ch))))
            if chinese:
                s = "".join(f" {ch} " if _is_chinese(ch) else ch for ch in s)
            if strip_acc:
                s = "".join(ch for ch in unicodedata.normalize("NFD", s) if not mn(ch))
            if lower:
                s = _lowercase(s)
            return s
        return bert
    if t == "Sequence":
        parts = [build_normalizer(n) for n in spec.get("normalizers", [])]
        parts = [p for p in parts if p is not None]

        def seq(s):
            for p in parts:
                s = p(s)
            return s
        return seq
    if t == "Precompiled":
        raise TokenizerError("the 'Precompiled' (SentencePiece charsmap) normalizer is not supported; supported "
                             "normalizers: NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Replace, "
                             "Prepend, Append, ByteLevel, BertNormalizer, Sequence")
    raise TokenizerError(f"unsupported normalizer type {t!r}; supported: NFC, NFD, NFKC, NFKD, Lowercase, "
                         "Strip, StripAccents, Replace, Prepend, Append, ByteLevel, BertNormalizer, Sequence")
