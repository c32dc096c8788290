"""Pure-Python tokenizers loaded from ``tokenizer.json`` (+ ``tokenizer_config.json``).

No ``tokenizers`` / ``regex`` / ``tiktoken``: this runs unchanged in Pyodide. The pipeline mirrors the
HF ``tokenizers`` library step by step so that ids and decoded text are identical:

    added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer -> model -> post-processor

Supported components (the ``type`` field in tokenizer.json):

* models: ``BPE`` (ByteLevel or SentencePiece style: ``byte_fallback``, ``fuse_unk``, ``ignore_merges``,
  ``continuing_subword_prefix``, ``end_of_word_suffix``), ``WordPiece``
* normalizers: NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, BertNormalizer,
  ByteLevel, Sequence
* pre-tokenizers: ByteLevel, Split, Digits, Whitespace, WhitespaceSplit, Metaspace, Punctuation,
  BertPreTokenizer, CharDelimiterSplit, Sequence
* post-processors: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence
* decoders: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, WordPiece, BPEDecoder, Sequence

Regex patterns (oniguruma syntax in tokenizer.json, e.g. ``\\p{L}``) are translated into Python ``re``
patterns with explicit character classes computed from :mod:`unicodedata` on first use.

Public API: :class:`Tokenizer` (alias :data:`AutoTokenizer`), :class:`TokenStreamDecoder`,
:class:`TokenizerError`, :func:`translate_regex`.
"""
from __future__ import annotations

import functools
import heapq
import json
import re
import unicodedata
from typing import Any, Iterable, Sequence as _Seq

__all__ = [
    "Tokenizer", "AutoTokenizer", "TokenStreamDecoder", "TokenizerError", "translate_regex",
    "clean_up_tokenization",
]


class TokenizerError(ValueError):
    """Raised for an invalid or unsupported tokenizer.json / tokenizer_config.json or bad input."""


# ---------------------------------------------------------------------------------------------------------
# Unicode character classes
# ---------------------------------------------------------------------------------------------------------

# Unicode White_Space (what Rust's char::is_whitespace and oniguruma's \s use; Python's str.isspace also
# accepts U+001C..U+001F, so it must not be used).
_WS_RANGES = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
              (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]
WHITESPACE = "".join(chr(c) for lo, hi in _WS_RANGES for c in range(lo, hi + 1))
_WS_SET = frozenset(WHITESPACE)

# Other_Alphabetic code points outside the Mark categories (part of Unicode "Alphabetic", hence of \w).
_EXTRA_ALPHA = [(0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189)]


@functools.lru_cache(maxsize=1)
def _category_ranges() -> dict[str, list[tuple[int, int]]]:
    """General category -> sorted code point ranges, from unicodedata (computed once, ~0.1 s)."""
    cat = unicodedata.category
    out: dict[str, list[tuple[int, int]]] = {}

    def add(c: str, lo: int, hi: int) -> None:
        lst = out.setdefault(c, [])
        if lst and lst[-1][1] == lo - 1:
            lst[-1] = (lst[-1][0], hi)
        else:
            lst.append((lo, hi))

    def scan(lo: int, hi: int) -> None:
        prev, start = None, lo
        for cp in range(lo, hi + 1):
            c = cat(chr(cp))
            if c != prev:
                if prev is not None:
                    add(prev, start, cp - 1)
                prev, start = c, cp
        add(prev, start, hi)

    # Planes 4-13 are unassigned and planes 15-16 private use (checked against unicodedata at test time).
    scan(0, 0x3FFFF)
    add("Cn", 0x40000, 0xDFFFF)
    scan(0xE0000, 0xEFFFF)
    for base in (0xF0000, 0x100000):
        add("Co", base, base + 0xFFFD)
        add("Cn", base + 0xFFFE, base + 0xFFFF)
    return out


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= 0x10FFFF:
        out.append((nxt, 0x10FFFF))
    return out


_LONG_NAMES = {
    "letter": "L", "casedletter": "LC", "uppercaseletter": "Lu", "lowercaseletter": "Ll",
    "titlecaseletter": "Lt", "modifierletter": "Lm", "otherletter": "Lo", "mark": "M", "combiningmark": "M",
    "nonspacingmark": "Mn", "spacingmark": "Mc", "enclosingmark": "Me", "number": "N",
    "decimalnumber": "Nd", "letternumber": "Nl", "othernumber": "No", "punctuation": "P",
    "connectorpunctuation": "Pc", "dashpunctuation": "Pd", "openpunctuation": "Ps", "closepunctuation": "Pe",
    "initialpunctuation": "Pi", "finalpunctuation": "Pf", "otherpunctuation": "Po", "symbol": "S",
    "mathsymbol": "Sm", "currencysymbol": "Sc", "modifiersymbol": "Sk", "othersymbol": "So",
    "separator": "Z", "spaceseparator": "Zs", "lineseparator": "Zl", "paragraphseparator": "Zp",
    "other": "C", "control": "Cc", "format": "Cf", "surrogate": "Cs", "privateuse": "Co",
    "unassigned": "Cn",
}
_ALL_CATS = ["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi",
             "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"]


