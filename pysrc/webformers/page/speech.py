"""The demo page's speech-recognition entry points (in the worker, through Pyodide), and the same on
CPython: the verbs of ``chat`` for a Whisper model.

    grid = await speech.model_info("openai/whisper-tiny.en")       # the report's WER grid, chart-ready
    info = await speech.load("openai/whisper-tiny.en", dtype={"encoder_model": "q8",
                                                             "decoder_model_merged": "q4"}, device="wasm")
    res = await speech.run(float32array, sampling_rate=48000)      # a JS Float32Array from decodeAudioData
    res = await speech.run(uint8array)                             # WAV file bytes
    speech.loaded()                                                # ``load``'s result, or None
    speech.dispose()

Every function returns plain JSON-able data (dicts, lists, str, numbers). One pipeline is kept per worker:
loading again replaces (and frees) the previous one.
"""
from __future__ import annotations

from ..speech.pipeline import AutomaticSpeechRecognitionPipeline
from ..speech.whisper import DECODER, ENCODER

__all__ = ["model_info", "load", "run", "loaded", "dispose", "DEFAULT_MODEL"]

DEFAULT_MODEL = "openai/whisper-tiny.en"

_state: dict = {"pipe": None, "info": None}


async def load(model_id: str = DEFAULT_MODEL, dtype="auto", device: str = "auto", *, host: str | None = None,
               progress_callback=None, strict: bool = False) -> dict:
    """Load ``model_id`` with ``dtype`` (a name, "auto" or ``{"encoder_model": ..., "decoder_model_merged": ...}``)
    on ``device``, replacing the loaded one. Returns ``{"model", "dtypes": {module: dtype}, "device", "files",
    "warnings"}``."""
    pipe = await AutomaticSpeechRecognitionPipeline.from_pretrained(
        model_id, dtype=dtype, device=device, host=host, progress_callback=progress_callback, strict=strict)
    dispose()
    m = pipe.model
    info = {"model": model_id, "dtypes": dict(m.dtypes), "device": m.device, "files": list(m.files),
            "warnings": list(m.warnings)}
    _state.update(pipe=pipe, info=info)
    return info


def loaded() -> dict | None:
    """What is loaded (``load``'s result), or None."""
    return _state["info"]


async def run(audio, *, sampling_rate: int | None = None, max_new_tokens: int | None = None,
              return_chunks: bool = False) -> dict:
    """Transcribe a JS ``Float32Array`` (samples at ``sampling_rate``, default 16 kHz), WAV bytes
    (``Uint8Array`` / ``ArrayBuffer`` / ``bytes``) or a numpy array. Returns ``{"text", "chunks"?, "stats"}``."""
    pipe = _state["pipe"]
    if pipe is None:
        raise RuntimeError("no speech-recognition model is loaded: call speech.load(model_id, dtype=...) first")
    out = await pipe(audio, sampling_rate=sampling_rate, max_new_tokens=max_new_tokens, return_chunks=return_chunks)
    res = {"text": out["text"], "stats": pipe.last_stats}
    if return_chunks:
        res["chunks"] = [{"timestamp": list(c["timestamp"]), "text": c["text"]} for c in out["chunks"]]
    return res


async def model_info(model_id: str = DEFAULT_MODEL, *, host: str | None = None) -> dict:
    """The measured WER grid of ``model_id``'s ``quantization_report.json``, ready for a heat map / scatter:

    ``{"dtypes": [...], "matrix": [[wer for each decoder dtype] for each encoder dtype],
    "bytes": [[...]], "grid": [{"encoder_model", "decoder_model_merged", "wer", "bytes"}, ...],
    "recommended": {...}, "module_bytes": {module: {dtype: bytes}}}``."""
    from ..store import ModelRepo

    repo = await ModelRepo.open(model_id, host=host)
    report = await repo.optional_json("quantization_report.json")
    if not report or "grid" not in report:
        raise ValueError(f"{model_id} has no WER grid (quantization_report.json with a 'grid'); "
                         f"it is built by webformers.toolchain.whisper.convert")
    grid = report["grid"]
    order = list(report["modules"][ENCODER])
    cell = {(g[ENCODER], g[DECODER]): g for g in grid}
    matrix = [[cell.get((e, d), {}).get("wer") for d in order] for e in order]
    sizes = [[cell.get((e, d), {}).get("bytes") for d in order] for e in order]
    return {"model": model_id, "dtypes": order, "rows": ENCODER, "columns": DECODER, "matrix": matrix, "bytes": sizes,
            "grid": grid, "recommended": report.get("recommended"),
            "module_bytes": {m: {d: v["bytes"] for d, v in report["modules"][m].items()} for m in (ENCODER, DECODER)}}


def dispose() -> None:
    """Free the loaded model's sessions."""
    pipe = _state["pipe"]
    if pipe is not None:
        pipe.dispose()
    _state.update(pipe=None, info=None)
