"""``TokenStreamDecoder``: text deltas from token ids that arrive one at a time (streaming generation).

Works with webformers' ``Tokenizer`` (windows of its decoder-level tokens) and with any tokenizer that has
``decode(ids, skip_special_tokens=...)`` (windows of ids through that ``decode``).
"""
from __future__ import annotations

from typing import Iterable

from .decoders import clean_up_tokenization, is_byte_token

__all__ = ["TokenStreamDecoder"]


class TokenStreamDecoder:
    """Feed token ids one at a time, get text deltas; never emits a broken UTF-8 sequence.

    ``"".join(deltas) + end()`` equals ``tokenizer.decode(all_ids)``. Decoding works on a small window of
    recent tokens (cost independent of the sequence length): text is emitted once the window's text grows
    and does not end in U+FFFD (an incomplete byte sequence is held back until it completes). With
    ``clean_up_tokenization_spaces`` the text is cleaned in chunks cut right before a space, where the
    clean-up rules cannot reach across (default: the tokenizer's ``clean_up_tokenization_spaces``).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False,
                 clean_up_tokenization_spaces: bool | None = None):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        tokens_of = getattr(tokenizer, "decoder_tokens", None)
        if callable(tokens_of) and callable(getattr(tokenizer, "decode_tokens", None)):
            self._tokens_of = lambda ids: tokens_of(ids, skip_special_tokens)
            self._text_of = tokenizer.decode_tokens
            # ByteFallback decodes a run of <0x..> tokens as a whole (all U+FFFD if any byte is invalid),
            # so a run's text is only final once a non-byte token follows it.
            self._hold_byte_runs = bool(getattr(tokenizer, "decoder_has_byte_fallback", False))
        else:
            self._tokens_of = list
            self._text_of = lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
            self._hold_byte_runs = False
        default_cleanup = getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self.cleanup = bool(default_cleanup if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces)
        self.reset()

    def reset(self) -> None:
        self.tokens: list = []  # the window units: decoder-level tokens (special ones already filtered) or ids
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self._pending = ""  # raw text held back for clean-up
        self._raw_emitted = ""  # raw (pre clean-up) text handed to _emit
        self.text = ""  # everything emitted so far

    def _window(self, a: int, b: int | None = None) -> str:
        return self._text_of(self.tokens[a:b])

    def put(self, token_id: int | Iterable[int]) -> str:
        """Add one id (or several); return the newly completed text (possibly "")."""
        if isinstance(token_id, int) or hasattr(token_id, "__index__"):
            new_ids = [int(token_id)]
        else:
            new_ids = [int(i) for i in token_id]
        self.ids.extend(new_ids)
        self.tokens.extend(self._tokens_of(new_ids))
        if self._hold_byte_runs and self.tokens and is_byte_token(self.tokens[-1]):
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
