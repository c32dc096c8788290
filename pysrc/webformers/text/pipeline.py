"""``TextGenerationPipeline``: a prompt or a chat in, Hugging Face-shaped results out.

    pipe = await pipeline("text-generation", "webformers/tiny-random-llama", dtype="q4")
    await pipe("Once upon a time", max_new_tokens=20)
    # [{"generated_text": "Once upon a time ..."}]
    await pipe([{"role": "user", "content": "Hi"}], max_new_tokens=20)
    # [{"generated_text": [{"role": "user", ...}, {"role": "assistant", "content": "..."}]}]
"""
from __future__ import annotations

import asyncio

from ..generation.stopping import StopStrings
from ..runtime.forms import check_form_args
from ..store import ModelRepo
from .auto import AutoModelForCausalLM
from .tokenizer import AutoTokenizer

__all__ = ["TextGenerationPipeline"]


def _is_chat(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(
        isinstance(m, dict) and "role" in m for m in x)


def _to_list(ids) -> list[int]:
    if hasattr(ids, "ids"):  # an Encoding-like object
        ids = ids.ids
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], (list, tuple)):
        ids = ids[0]
    return [int(t) for t in ids]


class TextGenerationPipeline:
    """A ``CausalLM`` and its tokenizer: ``await pipe(text_or_chat, **generate_kwargs)``."""

    task = "text-generation"

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    async def from_pretrained(cls, model, *, dtype="auto", device="auto", revision: str = "main",
                              host: str | None = None, progress_callback=None, strict: bool = False,
                              max_bytes: int | None = None, execution: str = "auto",
                              max_memory=None) -> "TextGenerationPipeline":
        """Open ``model`` once and load its tokenizer and its model concurrently (both wait on the cache or
        the network); arguments as ``AutoModelForCausalLM.from_pretrained``. When either fails, the other's
        session is freed and the error raised."""
        form_request = check_form_args(execution, max_memory)
        repo = model if isinstance(model, ModelRepo) else await ModelRepo.open(
            model, revision=revision, host=host, progress_callback=progress_callback)
        tokenizer, lm = await asyncio.gather(
            AutoTokenizer.from_pretrained(repo),
            AutoModelForCausalLM.from_pretrained(repo, dtype=dtype, device=device, progress_callback=progress_callback,
                                                 strict=strict, max_bytes=max_bytes, execution=form_request),
            return_exceptions=True)
        for failed in (tokenizer, lm):
            if isinstance(failed, BaseException):
                if not isinstance(lm, BaseException):
                    lm.dispose()
                raise failed
        lm.tokenizer = tokenizer
        return cls(lm, tokenizer)

    async def __call__(self, text_inputs, *, return_full_text: bool = True, streamer=None,
                       callback_function=None, cancel=None, add_special_tokens: bool | None = None,
                       tools=None, **generate_kwargs):
        """Generate for a prompt string, a chat (list of ``{"role", "content"}``), or a list of either.

        Returns ``[{"generated_text": ...}]`` per input (a list of those for a list of inputs). For a
        prompt, ``generated_text`` is prompt + continuation (continuation only with
        ``return_full_text=False``); for a chat it is the messages plus the new assistant message
        (the new text only with ``return_full_text=False``). Stop strings are trimmed from the text.
        Other kwargs go to ``model.generate`` (``max_new_tokens``, ``do_sample``, ``stop_strings``, ...).
        """
        if isinstance(text_inputs, str) or _is_chat(text_inputs):
            return await self._one(text_inputs, return_full_text, streamer, callback_function, cancel,
                                   add_special_tokens, tools, generate_kwargs)
        if isinstance(text_inputs, (list, tuple)) and text_inputs and all(
                isinstance(x, str) or _is_chat(x) for x in text_inputs):
            return [await self._one(x, return_full_text, streamer, callback_function, cancel,
                                    add_special_tokens, tools, generate_kwargs) for x in text_inputs]
        raise TypeError("text-generation input must be a string, a chat (a list of {'role': ..., "
                        "'content': ...} dicts), or a non-empty list of those; got "
                        f"{type(text_inputs).__name__}")

    def _encode(self, inputs, add_special_tokens, tools) -> list[int]:
        tok = self.tokenizer
        if isinstance(inputs, str):
            if tools is not None:
                raise ValueError("tools= applies to chat input (a list of messages), not to a plain prompt")
            kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
            return _to_list(tok.encode(inputs, **kw))
        messages = [dict(m) for m in inputs]
        kw = {"add_generation_prompt": True}
        if tools is not None:
            kw["tools"] = tools
        rendered = tok.apply_chat_template(messages, tokenize=False, **kw)
        return _to_list(tok.encode(rendered, add_special_tokens=bool(add_special_tokens)))

    async def _one(self, inputs, return_full_text, streamer, callback_function, cancel,
                   add_special_tokens, tools, generate_kwargs):
        tok = self.tokenizer
        ids = self._encode(inputs, add_special_tokens, tools)
        out = await self.model.generate(ids, streamer=streamer, callback_function=callback_function,
                                        cancel=cancel, tokenizer=tok, **generate_kwargs)
        full = out[0].tolist()
        # decode the whole sequence and cut the prompt's text off (robust for decoders that drop a
        # leading space when a continuation is decoded on its own)
        all_text = tok.decode(full, skip_special_tokens=True)
        prompt_text = tok.decode(ids, skip_special_tokens=True)
        if all_text.startswith(prompt_text):
            new_text = all_text[len(prompt_text):]
        else:
            new_text = tok.decode(full[len(ids):], skip_special_tokens=True)
        stops = StopStrings(self.model.generation_config.update(**generate_kwargs).stop_strings)
        new_text = stops.trim(new_text)
        if not return_full_text:
            return [{"generated_text": new_text}]
        if isinstance(inputs, str):
            return [{"generated_text": inputs + new_text}]
        return [{"generated_text": [dict(m) for m in inputs] + [{"role": "assistant", "content": new_text}]}]

    def dispose(self) -> None:
        self.model.dispose()
