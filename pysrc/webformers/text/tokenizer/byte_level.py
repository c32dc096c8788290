"""The byte-level alphabet (GPT-2): each of the 256 byte values as one printable character.

``to_byte_level(text)`` spells the UTF-8 bytes of ``text`` in that alphabet (the ByteLevel normalizer and
pre-tokenizer); ``CHAR_TO_BYTE`` maps back (the ByteLevel decoder).
"""
from __future__ import annotations

__all__ = ["BYTE_TO_CHAR", "CHAR_TO_BYTE", "to_byte_level"]


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


def to_byte_level(text: str) -> str:
    # the latin-1 decoding of the UTF-8 bytes has one character per byte; BYTE_TO_CHAR is its translate table
    return text.encode("utf-8").decode("latin-1").translate(BYTE_TO_CHAR)
