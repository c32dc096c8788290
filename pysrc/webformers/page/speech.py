"""What a page's speech-recognition tab calls (in the worker, through Pyodide), and the same on CPython.

    info = await load_asr("openai/whisper-tiny.en", dtype={"encoder_model": "q8",
                                                            "decoder_model_merged": "q4"}, device="wasm")
    res = await transcribe(float32array, sampling_rate=48000)   # a JS Float32Array from decodeAudioData
    res = await transcribe(uint8array)                           # WAV file bytes
    chart = await wer_grid("openai/whisper-tiny.en")            # the report's WER grid, chart-ready
    dispose()

Every function returns plain JSON-able data (dicts, lists, str, numbers). One pipeline is kept per worker:
loading again replaces (and frees) the previous one.
"""
from __future__ import annotations

from ..speech.pipeline import AutomaticSpeechRecognitionPipeline
from ..speech.whisper import DECODER, ENCODER

__all__ = ["load_asr", "transcribe", "wer_grid", "dispose", "current", "DEFAULT_MODEL"]

DEFAULT_MODEL = "openai/whisper-tiny.en"

_state: dict = {"pipe": None, "model": None}


def current():
    """The loaded ``AutomaticSpeechRecognitionPipeline`` (None before ``load_asr``)."""
    return _state["pipe"]


async def load_asr(model: str = DEFAULT_MODEL, *, dtype="auto", device="auto", host: str | None = None,
                   progress_callback=None, strict: bool = False) -> dict:
    """Load ``model`` with ``dtype`` (a name, "auto" or ``{"encoder_model": ..., "decoder_model_merged": ...}``)
    on ``device``. Returns ``{"model", "dtypes": {module: dtype}, "device", "files", "warnings"}``."""
    if hasattr(dtype, "to_py"):  # a JS object from the page
        dtype = dtype.to_py()
    pipe = await AutomaticSpeechRecognitionPipeline.from_pretrained(
        model, dtype=dtype, device=device, host=host, progress_callback=progress_callback, strict=strict)
    dispose()
    _state.update(pipe=pipe, model=model)
    m = pipe.model
    return {"model": model, "dtypes": dict(m.dtypes), "device": m.device, "files": list(m.files),
            "warnings": list(m.warnings)}


async def transcribe(audio, *, sampling_rate: int | None = None, max_new_tokens: int | None = None,
                     return_chunks: bool = False) -> dict:
    """Transcribe a JS ``Float32Array`` (samples at ``sampling_rate``, default 16 kHz), WAV bytes
    (``Uint8Array`` / ``ArrayBuffer`` / ``bytes``) or a numpy array. Returns ``{"text", "chunks"?, "stats"}``."""
    pipe = _state["pipe"]
    if pipe is None:
        raise RuntimeError("no speech-recognition model is loaded: call load_asr(model, dtype=...) first")
    out = await pipe(audio, sampling_rate=sampling_rate, max_new_tokens=max_new_tokens, return_chunks=return_chunks)
    res = {"text": out["text"], "stats": pipe.last_stats}
    if return_chunks:
        res["chunks"] = [{"timestamp": list(c["timestamp"]), "text": c["text"]} for c in out["chunks"]]
    return res


async def wer_grid(model: str = DEFAULT_MODEL, *, host: str | None = None) -> dict:
    """The measured WER grid of ``model``'s ``quantization_report.json``, ready for a heat map / scatter:

    ``{"dtypes": [...], "matrix": [[wer for each decoder dtype] for each encoder dtype],
    "bytes": [[...]], "grid": [{"encoder_model", "decoder_model_merged", "wer", "bytes"}, ...],
    "recommended": {...}, "module_bytes": {module: {dtype: bytes}}}``."""
    from ..store import ModelRepo

    repo = await ModelRepo.open(model, host=host)
    report = await repo.optional_json("quantization_report.json")
    if not report or "grid" not in report:
        raise ValueError(f"{model} has no WER grid (quantization_report.json with a 'grid'); "
                         f"it is built by webformers.toolchain.whisper.convert")
    grid = report["grid"]
    order = list(report["modules"][ENCODER])
    cell = {(g[ENCODER], g[DECODER]): g for g in grid}
    matrix = [[cell.get((e, d), {}).get("wer") for d in order] for e in order]
    sizes = [[cell.get((e, d), {}).get("bytes") for d in order] for e in order]
    return {"model": model, "dtypes": order, "rows": ENCODER, "columns": DECODER, "matrix": matrix, "bytes": sizes,
            "grid": grid, "recommended": report.get("recommended"),
            "module_bytes": {m: {d: v["bytes"] for d, v in report["modules"][m].items()} for m in (ENCODER, DECODER)}}


def dispose() -> None:
    """Free the loaded model's sessions."""
    pipe = _state["pipe"]
    if pipe is not None:
        pipe.dispose()
    _state.update(pipe=None, model=None)