@functools.lru_cache(maxsize=None)
def _property_ranges(name: str) -> tuple[tuple[int, int], ...]:
    """Code point ranges of a Unicode property name as written in ``\\p{...}``."""
    key = name.replace("_", "").replace(" ", "").replace("-", "")
    low = key.lower()
    if low in _LONG_NAMES:
        key = _LONG_NAMES[low]
    cats = _category_ranges()
    if key == "LC":
        members = ["Lu", "Ll", "Lt"]
    elif len(key) == 1 and key.upper() in "LMNPSZC":
        members = [c for c in _ALL_CATS if c[0] == key.upper()]
    elif len(key) == 2 and key[0].upper() + key[1].lower() in _ALL_CATS:
        members = [key[0].upper() + key[1].lower()]
    elif low in ("whitespace", "space"):
        return tuple(_WS_RANGES)
    elif low in ("alpha", "alphabetic"):
        return tuple(_merge_ranges([*_property_ranges("L"), *_property_ranges("Nl"), *_property_ranges("M"),
                                    *_EXTRA_ALPHA]))
    elif low == "word":
        return tuple(_merge_ranges([*_property_ranges("Alpha"), *_property_ranges("Nd"),
                                    *_property_ranges("Pc"), (0x200C, 0x200D)]))
    elif low == "digit":
        members = ["Nd"]
    elif low == "any":
        return ((0, 0x10FFFF),)
    else:
        raise TokenizerError(
            f"unsupported Unicode property \\p{{{name}}} in a tokenizer regex; supported: general categories "
            f"(L, Lu, Ll, Lt, Lm, Lo, M, Mn, Mc, Me, N, Nd, Nl, No, P*, S*, Z*, C* and their long names), "
            f"Alphabetic, White_Space, Word, Digit, Any"
        )
    return tuple(_merge_ranges(r for m in members for r in cats.get(m, ())))


def _esc(cp: int) -> str:
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _class_body(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}" for lo, hi in ranges)


_ESCAPE_CLASSES = {"s": "White_Space", "d": "Digit", "w": "Word"}


def _parse_property(pattern: str, i: int) -> tuple[str, int]:
    """Parse the name after ``\\p`` at index i (``{Name}`` or one letter); return (name, next index)."""
    if i < len(pattern) and pattern[i] == "{":
        j = pattern.find("}", i)
        if j < 0:
            raise TokenizerError(f"unterminated \\p{{...}} in regex {pattern!r}")
        return pattern[i + 1:j], j + 1
    if i < len(pattern):
        return pattern[i], i + 1
    raise TokenizerError(f"dangling \\p at the end of regex {pattern!r}")


def _escape_ranges(pattern: str, i: int) -> tuple[list[tuple[int, int]] | None, bool, int]:
    """At a backslash at index i: ranges for a class escape (\\p, \\P, \\s, ...), negated flag, next index."""
    d = pattern[i + 1]
    if d in "pP":
        name, j = _parse_property(pattern, i + 2)
        neg = d == "P"
        if name.startswith("^"):
            neg, name = not neg, name[1:]
        return list(_property_ranges(name)), neg, j
    if d.lower() in _ESCAPE_CLASSES:
        return list(_property_ranges(_ESCAPE_CLASSES[d.lower()])), d.isupper(), i + 2
    if d in "hH":
        return [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)], d == "H", i + 2
    return None, False, i


def _parse_hex_escape(pattern: str, i: int) -> tuple[str, int] | None:
    """``\\x{HHHH}`` (oniguruma) at index i -> (Python escape, next index)."""
    if pattern.startswith("\\x{", i):
        j = pattern.find("}", i)
        if j < 0:
            raise TokenizerError(f"unterminated \\x{{...}} in regex {pattern!r}")
        return _esc(int(pattern[i + 3:j], 16)), j + 1
    return None


