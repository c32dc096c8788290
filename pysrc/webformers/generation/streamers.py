"""Streamers: receive token ids as ``generate`` makes them and turn them into text.

``generate`` calls ``streamer.put(ids)`` once with the prompt, then once per new token, and
``streamer.end()`` when it stops. Text is produced by an incremental decoder, so a character split
over several byte-level tokens is only emitted once complete (never broken UTF-8, no U+FFFD).

- ``TextStreamer(tokenizer, skip_prompt=False, callback_function=None)``: each finalized piece of
  text goes to ``callback_function(text)`` (printed to stdout when there is none; a coroutine function's
  result is scheduled on the running event loop);
- ``TextIteratorStreamer(tokenizer, skip_prompt=True)``: ``async for text in streamer``;
- ``EventStreamer(tokenizer, skip_prompt=True)``: each piece as a ``{"status": "token", "text"}`` event and
  ``{"status": "stream-end", "text": everything}`` at the end, to ``webformers.configure(on_event=)``
  callbacks, ``webformers.events()`` iterators and the hosting page (``platform.emit_page_event``).

When generation has stop strings, the streamer holds back text that could be the start of one and
never emits a stop string or anything after it.
"""
from __future__ import annotations

import asyncio
import inspect
import sys

from ..text.tokenizer.stream import TokenStreamDecoder
from .stopping import StopStrings

__all__ = ["BaseStreamer", "TextStreamer", "TextIteratorStreamer", "EventStreamer", "StreamerList",
           "generation_streamers"]


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
        self._decoder = TokenStreamDecoder(tokenizer, skip_special_tokens)
        self._first = True
        self._in_generation = False
        self._pending = ""
        self._stopped = False
        self.set_stop_strings(stop_strings)

    def set_stop_strings(self, stop_strings) -> None:
        """Hold back text that could start one of ``stop_strings``; emit nothing from a stop string on."""
        self.stops = StopStrings(stop_strings)

    def put(self, value) -> None:
        ids = _ids_of(value)
        if self._first:
            self._first = False
            if self.skip_prompt:
                self._in_generation = True
                return
            for t in ids:
                piece = self._decoder.put(t)
                if piece:
                    self._emit(piece, False)
            self._in_generation = True
            return
        for t in ids:
            piece = self._decoder.put(t)
            if piece:
                self._push(piece)

    def _push(self, piece: str) -> None:
        if self._stopped:
            return
        if not self.stops:
            self._emit(piece, False)
            return
        self._pending += piece
        cut, found = self.stops.safe_prefix(self._pending)
        if found:
            self._stopped = True
        ready, self._pending = self._pending[:cut], ("" if found else self._pending[cut:])
        if ready:
            self._emit(ready, False)

    def end(self) -> None:
        tail = self._decoder.end()
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
                r = self.callback_function(text)
                if inspect.isawaitable(r):
                    asyncio.ensure_future(r)
            return
        print(text, flush=True, end="" if not stream_end else "\n", file=sys.stdout)


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


class EventStreamer(TextStreamer):
    """Streamed text as events: ``{"status": "token", "text": piece}`` per piece and ``{"status":
    "stream-end", "text": all of it}`` at the end, given to ``platform.emit_page_event`` (the
    ``webformers.configure(on_event=)`` callbacks, ``webformers.events()`` iterators and the hosting page's
    ``wfBridge.emit`` when there is one). ``extra`` keys are added to every event (e.g. ``{"name": ...}``)."""

    def __init__(self, tokenizer, skip_prompt: bool = True, skip_special_tokens: bool = True,
                 stop_strings=None, extra: dict | None = None):
        super().__init__(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=skip_special_tokens,
                         stop_strings=stop_strings)
        self.extra = dict(extra or {})

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        from ..platform import emit_page_event
        if text:
            emit_page_event({**self.extra, "status": "token", "text": text})
        if stream_end:
            emit_page_event({**self.extra, "status": "stream-end", "text": self.text})


class StreamerList(list):
    """Streamers fed together: each gets every ``put`` and the ``end``."""

    def put(self, value) -> None:
        for s in self:
            s.put(value)

    def end(self) -> None:
        for s in self:
            s.end()


def generation_streamers(streamer=None, callback_function=None, tokenizer=None, stop_strings=None) -> StreamerList:
    """What ``generate`` streams to: ``streamer`` (an object with ``put(ids)`` and ``end()``) and, for
    ``callback_function(text)``, a ``TextStreamer`` over ``tokenizer`` that skips the prompt. Streamers
    that hold back stop strings (``set_stop_strings``) are given ``stop_strings``."""
    out = StreamerList()
    if streamer is not None:
        if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
            raise TypeError("streamer must have put(ids) and end() methods (see TextStreamer)")
        out.append(streamer)
    if callback_function is not None:
        if tokenizer is None:
            raise ValueError("callback_function needs a tokenizer: pass tokenizer=... to generate")
        if not callable(callback_function):
            raise TypeError("callback_function must be callable (it receives each new text piece)")
        out.append(TextStreamer(tokenizer, skip_prompt=True, callback_function=callback_function))
    if stop_strings:
        for s in out:
            if callable(getattr(s, "set_stop_strings", None)):
                s.set_stop_strings(stop_strings)
    return out
