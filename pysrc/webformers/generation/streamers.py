"""Streamers: receive token ids as ``generate`` makes them and turn them into text.

``generate`` calls ``streamer.put(ids)`` once with the prompt, then once per new token, and
``streamer.end()`` when it stops. Text is produced by an incremental decoder, so a character split
over several byte-level tokens is only emitted once complete (never broken UTF-8, no U+FFFD).

- ``TextStreamer(tokenizer, skip_prompt=False, callback_function=None)``: each finalized piece of
  text goes to ``callback_function(text)`` (printed to stdout when there is none);
- ``TextIteratorStreamer(tokenizer, skip_prompt=True)``: ``async for text in streamer``.

When generation has stop strings, the streamer holds back text that could be the start of one and
never emits a stop string or anything after it.
"""
from __future__ import annotations

import asyncio
import sys

__all__ = ["BaseStreamer", "TextStreamer", "TextIteratorStreamer", "IncrementalDecoder",
           "make_stream_decoder"]


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces.

    Works with any tokenizer that has ``decode(ids, skip_special_tokens=...)``: the newest tokens are
    decoded together with a few already-emitted ones (so that decoders which strip a leading space
    or merge bytes see their context), and text ending in an incomplete character (U+FFFD) is held
    back until the next token completes it.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def step(self, token_id: int) -> str:
        """Add one token; return the newly finished text ('' when a character is still incomplete)."""
        self.ids.append(int(token_id))
        dec = self.tokenizer.decode
        prefix_text = dec(self.ids[self.prefix_offset:self.read_offset],
                          skip_special_tokens=self.skip_special_tokens) if self.read_offset > self.prefix_offset else ""
        new_text = dec(self.ids[self.prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        if new_text.endswith("\ufffd"):
            return ""
        if len(new_text) <= len(prefix_text) and new_text.startswith(prefix_text):
            # a token that decodes to nothing (e.g. a skipped special token)
            self.read_offset = len(self.ids)
            return ""
        piece = new_text[len(prefix_text):]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return piece

    def flush(self) -> str:
        """At the end of the stream: the held-back text of an incomplete character, as decoded."""
        if self.read_offset >= len(self.ids):
            return ""
        dec = self.tokenizer.decode
        prefix_text = dec(self.ids[self.prefix_offset:self.read_offset],
                          skip_special_tokens=self.skip_special_tokens) if self.read_offset > self.prefix_offset else ""
        new_text = dec(self.ids[self.prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text):]


def make_stream_decoder(tokenizer, skip_special_tokens: bool = True):
    """The tokenizer's own incremental decoder (``tokenizer.stream_decoder(...)`` with
    ``put(id) -> str`` / ``end() -> str``, see ``webformers.text.tokenizers.TokenStreamDecoder``) when it
    has one, else ``IncrementalDecoder`` over ``tokenizer.decode``. Either way: ``step(id) -> str``
    and ``flush() -> str``."""
    factory = getattr(tokenizer, "stream_decoder", None)
    if callable(factory):
        dec = factory(skip_special_tokens=skip_special_tokens)
        if callable(getattr(dec, "put", None)) and callable(getattr(dec, "end", None)):
            return _Adapter(dec)
    return IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)


class _Adapter:
    def __init__(self, dec):
        self.dec = dec

    def step(self, token_id: int) -> str:
        return self.dec.put(int(token_id)) or ""

    def flush(self) -> str:
        return self.dec.end() or ""


def _ids_of(value) -> list[int]:
    """Flatten what ``put`` receives (an int, a list, a [1, n] array) into a list of ints."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, int):
        return [value]
    out: list[int] = []
    for v in value:
        if isinstance(v, (list, tuple)):
            if len(value) != 1:
                raise ValueError("streamers support batch size 1 only")
            out.extend(int(x) for x in v)
        else:
            out.append(int(v))
    return out


class BaseStreamer:
    def put(self, value) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class TextStreamer(BaseStreamer):
    """Decodes tokens incrementally; each finished piece of text goes to ``on_finalized_text``.

    ``callback_function(text)`` receives every piece (transformers.js style); without it the text is
    printed to stdout like transformers' ``TextStreamer``. ``skip_prompt`` drops the first ``put``
    (the prompt). ``text`` holds everything emitted so far.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, skip_special_tokens: bool = True,
                 callback_function=None, stop_strings=None, **decode_kwargs):
        if decode_kwargs:
            raise TypeError(f"unknown TextStreamer argument(s) {', '.join(decode_kwargs)}; valid: "
                            "tokenizer, skip_prompt, skip_special_tokens, callback_function, stop_strings")
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.skip_special_tokens = skip_special_tokens
        self.callback_function = callback_function
        self.text = ""
        self._decoder = make_stream_decoder(tokenizer, skip_special_tokens)
        self._first = True
        self._in_generation = False
        self._pending = ""
        self._stopped = False
        self.set_stop_strings(stop_strings)

    def set_stop_strings(self, stop_strings) -> None:
        if stop_strings is None:
            self.stop_strings = []
        else:
            self.stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)

    def put(self, value) -> None:
        ids = _ids_of(value)
        if self._first:
            self._first = False
            if self.skip_prompt:
                self._in_generation = True
                return
            for t in ids:
                piece = self._decoder.step(t)
                if piece:
                    self._emit(piece, False)
            self._in_generation = True
            return
        for t in ids:
            piece = self._decoder.step(t)
            if piece:
                self._push(piece)

    def _push(self, piece: str) -> None:
        if self._stopped:
            return
        if not self.stop_strings:
            self._emit(piece, False)
            return
        self._pending += piece
        cut, found = _stop_cut(self._pending, self.stop_strings)
        if found:
            self._stopped = True
        ready, self._pending = self._pending[:cut], ("" if found else self._pending[cut:])
        if ready:
            self._emit(ready, False)

    def end(self) -> None:
        tail = self._decoder.flush()
        if tail:
            if self._in_generation:
                self._push(tail)
            else:
                self._emit(tail, False)
        rest = "" if self._stopped else self._pending
        self._pending = ""
        self._emit(rest, True)

    def _emit(self, text: str, stream_end: bool) -> None:
        self.text += text
        self.on_finalized_text(text, stream_end)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if self.callback_function is not None:
            if text:
                self.callback_function(text)
            return
        print(text, flush=True, end="" if not stream_end else "\n", file=sys.stdout)


def _stop_cut(text: str, stops: list[str]) -> tuple[int, bool]:
    """(how much of ``text`` is safe to emit, whether a stop string was found)."""
    first = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (first is None or i < first):
            first = i
    if first is not None:
        return first, True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold, False


class TextIteratorStreamer(TextStreamer):
    """An async iterator of text pieces: start ``generate`` as a task, then ``async for text in s``.

    ``timeout`` (seconds) bounds the wait for each piece (``asyncio.TimeoutError`` when exceeded).
    """

    def __init__(self, tokenizer, skip_prompt: bool = True, skip_special_tokens: bool = True,
                 timeout: float | None = None, stop_strings=None):
        super().__init__(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=skip_special_tokens,
                         stop_strings=stop_strings)
        self.timeout = timeout
        self._queue: asyncio.Queue = asyncio.Queue()
        self._done = object()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._queue.put_nowait(text)
        if stream_end:
            self._queue.put_nowait(self._done)

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self.timeout is None:
            item = await self._queue.get()
        else:
            item = await asyncio.wait_for(self._queue.get(), self.timeout)
        if item is self._done:
            raise StopAsyncIteration
        return item