@functools.lru_cache(maxsize=256)
def translate_regex(pattern: str) -> str:
    """Translate an oniguruma / Rust-regex pattern (as found in tokenizer.json) into Python ``re`` syntax.

    ``\\p{..}``/``\\P{..}``, ``\\s``, ``\\d``, ``\\w`` (and negations) become explicit Unicode character
    classes with the same meaning as in oniguruma (Unicode White_Space, Nd, Alphabetic+M+Nd+Pc+Join_Control).
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise TokenizerError(f"regex {pattern!r} ends with a lone backslash")
            ranges, neg, j = _escape_ranges(pattern, i)
            if ranges is not None:
                out.append("[" + ("^" if neg else "") + _class_body(ranges) + "]")
                i = j
                continue
            hx = _parse_hex_escape(pattern, i)
            if hx is not None:
                out.append(hx[0])
                i = hx[1]
                continue
            d = pattern[i + 1]
            if d == "z":
                out.append(r"\Z")
            elif d == "Z":
                out.append(r"(?=\n?\Z)")
            elif d == "R":
                out.append(r"(?:\r\n|[\n\x0b\x0c\r\x85\u2028\u2029])")
            elif d in "GKXyY" or d == "k" or d == "g":
                raise TokenizerError(f"unsupported regex escape \\{d} in {pattern!r}")
            else:
                out.append(pattern[i:i + 2])
            i += 2
        elif c == "[":
            body, neg, i = _parse_class(pattern, i)
            out.append("[" + ("^" if neg else "") + body + "]")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_class(pattern: str, i: int) -> tuple[str, bool, int]:
    """Parse a bracket expression starting at pattern[i] == '['; return (python body, negated, next)."""
    n = len(pattern)
    k = i + 1
    neg = False
    if k < n and pattern[k] == "^":
        neg, k = True, k + 1
    parts: list[str] = []
    first = True
    while True:
        if k >= n:
            raise TokenizerError(f"unterminated character class in regex {pattern!r}")
        c = pattern[k]
        if c == "]" and not first:
            return "".join(parts), neg, k + 1
        first = False
        if c == "\\":
            if k + 1 >= n:
                raise TokenizerError(f"unterminated character class in regex {pattern!r}")
            ranges, rneg, j = _escape_ranges(pattern, k)
            if ranges is not None:
                parts.append(_class_body(_complement(ranges) if rneg else ranges))
                k = j
                continue
            hx = _parse_hex_escape(pattern, k)
            if hx is not None:
                parts.append(hx[0])
                k = hx[1]
                continue
            parts.append(pattern[k:k + 2])
            k += 2
        elif c == "[":
            raise TokenizerError(f"nested or POSIX character classes are not supported in regex {pattern!r}")
        elif c == "&" and pattern.startswith("&&", k):
            raise TokenizerError(f"character class intersection (&&) is not supported in regex {pattern!r}")
        elif c in "&~|":
            parts.append("\\" + c)
            k += 1
        else:
            parts.append(c)
            k += 1


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(translate_regex(pattern))
    except re.error as exc:
        raise TokenizerError(f"cannot compile tokenizer regex {pattern!r}: {exc}") from None


def _char_in(ranges_name: str):
    """A fast membership predicate for a Unicode property (compiled single-char regex)."""
    rx = _compile("[" + "\\p{" + ranges_name + "}]")
    return lambda ch: rx.match(ch) is not None


@functools.lru_cache(maxsize=1)
def _preds():
    return {
        "numeric": _char_in("N"),
        "punct": _char_in("P"),
        "other": _char_in("C"),
        "mn": _char_in("Mn"),
        "mark": _char_in("M"),
    }


def _is_ws(ch: str) -> bool:
    return ch in _WS_SET


def _is_punct(ch: str) -> bool:
    # Rust: c.is_ascii_punctuation() || c.is_punctuation()
    return ("!" <= ch <= "/") or (":" <= ch <= "@") or ("[" <= ch <= "`") or ("{" <= ch <= "~") or \
        _preds()["punct"](ch)


# ---------------------------------------------------------------------------------------------------------
# Splitting helpers (NormalizedString::split semantics)
# ---------------------------------------------------------------------------------------------------------

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


def _pattern_spec(spec: Any, where: str) -> tuple[str, str]:
    """{"String": s} | {"Regex": r} -> ("string"|"regex", value)."""
    if isinstance(spec, dict):
        if "String" in spec:
            return "string", spec["String"]
        if "Regex" in spec:
            return "regex", spec["Regex"]
    if isinstance(spec, str):
        return "string", spec
    raise TokenizerError(f"{where}: pattern must be {{'String': ...}} or {{'Regex': ...}}, got {spec!r}")


# ---------------------------------------------------------------------------------------------------------
# Byte-level alphabet
# ---------------------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_LATIN1_TO_BYTELEVEL = {b: c for b, c in BYTE_TO_CHAR.items()}  # str.translate table on latin-1 text


def _to_byte_level(text: str) -> str:
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTELEVEL)


GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


# ---------------------------------------------------------------------------------------------------------
# Normalizers: str -> str
# ---------------------------------------------------------------------------------------------------------

def _lowercase(s: str) -> str:
    # Rust lowercases char by char (no final-sigma rule), Python's str.lower() has one for U+03A3.
    return s.lower() if "\u03a3" not in s else "".join(ch.lower() for ch in s)


_CHINESE = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
            (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]


def _is_chinese(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _CHINESE)


def build_normalizer(spec: dict | None):
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
        mark = _preds()["mark"]
        return lambda s: "".join(ch for ch in s if not mark(ch))
    if t == "Replace":
        kind, pat = _pattern_spec(spec.get("pattern"), "Replace normalizer")
        content = spec.get("content", "")
        if kind == "string":
            return lambda s: s.replace(pat, content) if pat else s
        rx = _compile(pat)
        return lambda s: rx.sub(lambda _m: content, s)
    if t == "Prepend":
        pre = spec.get("prepend", "")
        return lambda s: pre + s if s else s
    if t == "Append":
        app = spec.get("append", "")
        return lambda s: s + app if s else s
    if t == "ByteLevel":
        return _to_byte_level
    if t == "BertNormalizer":
        clean = spec.get("clean_text", True)
        chinese = spec.get("handle_chinese_chars", True)
        lower = spec.get("lowercase", True)
        strip_acc = spec.get("strip_accents")
        strip_acc = lower if strip_acc is None else strip_acc
        other, mn = _preds()["other"], _preds()["mn"]

        def bert(s):
            if clean:
                s = "".join(" " if (ch in "\t\n\r" or ch in _WS_SET) else ch for ch in s
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


# ---------------------------------------------------------------------------------------------------------
# Pre-tokenizers: list[Piece] -> list[Piece]
# ---------------------------------------------------------------------------------------------------------

def _prepend_scheme(spec: dict) -> str:
    scheme = spec.get("prepend_scheme")
    if scheme is None:  # old serialization
        scheme = "always" if spec.get("add_prefix_space", True) else "never"
    scheme = str(scheme).lower()
    if scheme not in ("always", "first", "never"):
        raise TokenizerError(f"Metaspace prepend_scheme must be 'always', 'first' or 'never', got {scheme!r}")
    return scheme


def build_pre_tokenizer(spec: dict | None):
    if spec is None:
        return None
    t = spec.get("type")
    if t == "ByteLevel":
        add_prefix = spec.get("add_prefix_space", True)
        rx = _compile(GPT2_PATTERN) if spec.get("use_regex", True) else None

        def byte_level(pieces):
            if add_prefix:
                pieces = [(p if p.startswith(" ") else " " + p, o) for p, o in pieces]
            if rx is not None:
                pieces = _split_pieces(pieces, lambda s: _apply_behavior(_regex_matches(rx, s), "Isolated"))
            return [(_to_byte_level(p), o) for p, o in pieces]
        return byte_level
    if t == "Split":
        kind, pat = _pattern_spec(spec.get("pattern"), "Split pre-tokenizer")
        rx = _compile(pat) if kind == "regex" else re.compile(re.escape(pat))
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
        num = _preds()["numeric"]
        return lambda pieces: _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(num, s), beh))
    if t == "Whitespace":
        rx = _compile(r"\w+|[^\w\s]+")
        return lambda pieces: _split_pieces(
            pieces, lambda s: [(a, b) for a, b, m in _regex_matches(rx, s) if m])
    if t == "WhitespaceSplit":
        return lambda pieces: _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(_is_ws, s), "Removed"))
    if t == "CharDelimiterSplit":
        delim = spec.get("delimiter")
        return lambda pieces: _split_pieces(
            pieces, lambda s: _apply_behavior(_char_matches(lambda c: c == delim, s), "Removed"))
    if t == "Punctuation":
        beh = spec.get("behavior", "Isolated")
        return lambda pieces: _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(_is_punct, s), beh))
    if t == "BertPreTokenizer":
        def bert(pieces):
            pieces = _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(_is_ws, s), "Removed"))
            return _split_pieces(pieces, lambda s: _apply_behavior(_char_matches(_is_punct, s), "Isolated"))
        return bert
    if t == "Metaspace":
        rep = spec.get("replacement", "\u2581")
        scheme = _prepend_scheme(spec)
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


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------

class BPEModel:
    """Byte-pair encoding with HF semantics (priority-queue merges, per-word cache)."""

    CACHE_SIZE = 20000

    def __init__(self, spec: dict):
        self.vocab: dict[str, int] = dict(spec.get("vocab") or {})
        self.unk_token = spec.get("unk_token")
        self.prefix = spec.get("continuing_subword_prefix") or ""
        self.suffix = spec.get("end_of_word_suffix") or ""
        self.fuse_unk = bool(spec.get("fuse_unk", False))
        self.byte_fallback = bool(spec.get("byte_fallback", False))
        self.ignore_merges = bool(spec.get("ignore_merges", False))
        if self.unk_token is not None and self.unk_token not in self.vocab:
            raise TokenizerError(f"BPE unk_token {self.unk_token!r} is not in the vocabulary")
        self.merges: dict[tuple[int, int], tuple[int, int]] = {}
        plen = len(self.prefix)
        for rank, m in enumerate(spec.get("merges") or []):
            if isinstance(m, str):
                parts = m.split(" ")
                if len(parts) != 2:
                    raise TokenizerError(f"BPE merge #{rank} {m!r} must be two tokens separated by one space")
                a, b = parts
            else:
                a, b = m
            try:
                ia, ib = self.vocab[a], self.vocab[b]
                new = self.vocab[a + b[plen:]]
            except KeyError as exc:
                raise TokenizerError(f"BPE merge #{rank} ({a!r}, {b!r}) uses a token missing from the "
                                     f"vocabulary: {exc.args[0]!r}") from None
            self.merges.setdefault((ia, ib), (rank, new))
        self._byte_ids = [self.vocab.get(f"<0x{b:02X}>") for b in range(256)]
        self._cache: dict[str, list[int]] = {}

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def _initial(self, word: str) -> list[int]:
        ids: list[int] = []
        unk: list[int] | None = None  # [unk_id] pending (fused)
        vocab = self.vocab
        last = len(word) - 1
        for i, ch in enumerate(word):
            s = ch
            if i > 0 and self.prefix:
                s = self.prefix + s
            if i == last and self.suffix:
                s = s + self.suffix
            tid = vocab.get(s)
            if tid is not None:
                if unk is not None:
                    ids.append(unk[0])
                    unk = None
                ids.append(tid)
                continue
            if self.byte_fallback:
                bids = [self._byte_ids[b] for b in s.encode("utf-8")]
                if all(b is not None for b in bids):
                    ids.extend(bids)
                    continue
            if self.unk_token is not None:
                uid = vocab[self.unk_token]
                if unk is None:
                    unk = [uid]
                elif not self.fuse_unk:
                    ids.append(unk[0])
                    unk = [uid]
        if unk is not None:
            ids.append(unk[0])
        return ids

    def _merge(self, sym: list[int]) -> list[int]:
        n = len(sym)
        if n < 2:
            return sym
        merges = self.merges
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            m = merges.get((sym[i], sym[i + 1]))
            if m is not None:
                heap.append((m[0], i, m[1]))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            rank, i, new = pop(heap)
            if not alive[i]:
                continue
            j = nxt[i]
            if j == -1:
                continue
            m = merges.get((sym[i], sym[j]))
            if m is None or m[1] != new:
                continue
            sym[i] = new
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k != -1:
                prv[k] = i
                m = merges.get((new, sym[k]))
                if m is not None:
                    push(heap, (m[0], i, m[1]))
            p = prv[i]
            if p != -1:
                m = merges.get((sym[p], new))
                if m is not None:
                    push(heap, (m[0], p, m[1]))
        return [s for s, a in zip(sym, alive) if a]

    def tokenize(self, word: str) -> list[int]:
        if not word:
            return []
        if self.ignore_merges:
            tid = self.vocab.get(word)
            if tid is not None:
                return [tid]
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        out = self._merge(self._initial(word))
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[word] = out
        return out


class WordPieceModel:
    """Greedy longest-match-first WordPiece (BERT)."""

    def __init__(self, spec: dict):
        self.vocab: dict[str, int] = dict(spec.get("vocab") or {})
        self.unk_token = spec.get("unk_token", "[UNK]")
        self.prefix = spec.get("continuing_subword_prefix", "##")
        self.max_chars = int(spec.get("max_input_chars_per_word", 100))
        if self.unk_token not in self.vocab:
            raise TokenizerError(f"WordPiece unk_token {self.unk_token!r} is not in the vocabulary")

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def tokenize(self, word: str) -> list[int]:
        if not word:
            return []
        unk = [self.vocab[self.unk_token]]
        if len(word) > self.max_chars:
            return unk
        out, start, n = [], 0, len(word)
        while start < n:
            end, found = n, None
            while start < end:
                sub = word[start:end]
                if start > 0:
                    sub = self.prefix + sub
                tid = self.vocab.get(sub)
                if tid is not None:
                    found = tid
                    break
                end -= 1
            if found is None:
                return unk
            out.append(found)
            start = end
        return out


def build_model(spec: dict):
    t = spec.get("type")
    if t is None:
        t = "BPE" if "merges" in spec else ("WordPiece" if "max_input_chars_per_word" in spec else None)
    if t == "BPE":
        return BPEModel(spec)
    if t == "WordPiece":
        return WordPieceModel(spec)
    raise TokenizerError(f"unsupported tokenizer model type {t!r}; supported: BPE, WordPiece")


# ---------------------------------------------------------------------------------------------------------
# Decoders: list[str] -> list[str]
# ---------------------------------------------------------------------------------------------------------

def _byte_level_decode(tokens: list[str]) -> list[str]:
    buf = bytearray()
    for t in tokens:
        try:
            buf.extend(CHAR_TO_BYTE[c] for c in t)
        except KeyError:
            buf.extend(t.encode("utf-8"))
    return [buf.decode("utf-8", errors="replace")]


def _is_byte_token(t: str) -> bool:
    if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
        try:
            int(t[3:5], 16)
            return True
        except ValueError:
            return False
    return False


def _byte_fallback_decode(tokens: list[str]) -> list[str]:
    out: list[str] = []
    pending = bytearray()

    def flush():
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" for _ in range(len(pending)))
            pending.clear()

    for t in tokens:
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            try:
                pending.append(int(t[3:5], 16))
                continue
            except ValueError:
                pass
        flush()
        out.append(t)
    flush()
    return out


def _wordpiece_cleanup(s: str) -> str:
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" do not", " don't")
            .replace(" 's", "'s").replace(" 've", "'ve").replace(" 're", "'re"))


def build_decoder(spec: dict | None):
    if spec is None:
        return None
    t = spec.get("type")
    if t == "ByteLevel":
        return _byte_level_decode
    if t == "ByteFallback":
        return _byte_fallback_decode
    if t == "Fuse":
        return lambda toks: ["".join(toks)]
    if t == "Metaspace":
        rep = spec.get("replacement", "\u2581")
        strip_first = _prepend_scheme(spec) != "never"

        def metaspace(toks):
            out = []
            for i, tok in enumerate(toks):
                if i == 0 and strip_first:
                    out.append(tok.replace(rep, ""))
                else:
                    out.append(tok.replace(rep, " "))
            return out
        return metaspace
    if t == "Strip":
        content = spec.get("content", " ")
        start, stop = int(spec.get("start", 0)), int(spec.get("stop", 0))

        def strip(toks):
            out = []
            for tok in toks:
                a, b = 0, len(tok)
                for i in range(min(start, len(tok))):
                    if tok[i] == content:
                        a = i + 1
                    else:
                        break
                for i in range(min(stop, len(tok))):
                    idx = len(tok) - i - 1
                    if tok[idx] == content:
                        b = idx
                    else:
                        break
                out.append(tok[a:b] if a < b else "")
            return out
        return strip
    if t == "Replace":
        kind, pat = _pattern_spec(spec.get("pattern"), "Replace decoder")
        content = spec.get("content", "")
        if kind == "string":
            return lambda toks: [tok.replace(pat, content) if pat else tok for tok in toks]
        rx = _compile(pat)
        return lambda toks: [rx.sub(lambda _m: content, tok) for tok in toks]
    if t == "WordPiece":
        prefix = spec.get("prefix", "##")
        cleanup = spec.get("cleanup", True)

        def wordpiece(toks):
            out = []
            for i, tok in enumerate(toks):
                if i != 0:
                    tok = tok.replace(prefix, "", 1) if tok.startswith(prefix) else " " + tok
                out.append(_wordpiece_cleanup(tok) if cleanup else tok)
            return out
        return wordpiece
    if t == "BPEDecoder":
        suffix = spec.get("suffix", "</w>")
        return lambda toks: [tok.replace(suffix, "" if i == len(toks) - 1 else " ") for i, tok in enumerate(toks)]
    if t == "Sequence":
        parts = [build_decoder(d) for d in spec.get("decoders", [])]

        def seq(toks):
            for p in parts:
                if p is not None:
                    toks = p(toks)
            return toks
        return seq
    raise TokenizerError(f"unsupported decoder type {t!r}; supported: ByteLevel, ByteFallback, Fuse, Metaspace, "
                         "Strip, Replace, WordPiece, BPEDecoder, Sequence")


# ---------------------------------------------------------------------------------------------------------
# Post-processors: (ids_a, ids_b | None, add_special_tokens) -> ids
# ---------------------------------------------------------------------------------------------------------

def build_post_processor(spec: dict | None):
    if spec is None:
        return None
    t = spec.get("type")
    if t == "ByteLevel":
        return None  # only trims offsets: ids are unchanged
    if t == "TemplateProcessing":
        specials = {name: list(v["ids"]) for name, v in (spec.get("special_tokens") or {}).items()}

        def compile_template(pieces):
            out = []
            for piece in pieces or []:
                if "SpecialToken" in piece:
                    name = piece["SpecialToken"]["id"]
                    if name not in specials:
                        raise TokenizerError(f"TemplateProcessing uses special token {name!r} that is not in "
                                             f"special_tokens ({sorted(specials)})")
                    out.append(("special", name))
                elif "Sequence" in piece:
                    out.append(("seq", piece["Sequence"]["id"]))
                else:
                    raise TokenizerError(f"bad TemplateProcessing piece {piece!r}")
            return out

        single, pair = compile_template(spec.get("single")), compile_template(spec.get("pair"))

        def template(a, b, add_special):
            if not add_special:
                return a + (b or [])
            out = []
            for kind, val in (single if b is None else pair):
                if kind == "special":
                    out.extend(specials[val])
                else:
                    out.extend(a if val == "A" else (b or []))
            return out
        template.num_special = (lambda is_pair: sum(len(specials[v]) for k, v in (pair if is_pair else single)
                                                    if k == "special"))
        return template
    if t in ("BertProcessing", "RobertaProcessing"):
        sep, cls = spec["sep"][1], spec["cls"][1]
        roberta = t == "RobertaProcessing"

        def bert(a, b, add_special):
            if not add_special:
                return a + (b or [])
            out = [cls] + a + [sep]
            if b is not None:
                out += ([sep] if roberta else []) + b + [sep]
            return out
        bert.num_special = lambda is_pair: (2 if not is_pair else (4 if roberta else 3))
        return bert
    if t == "Sequence":
        parts = [build_post_processor(p) for p in spec.get("processors", [])]
        parts = [p for p in parts if p is not None]
        if not parts:
            return None

        def seq(a, b, add_special):
            # Only one processor in practice adds tokens (ByteLevel ones only trim offsets).
            ids = parts[0](a, b, add_special)
            return ids
        if len(parts) > 1:
            raise TokenizerError("a post-processor Sequence with more than one id-changing processor is not "
                                 "supported (ByteLevel entries are fine)")
        seq.num_special = parts[0].num_special
        return seq
    raise TokenizerError(f"unsupported post-processor type {t!r}; supported: TemplateProcessing, BertProcessing, "
                         "RobertaProcessing, ByteLevel, Sequence")


# ---------------------------------------------------------------------------------------------------------
# Added tokens
# ---------------------------------------------------------------------------------------------------------

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


class _AddedMatcher:
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
        self._word_end = _compile(r"\w$")
        self._word_start = _compile(r"^\w")

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


# ---------------------------------------------------------------------------------------------------------
# transformers-level helpers
# ---------------------------------------------------------------------------------------------------------

def clean_up_tokenization(s: str) -> str:
    """transformers' ``clean_up_tokenization`` (removes spaces before punctuation and contractions)."""
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


