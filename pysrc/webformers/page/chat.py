"""The demo page's chat entry points. The page (``web/app.js``) calls these in the worker through
``WebformersClient.runPython`` (``callPage`` in web/ui/util.js); they compose the library (``pipeline``,
the store, ``dtypes``), keeping the loaded pipeline in module state. ``speech`` has the same verbs for
Whisper; ``browser`` has what is not about one model (device, cache).

    await chat.model_info(model_id, device)        -> per-module dtype options: bytes, quality, native?
    await chat.load(model_id, dtype, device, max_bytes=None, execution="auto", max_memory=None)
                                                   -> what was loaded (dtypes, forms, device, ms)
    await chat.run(messages, settings)             -> reply + TTFT / tokens/s (text streamed as events)
    chat.loaded()                                  -> what is loaded (``load``'s result), or None
    chat.dispose()                                 -> frees the loaded model
    await chat.generate_ids(prompt_ids, max_new_tokens, **settings) -> new token ids (greedy checks)
    chat.reset_conversation()                      -> drops the kept KV cache

Events sent to the page (``webformers.platform.emit_page_event``): the store's progress/warning events
(``status`` in initiate/download/progress/done/ready/warning), plus ``{"status": "token", "text"}`` while
chatting and ``{"status": "loaded", ...}`` / ``{"status": "error", "message"}`` from this module.
"""
from __future__ import annotations

import time

from ..dtypes import DEVICES, check_device, device_support, get_dtype
from ..platform import emit_page_event, packages_ready, reset_stop, stop_requested
from ..runtime.forms import check_form_args
from ..runtime.plan import check_dtype_arg
from ..store import REPORT_PATH, ModelRepo

__all__ = ["model_info", "load", "run", "loaded", "dispose", "generate_ids", "reset_conversation",
           "dtype_support", "SETTINGS"]

#: generation settings the page may pass to ``run`` / ``generate_ids``: name -> (type, min, max).
SETTINGS = {
    "max_new_tokens": (int, 1, 4096),
    "temperature": (float, 0.0, 5.0),
    "top_k": (int, 0, 100000),
    "top_p": (float, 0.0, 1.0),
    "repetition_penalty": (float, 0.5, 5.0),
    "seed": (int, 0, 2**32 - 1),
}

_state: dict = {"pipe": None, "model": None, "info": None}


# --------------------------------------------------------------------------------------- dtypes

def dtype_support(dtype: str, device: str, adapter: dict) -> dict:
    """Whether ``dtype`` runs natively on ``device`` with ``adapter``, and if not why / what happens."""
    d = get_dtype(dtype)
    check_device(device)
    if device == "auto":
        device = "webgpu" if adapter.get("webgpu") else "wasm"
    if device == "webgpu" and not adapter.get("webgpu"):
        return {"native": False, "device": "wasm", "reason": "no WebGPU adapter: runs on wasm"}
    support = device_support(d, device, adapter.get("features") or ())
    if support.cpu_matmuls:
        return {"native": False, "device": device,
                "reason": f"its matmuls ({', '.join(d.ops[:1]) or 'ops'}) have no {device} kernel: "
                          f"they run on the CPU inside the {device} session"}
    if support.missing:
        return {"native": False, "device": device,
                "reason": f"the adapter lacks {', '.join(sorted(support.missing))}: loads {support.fallback} instead"}
    return {"native": True, "device": device, "reason": None}


async def model_info(model_id: str, device: str = "auto", host: str | None = None) -> dict:
    """Per module, every dtype the repo has with its download size, measured quality (from
    ``quantization_report.json``) and native support on ``device``."""
    check_device(device)
    kw = {"host": host} if host else {}
    repo = await ModelRepo.open(model_id, **kw)
    report = await repo.optional_json(REPORT_PATH) or {}
    await packages_ready()
    from ..runtime import backend

    adapter = await backend.adapter_info()
    rmods = report.get("modules") or {}
    modules = {}
    for module, dtypes in repo.manifest.modules.items():
        opts = []
        for name in dtypes:
            v = repo.manifest.variant(module, name)
            q = (rmods.get(module) or {}).get(name) or {}
            opts.append({
                "dtype": name, "bytes": v["bytes"], "files": list(v["files"]),
                "bits": get_dtype(name).bits, "description": get_dtype(name).description,
                "kl": q.get("kl"), "top1": q.get("top1"), "perplexity": q.get("perplexity", q.get("ppl")),
                "greedy_agreement": q.get("greedy_agreement"), "bits_per_weight": q.get("bits_per_weight"),
                "ratio": q.get("ratio"),
                "support": {dev: dtype_support(name, dev, adapter) for dev in DEVICES},
            })
        modules[module] = opts
    return {"model": model_id, "modules": modules, "has_report": bool(rmods),
            "reference": report.get("reference"), "adapter": adapter}


# --------------------------------------------------------------------------------------------- loading

def dispose() -> None:
    """Free the loaded model's sessions."""
    pipe = _state["pipe"]
    _state.update(pipe=None, model=None, info=None)
    if pipe is not None:
        pipe.dispose()


