"""Unicode character classes and the translation of tokenizer.json regexes into Python ``re``.

tokenizer.json patterns use oniguruma / Rust-regex syntax (``\\p{L}``, ``\\s`` meaning Unicode White_Space,
...). ``translate_regex`` rewrites them with explicit character classes computed from :mod:`unicodedata`
on first use, so that they match exactly what the HF ``tokenizers`` library matches; ``compile_regex``
compiles (and caches) the result. ``char_class(name)`` is a one-character membership test for a Unicode
property, ``is_whitespace`` the White_Space test, ``pattern_spec`` reads a ``{"String"|"Regex": ...}`` entry.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any, Iterable

from .errors import TokenizerError

__all__ = ["WHITESPACE", "is_whitespace", "category_ranges", "property_ranges", "translate_regex",
           "compile_regex", "char_class", "pattern_spec"]

# Unicode White_Space (what Rust's char::is_whitespace and oniguruma's \s use; Python's str.isspace also
# accepts U+001C..U+001F, so it must not be used).
_WS_RANGES = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
              (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]
WHITESPACE = "".join(chr(c) for lo, hi in _WS_RANGES for c in range(lo, hi + 1))
_WS_SET = frozenset(WHITESPACE)

# Other_Alphabetic code points outside the Mark categories (part of Unicode "Alphabetic", hence of \w).
_EXTRA_ALPHA = [(0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189)]


@functools.lru_cache(maxsize=1)
def category_ranges() -> dict[str, list[tuple[int, int]]]:
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
def property_ranges(name: str) -> tuple[tuple[int, int], ...]:
    """Code point ranges of a Unicode property name as written in ``\\p{...}``."""
    key = name.replace("_", "").replace(" ", "").replace("-", "")
    low = key.lower()
    if low in _LONG_NAMES:
        key = _LONG_NAMES[low]
    cats = category_ranges()
    if key == "LC":
        members = ["Lu", "Ll", "Lt"]
    elif len(key) == 1 and key.upper() in "LMNPSZC":
        members = [c for c in _ALL_CATS if c[0] == key.upper()]
    elif len(key) == 2 and key[0].upper() + key[1].lower() in _ALL_CATS:
        members = [key[0].upper() + key[1].lower()]
    elif low in ("whitespace", "space"):
        return tuple(_WS_RANGES)
    elif low in ("alpha", "alphabetic"):
        return tuple(_merge_ranges([*property_ranges("L"), *property_ranges("Nl"), *property_ranges("M"),
                                    *_EXTRA_ALPHA]))
    elif low == "word":
        return tuple(_merge_ranges([*property_ranges("Alpha"), *property_ranges("Nd"),
                                    *property_ranges("Pc"), (0x200C, 0x200D)]))
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
        return list(property_ranges(name)), neg, j
    if d.lower() in _ESCAPE_CLASSES:
        return list(property_ranges(_ESCAPE_CLASSES[d.lower()])), d.isupper(), i + 2
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
def compile_regex(pattern: str) -> re.Pattern:
    """``translate_regex(pattern)`` compiled (cached); a pattern ``re`` rejects is a ``TokenizerError``."""
    try:
        return re.compile(translate_regex(pattern))
    except re.error as exc:
        raise TokenizerError(f"cannot compile tokenizer regex {pattern!r}: {exc}") from None


@functools.lru_cache(maxsize=None)
def char_class(name: str):
    """A fast membership test ``(ch) -> bool`` for the Unicode property ``name`` (as in ``\\p{name}``)."""
    rx = compile_regex("[" + "\\p{" + name + "}]")
    return lambda ch: rx.match(ch) is not None


def is_whitespace(ch: str) -> bool:
    """Unicode White_Space (Rust's ``char::is_whitespace``)."""
    return ch in _WS_SET


def pattern_spec(spec: Any, where: str) -> tuple[str, str]:
    """{"String": s} | {"Regex": r} -> ("string"|"regex", value)."""
    if isinstance(spec, dict):
        if "String" in spec:
            return "string", spec["String"]
        if "Regex" in spec:
            return "regex", spec["Regex"]
    if isinstance(spec, str):
        return "string", spec
    raise TokenizerError(f"{where}: pattern must be {{'String': ...}} or {{'Regex': ...}}, got {spec!r}")