def _token_content(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and "content" in v:
        return v["content"]
    raise TokenizerError(f"special token must be a string or {{'content': ...}}, got {v!r}")


def _load_json(value: Any, what: str) -> Any:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{what} is not valid JSON: {exc}") from None
    raise TokenizerError(f"{what} must be a dict, a JSON string or None, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------

class Tokenizer:
    """A tokenizer built from the parsed contents of ``tokenizer.json`` and ``tokenizer_config.json``.

    Construct with :meth:`from_json` (no I/O). ``encode``/``decode`` match HF ``tokenizers``;
    ``__call__`` and ``apply_chat_template`` follow transformers.
    """

    def __init__(self, tokenizer_json: dict, tokenizer_config: dict | None = None,
                 chat_template: str | list | dict | None = None):
        if not isinstance(tokenizer_json, dict) or "model" not in tokenizer_json:
            raise TokenizerError("tokenizer.json must be an object with a 'model' entry")
        cfg = dict(tokenizer_config or {})
        self.config = cfg
        self.model = build_model(tokenizer_json["model"])
        self.normalizer = build_normalizer(tokenizer_json.get("normalizer"))
        self.pre_tokenizer = build_pre_tokenizer(tokenizer_json.get("pre_tokenizer"))
        self.post_processor = build_post_processor(tokenizer_json.get("post_processor"))
        self.decoder = build_decoder(tokenizer_json.get("decoder"))
        self.decoder_has_byte_fallback = '"ByteFallback"' in json.dumps(tokenizer_json.get("decoder"))
        self.truncation = tokenizer_json.get("truncation")
        self.padding = tokenizer_json.get("padding")

        self.added_tokens: dict[int, AddedToken] = {}
        for d in tokenizer_json.get("added_tokens") or []:
            tok = AddedToken(d)
            self.added_tokens[tok.id] = tok
        self.added_tokens_encoder = {t.content: i for i, t in self.added_tokens.items()}
        self.special_tokens = {t.content for t in self.added_tokens.values() if t.special}
        self.all_special_ids = sorted(i for i, t in self.added_tokens.items() if t.special)
        raw = [(t.content, t) for t in self.added_tokens.values() if not t.normalized]
        normed = [((self.normalizer(t.content) if self.normalizer else t.content), t)
                  for t in self.added_tokens.values() if t.normalized]
        self._raw_matcher = _AddedMatcher(raw)
        self._norm_matcher = _AddedMatcher(normed)

        self.vocab: dict[str, int] = dict(self.model.vocab)
        self.vocab.update(self.added_tokens_encoder)
        self._id_to_token: dict[int, str] = {i: t for t, i in self.model.vocab.items()}
        # HF decodes a normalized added token through its normalized form (e.g. "Hello" -> "\u2581Hello").
        self._id_to_token.update({i: (self.normalizer(t.content) if t.normalized and self.normalizer else t.content)
                                  for i, t in self.added_tokens.items()})
        self._special_ids = frozenset(self.all_special_ids)

        self.bos_token = _token_content(cfg.get("bos_token"))
        self.eos_token = _token_content(cfg.get("eos_token"))
        self.pad_token = _token_content(cfg.get("pad_token"))
        self.unk_token = _token_content(cfg.get("unk_token"))
        if self.unk_token is None and getattr(self.model, "unk_token", None):
            self.unk_token = self.model.unk_token
        self.padding_side = cfg.get("padding_side", "right")
        self.truncation_side = cfg.get("truncation_side", "right")
        for side, name in ((self.padding_side, "padding_side"), (self.truncation_side, "truncation_side")):
            if side not in ("left", "right"):
                raise TokenizerError(f"tokenizer_config {name} must be 'left' or 'right', got {side!r}")
        mml = cfg.get("model_max_length")
        self.model_max_length = int(mml) if isinstance(mml, (int, float)) and mml < 1e12 else None
        self.clean_up_tokenization_spaces = bool(cfg.get("clean_up_tokenization_spaces", False))
        self.chat_template = chat_template if chat_template is not None else cfg.get("chat_template")

    # -- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, tokenizer_json: dict | str | bytes, tokenizer_config: dict | str | bytes | None = None,
                  chat_template: str | None = None) -> "Tokenizer":
        """Build from already-fetched file contents (dicts or JSON text). Does no I/O.

        ``chat_template``: the text of a separate ``chat_template.jinja`` if the repo has one (it
        overrides ``tokenizer_config['chat_template']``).
        """
        tj = _load_json(tokenizer_json, "tokenizer.json")
        if tj is None:
            raise TokenizerError("tokenizer.json is required")
        return cls(tj, _load_json(tokenizer_config, "tokenizer_config.json"), chat_template)

    @classmethod
    def from_directory(cls, path) -> "Tokenizer":
        """CPython convenience: read tokenizer.json, tokenizer_config.json and chat_template.jinja from a dir."""
        from pathlib import Path

        p = Path(path)
        if not (p / "tokenizer.json").exists():
            raise TokenizerError(f"no tokenizer.json in {p}")
        cfg = p / "tokenizer_config.json"
        tpl = p / "chat_template.jinja"
        return cls.from_json((p / "tokenizer.json").read_text(encoding="utf-8"),
                             cfg.read_text(encoding="utf-8") if cfg.exists() else None,
                             tpl.read_text(encoding="utf-8") if tpl.exists() else None)

    # -- vocabulary ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def token_to_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        return self.vocab.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._id_to_token.get(int(token_id))

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.token_to_id(tokens)
        return [self.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.id_to_token(ids)
        return [self.id_to_token(i) for i in ids]

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self.token_to_id(self.unk_token)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        out = {}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        for name in ("sep_token", "cls_token", "mask_token"):
            v = _token_content(self.config.get(name))
            if v is not None:
                out[name] = v
        return out

    # -- encoding -----------------------------------------------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        ids: list[int] = []
        model_tokenize = self.model.tokenize
        for s, e, tok in self._raw_matcher.split(text):
            if tok is not None:
                ids.append(tok.id)
                continue
            seg = text[s:e]
            if not seg:
                continue
            norm = self.normalizer(seg) if self.normalizer else seg
            for s2, e2, tok2 in self._norm_matcher.split(norm):
                if tok2 is not None:
                    ids.append(tok2.id)
                    continue
                piece = norm[s2:e2]
                if not piece:
                    continue
                pieces = [(piece, s == 0 and s2 == 0)]
                if self.pre_tokenizer is not None:
                    pieces = self.pre_tokenizer(pieces)
                for p, _ in pieces:
                    ids.extend(model_tokenize(p))
        return ids

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        pp = self.post_processor
        return pp.num_special(pair) if pp is not None else 0

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        """Token ids for ``text`` (and optionally ``text_pair``), like ``tokenizers.Tokenizer.encode(...).ids``.

        Truncation and padding configured in tokenizer.json are applied, as the HF library does
        (``__call__`` follows transformers instead: only what its arguments ask for).
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode() expects a str, got {type(text).__name__}")
        a = self._encode_text(text)
        b = self._encode_text(text_pair) if text_pair is not None else None
        if self.truncation:
            a, b = self._truncate(a, b, int(self.truncation.get("max_length", 512)), add_special_tokens,
                                  self.truncation.get("direction", "Right").lower())
        ids = self._post_process(a, b, add_special_tokens)
        return self._json_padding(ids) if self.padding else ids

    def _json_padding(self, ids: list[int]) -> list[int]:
        p = self.padding
        strategy = p.get("strategy")
        target = strategy["Fixed"] if isinstance(strategy, dict) and "Fixed" in strategy else len(ids)
        multiple = p.get("pad_to_multiple_of")
        if multiple and target % multiple:
            target += multiple - target % multiple
        k = target - len(ids)
        if k <= 0:
            return ids
        pad = [int(p.get("pad_id", 0))] * k
        return ids + pad if str(p.get("direction", "Right")).lower() == "right" else pad + ids

    def _post_process(self, a, b, add_special_tokens):
        if self.post_processor is None:
            return a + (b or [])
        return self.post_processor(a, b, add_special_tokens)

    def _truncate(self, a, b, max_length, add_special_tokens, direction):
        budget = max_length - (self.num_special_tokens_to_add(b is not None) if add_special_tokens else 0)
        budget = max(budget, 0)
        if b is None:
            if len(a) > budget:
                a = a[:budget] if direction == "right" else a[len(a) - budget:]
            return a, None
        while len(a) + len(b) > budget:  # longest first
            if len(a) >= len(b):
                a = a[:-1] if direction == "right" else a[1:]
            else:
                b = b[:-1] if direction == "right" else b[1:]
        return a, b

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return [self._id_to_token[i] for i in self.encode(text, add_special_tokens=add_special_tokens)]

    def __call__(self, text: str | _Seq[str], text_pair: str | _Seq[str] | None = None,
                 add_special_tokens: bool = True, padding: bool | str = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_attention_mask: bool = True) -> dict:
        """transformers-like batch encoding: ``{"input_ids": ..., "attention_mask": ...}``.

        ``padding``: False, True/"longest" or "max_length". ``return_tensors``: None (lists) or "np"
        (int64 numpy arrays, 2-D). Padding uses ``pad_token_id`` and ``padding_side`` from the config.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = None
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise TokenizerError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise TokenizerError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if return_tensors not in (None, "np"):
            raise TokenizerError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        limit = max_length if max_length is not None else self.model_max_length
        batch = []
        for i, t in enumerate(texts):
            a = self._encode_text(t)
            b = self._encode_text(pairs[i]) if pairs is not None else None
            if truncation:
                if limit is None:
                    raise TokenizerError("truncation=True needs max_length (the config has no model_max_length)")
                a, b = self._truncate(a, b, limit, add_special_tokens, self.truncation_side)
            batch.append(self._post_process(a, b, add_special_tokens))
        masks = [[1] * len(ids) for ids in batch]
        if padding in (True, "longest", "max_length"):
            if padding == "max_length":
                if limit is None:
                    raise TokenizerError("padding='max_length' needs max_length")
                target = limit
            else:
                target = max((len(x) for x in batch), default=0)
            pad_id = self.pad_token_id
            if pad_id is None:
                raise TokenizerError("padding needs a pad token: tokenizer_config has no usable 'pad_token'")
            for ids, mask in zip(batch, masks):
                k = target - len(ids)
                if k > 0:
                    if self.padding_side == "right":
                        ids.extend([pad_id] * k)
                        mask.extend([0] * k)
                    else:
                        ids[:0] = [pad_id] * k
                        mask[:0] = [0] * k
        if return_tensors == "np":
            import numpy as np

            if len({len(x) for x in batch}) > 1:
                raise TokenizerError("sequences have different lengths: pass padding=True to return arrays")
            out = {"input_ids": np.asarray(batch, dtype=np.int64).reshape(len(batch), -1)}
            if return_attention_mask:
                out["attention_mask"] = np.asarray(masks, dtype=np.int64).reshape(len(batch), -1)
            return out
        out = {"input_ids": batch[0] if single else batch}
        if return_attention_mask:
            out["attention_mask"] = masks[0] if single else masks
        return out

    # -- decoding -----------------------------------------------------------------------------------------
    def _ids_to_decoder_tokens(self, ids: Iterable[int], skip_special_tokens: bool) -> list[str]:
        toks = []
        special = self._special_ids
        get = self._id_to_token.get
        for i in ids:
            i = int(i)
            t = get(i)
            if t is None:  # out-of-vocabulary ids are skipped, as HF does
                continue
            if skip_special_tokens and i in special:
                continue
            toks.append(t)
        return toks

    def _decode_tokens(self, toks: list[str]) -> str:
        if self.decoder is None:
            return " ".join(toks)
        return "".join(self.decoder(toks))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text for ``ids`` (HF ``tokenizers`` decode; then transformers' optional space clean-up)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        text = self._decode_tokens(self._ids_to_decoder_tokens(ids, skip_special_tokens))
        cleanup = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if cleanup else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kw) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kw) for s in sequences]

    def stream_decoder(self, skip_special_tokens: bool = False,
                       clean_up_tokenization_spaces: bool | None = None) -> "TokenStreamDecoder":
        return TokenStreamDecoder(self, skip_special_tokens, clean_up_tokenization_spaces)

    # -- chat templates -----------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tools=None,
                            tokenize: bool = True, *, chat_template: str | None = None, documents=None,
                            continue_final_message: bool = False, return_dict: bool = False, **kwargs):
        """Render ``messages`` with the model's chat template (sandboxed jinja2, like transformers).

        Returns the prompt text if ``tokenize=False``; otherwise its ids (no extra special tokens added),
        or ``{"input_ids", "attention_mask"}`` with ``return_dict=True``. Extra ``kwargs`` are passed to the
        template (after the special tokens ``bos_token``, ``eos_token``, ...).
        """
        from .chat_template import render_chat_template, select_chat_template

        template = select_chat_template(self.chat_template, chat_template, tools)
        variables = {**self.special_tokens_map, **kwargs}
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    tools=tools, documents=documents,
                                    continue_final_message=continue_final_message, **variables)
        if not tokenize:
            return text
        ids = self.encode(text, add_special_tokens=False)
        if return_dict:
            return {"input_ids": ids, "attention_mask": [1] * len(ids)}
        return ids


