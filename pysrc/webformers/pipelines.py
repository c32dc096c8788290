"""``pipeline(task, model)``: the task table.

    pipe = await pipeline("text-generation", "webformers/tiny-random-llama", dtype="q4")
    asr = await pipeline("automatic-speech-recognition", "openai/whisper-tiny.en")
"""
from __future__ import annotations

import importlib

from . import platform
from .runtime.forms import check_form_args

__all__ = ["pipeline", "SUPPORTED_TASKS"]

#: task -> (module, class): the pipeline class, imported when the task is first asked for
SUPPORTED_TASKS = {
    "text-generation": ("webformers.text.pipeline", "TextGenerationPipeline"),
    "automatic-speech-recognition": ("webformers.speech.pipeline", "AutomaticSpeechRecognitionPipeline"),
}
#: task modules that import without numpy (they wait for ``platform.packages_ready`` themselves, after
#: starting what does not need it: the tokenizer, the repo); the others are imported once numpy can be
_NUMPY_FREE = {"webformers.text.pipeline"}


async def pipeline(task: str, model, *, dtype="auto", device="auto", revision: str = "main", host: str | None = None,
                   progress_callback=None, strict: bool = False, max_bytes: int | None = None,
                   execution: str = "auto", max_memory=None):
    """Load the pipeline for ``task`` (``await`` it).

    Args:
        task: ``"text-generation"`` (a ``TextGenerationPipeline``: prompt or chat in, text out) or
            ``"automatic-speech-recognition"`` (an ``AutomaticSpeechRecognitionPipeline``: Whisper, audio in,
            text out).
        model: a repo id such as ``"webformers/tiny-random-llama"``, a local repo directory on CPython, or an
            open ``ModelRepo``.
        dtype: a dtype name (``"q4"``, ``"fp16"``, ... see ``webformers.DTYPES``), ``"auto"`` (the best
            quality the device runs natively, within ``max_bytes``), or ``{module: dtype}`` (Whisper:
            ``{"encoder_model": ..., "decoder_model_merged": ...}``).
        device: ``"wasm"``, ``"webgpu"`` or ``"auto"`` (WebGPU when an adapter exists).
        revision: the repo revision.
        host: where repos live: an http(s) URL prefix, a URL template with ``{model}``, ``{revision}`` and
            ``{file}``, or a local directory (default: ``WEBFORMERS_HOST`` / the page's origin).
        progress_callback: receives the store's download / cache events (``status``, ``file``, ...).
        strict: raise instead of falling back (a dtype the device cannot run natively, WebGPU without an
            adapter).
        max_bytes: the download budget for ``dtype="auto"``.
        execution: the execution form per module (``webformers.runtime.forms``): ``"auto"`` (fp32 weights on
            wasm when they fit ``max_memory``, else the stored file), ``"native"`` or ``"fp32"``; the files are
            the dtype's either way.
        max_memory: the memory budget for ``execution="auto"``: bytes or a size like ``"1.5GB"`` (default
            2.5 GB).

    Returns:
        The task's pipeline, ready to call (``await pipe(inputs, ...)``); ``pipe.dispose()`` frees its sessions.

    Raises:
        ValueError: an unknown task (the message lists the supported ones), no model, or what loading the
            model raises (repo not found, a file failing its sha256 check, an unknown or missing dtype /
            device, an unknown execution, a fallback with ``strict=True``, a repo without the task's modules).
        TokenizerError: the repo's tokenizer.json is invalid or unsupported.
    """
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"unknown pipeline task {task!r}; supported tasks: {', '.join(SUPPORTED_TASKS)}")
    if model is None:
        raise ValueError("pipeline needs a model: a repo id like 'webformers/tiny-random-llama'")
    form_request = check_form_args(execution, max_memory)
    module, name = SUPPORTED_TASKS[task]
    if module not in _NUMPY_FREE:
        await platform.packages_ready()
    cls = getattr(importlib.import_module(module), name)
    return await cls.from_pretrained(model, dtype=dtype, device=device, revision=revision, host=host,
                                     progress_callback=progress_callback, strict=strict, max_bytes=max_bytes,
                                     execution=form_request)