async def load(model_id: str, dtype="auto", device: str = "auto", max_bytes: int | None = None,
               host: str | None = None, execution: str = "auto", max_memory=None) -> dict:
    """Load ``model_id`` as a text-generation pipeline (replacing the loaded one). ``dtype`` is a name,
    ``"auto"`` or ``{module: dtype}``; ``max_bytes`` bounds the download for "auto" choices; ``execution``
    and ``max_memory`` choose the execution form (``runtime.forms``). Progress and warning events stream to
    the page; the result says what was loaded, in which form (``forms``) and how long it took."""
    from ..pipelines import pipeline

    request = check_dtype_arg(dtype)
    form_request = check_form_args(execution, max_memory)
    check_device(device)
    if max_bytes is not None:
        if isinstance(max_bytes, float) and max_bytes.is_integer():
            max_bytes = int(max_bytes)
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
    dispose()
    t0 = time.perf_counter()
    kw = {"host": host} if host else {}
    try:
        pipe = await pipeline("text-generation", model_id, dtype=request, device=device, max_bytes=max_bytes,
                              execution=form_request, **kw)
    except Exception as e:
        emit_page_event({"status": "error", "message": f"loading {model_id} failed: {e}"})
        raise
    ms = (time.perf_counter() - t0) * 1000.0
    lm = pipe.model
    info = {"model": model_id, "dtype": lm.dtype, "dtypes": {"model": lm.dtype}, "device": lm.device,
            "forms": dict(lm.load_timings.get("forms", {})),
            "requested": {"dtype": request.as_arg(), "device": device, "max_bytes": max_bytes,
                          "execution": form_request.execution, "max_memory": form_request.max_memory},
            "warnings": list(lm.warnings), "load_ms": round(ms, 1),
            "layers": lm.num_layers, "context": lm.max_position_embeddings}
    _state.update(pipe=pipe, model=model_id, info=info)
    emit_page_event({"status": "loaded", **{k: v for k, v in info.items() if k != "requested"}})
    return info


def loaded() -> dict | None:
    """What is loaded (``load``'s result), or None."""
    return _state["info"]


def _pipe():
    pipe = _state["pipe"]
    if pipe is None:
        raise RuntimeError("no model is loaded: load one first (chat.load(model_id, dtype, device))")
    return pipe


def _settings(settings: dict | None) -> dict:
    """Validated generate kwargs from the page's settings (temperature 0 = greedy)."""
    settings = dict(settings or {})
    bad = [k for k in settings if k not in SETTINGS]
    if bad:
        raise ValueError(f"unknown generation setting(s) {', '.join(bad)}; valid: {', '.join(SETTINGS)}")
    out = {}
    for k, v in settings.items():
        if v is None:
            continue
        typ, lo, hi = SETTINGS[k]
        try:
            val = typ(v)
        except (TypeError, ValueError):
            raise ValueError(f"{k} must be a number, got {v!r}") from None
        if typ is int and float(v) != val:
            raise ValueError(f"{k} must be a whole number, got {v!r}")
        if not lo <= val <= hi:
            raise ValueError(f"{k} must be between {lo} and {hi}, got {v!r}")
        out[k] = val
    temp = out.get("temperature")
    if temp is not None and temp > 0:
        out["do_sample"] = True
    else:
        out.pop("temperature", None)
        out["do_sample"] = False
    return out


def _stats(lm) -> dict:
    s = lm.last_generation_stats or {}
    keep = ("prompt_tokens", "reused_tokens", "new_tokens", "prefill_ms", "ttft_ms", "total_ms", "stop_reason",
            "tokens_per_s", "decode_tokens_per_s", "step_run_ms_mean", "step_overhead_ms_mean", "device")
    return {k: s.get(k) for k in keep}


async def run(messages: list, settings: dict | None = None) -> dict:
    """Answer the chat ``messages`` ([{"role", "content"}], rendered with the model's chat template),
    streaming each new piece of text as ``{"status": "token", "text"}``. The page's Stop
    (``webformers.platform.stop_requested``) is checked before every model run. Returns the reply and
    its timing."""
    pipe = _pipe()
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError("messages must be a non-empty list of {'role': 'system'|'user'|'assistant', "
                         "'content': str} dicts")
    kw = _settings(settings)
    reset_stop()
    n_pieces = 0

    def on_text(text):
        nonlocal n_pieces
        n_pieces += 1
        emit_page_event({"status": "token", "text": text})

    try:
        out = await pipe([dict(m) for m in messages], return_full_text=False, callback_function=on_text,
                         cancel=stop_requested, **kw)
    except Exception as e:
        emit_page_event({"status": "error", "message": f"generation failed: {e}"})
        raise
    finally:
        reset_stop()
    stats = _stats(pipe.model)
    emit_page_event({"status": "generated", **stats})
    return {"text": out[0]["generated_text"], "stats": stats, "pieces": n_pieces}


async def generate_ids(prompt_ids: list, max_new_tokens: int = 16, **settings) -> dict:
    """Generate from token ids (no chat template, EOS ignored): the new ids and the stats."""
    pipe = _pipe()
    if not isinstance(prompt_ids, list) or not prompt_ids or not all(isinstance(t, int) for t in prompt_ids):
        raise ValueError("prompt_ids must be a non-empty list of token ids (ints)")
    kw = _settings({"max_new_tokens": max_new_tokens, **settings})
    reset_stop()
    out = await pipe.model.generate(prompt_ids, eos_token_id=None, cancel=stop_requested, reuse_cache=False, **kw)
    return {"ids": [int(t) for t in out[0].tolist()[len(prompt_ids):]], "stats": _stats(pipe.model),
            "dtype": pipe.model.dtype, "device": pipe.model.device}


def reset_conversation() -> None:
    """Forget the KV cache kept for the conversation (the page's "Clear conversation")."""
    pipe = _state["pipe"]
    if pipe is not None:
        pipe.model.clear_cache()