AutoTokenizer = Tokenizer


# ---------------------------------------------------------------------------------------------------------
# Incremental decoding
# ---------------------------------------------------------------------------------------------------------

class TokenStreamDecoder:
    """Feed token ids one at a time, get text deltas; never emits a broken UTF-8 sequence.

    ``"".join(deltas) + end()`` equals ``tokenizer.decode(all_ids)``. Decoding works on a small window of
    recent ids (cost independent of the sequence length): text is emitted once the window's text grows and
    does not end in U+FFFD (an incomplete byte sequence is held back until it completes). With
    ``clean_up_tokenization_spaces`` the text is cleaned in chunks cut right before a space, where the
    clean-up rules cannot reach across.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False,
                 clean_up_tokenization_spaces: bool | None = None):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.cleanup = tokenizer.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        self._hold_byte_runs = tokenizer.decoder_has_byte_fallback
        self.reset()

    def reset(self) -> None:
        self.tokens: list[str] = []  # decoder-level tokens (special tokens already filtered)
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self._pending = ""  # raw text held back for clean-up
        self._raw_emitted = ""  # raw (pre clean-up) text handed to _emit
        self.text = ""  # everything emitted so far

    def _window(self, a: int, b: int | None = None) -> str:
        return self.tokenizer._decode_tokens(self.tokens[a:b])

    def put(self, token_id: int | Iterable[int]) -> str:
        """Add one id (or several); return the newly completed text (possibly "")."""
        if isinstance(token_id, int) or hasattr(token_id, "__index__"):
            new_ids = [int(token_id)]
        else:
            new_ids = [int(i) for i in token_id]
        self.ids.extend(new_ids)
        self.tokens.extend(self.tokenizer._ids_to_decoder_tokens(new_ids, self.skip_special_tokens))
        if self._hold_byte_runs and self.tokens and _is_byte_token(self.tokens[-1]):
            # ByteFallback decodes a run of <0x..> tokens as a whole (all U+FFFD if any byte is invalid),
            # so a run's text is only final once a non-byte token follows it.
            return ""
        prefix_text = self._window(self.prefix_offset, self.read_offset)
        new_text = self._window(self.prefix_offset)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd") \
                and new_text.startswith(prefix_text):
            delta = new_text[len(prefix_text):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.tokens)
            return self._emit(delta, final=False)
        return ""

    def end(self) -> str:
        """Flush whatever is held back (call once after the last id)."""
        full = self._window(0)
        if full.startswith(self._raw_emitted):
            delta = full[len(self._raw_emitted):]
        else:  # cannot happen with the supported decoders; keep the windowed answer
            prefix_text = self._window(self.prefix_offset, self.read_offset)
            new_text = self._window(self.prefix_offset)
            delta = new_text[len(prefix_text):] if new_text.startswith(prefix_text) else ""
        self.prefix_offset = self.read_offset = len(self.tokens)
        return self._emit(delta, final=True)

    flush = end

    def _emit(self, raw: str, final: bool) -> str:
        self._raw_emitted += raw
        if not self.cleanup:
            self.text += raw
            return raw
        buf = self._pending + raw
        if final:
            cut = len(buf)
        else:
            cut = self._safe_cut(buf)
        out = clean_up_tokenization(buf[:cut])
        self._pending = buf[cut:]
        self.text += out
        return out

    @staticmethod
    def _safe_cut(buf: str) -> int:
        """Largest index i such that clean(buf) == clean(buf[:i]) + clean(buf[i:]) for any continuation."""
        i = len(buf)
        while True:
            i = buf.rfind(" ", 0, i)
            if i <= 0:
                return 0
            if buf[i - 1] != " " and not buf[:i].endswith(" '"):
                return i
