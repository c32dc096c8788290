"""Decoders (the ``decoder`` entry of tokenizer.json): ``build_decoder(spec)`` returns a function over the
tokens' strings ``[str] -> [str]``; their concatenation is the text.

Supported types: ByteLevel, ByteFallback, Fuse, Metaspace, Strip, Replace, WordPiece, BPEDecoder, Sequence.
``clean_up_tokenization`` is transformers' optional clean-up of the decoded text; ``is_byte_token`` tells
a ByteFallback ``<0xNN>`` token.
"""
from __future__ import annotations

from .byte_level import CHAR_TO_BYTE
from .errors import TokenizerError
from .pre_tokenizers import prepend_scheme
from .regex import compile_regex, pattern_spec

__all__ = ["build_decoder", "clean_up_tokenization", "is_byte_token"]


def clean_up_tokenization(s: str) -> str:
    """transformers' ``clean_up_tokenization`` (removes spaces before punctuation and contractions)."""
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


def is_byte_token(t: str) -> bool:
    """Whether ``t`` is a ByteFallback token ``<0xNN>``."""
    if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
        try:
            int(t[3:5], 16)
            return True
        except ValueError:
            return False
    return False


def _byte_level_decode(tokens: list[str]) -> list[str]:
    buf = bytearray()
    for t in tokens:
        try:
            buf.extend(CHAR_TO_BYTE[c] for c in t)
        except KeyError:
            buf.extend(t.encode("utf-8"))
    return [buf.decode("utf-8", errors="replace")]


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
        if is_byte_token(t):
            pending.append(int(t[3:5], 16))
            continue
        flush()
        out.append(t)
    flush()
    return out


def _wordpiece_cleanup(s: str) -> str:
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" do not", " don't")
            .replace(" 's", "'s").replace(" 've", "'ve").replace(" 're", "'re"))


def build_decoder(spec: dict | None):
    """The decoder ``spec`` describes (None for no decoder: tokens are then joined with spaces)."""
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
        strip_first = prepend_scheme(spec) != "never"

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
        kind, pat = pattern_spec(spec.get("pattern"), "Replace decoder")
        content = spec.get("content", "")
        if kind == "string":
            return lambda toks: [tok.replace(pat, content) if pat else tok for tok in toks]
        rx = compile_regex(pat)
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
