"""The desktop model toolchain (CPython, torch/transformers/onnx): it owns turning a model into a
webformers repo and measuring it. The runtime never imports it.

- ``convert``: a Hugging Face dir or GGUF file → fp32 ONNX decoder with KV cache (``export``) → every dtype
  the toolchain builds (``quantize/``, one module per method) → manifest → quality report and chart
  (``evaluate``, with its own reference decoding loop);
- ``demo`` / ``whisper/``: the demo models (tiny random Llama, SmolLM2, Whisper tiny.en), built once into
  the content-keyed cache of ``buildcache``.
- ``lowbit/``: 1/2/4-bit decoder weights by calibration (GPTQ on fitted grids) or quantization-aware
  training, written into the layouts of ``quantize/``; ``lowbit.build`` makes the converter's q2 / q2f16 /
  q1 / q1f16 variants (GPTQ by default, ``qat_steps`` for QAT) and ``qmix`` (bits per layer under a byte
  budget); each report row's ``method`` says which (rtn / calibrated / qat / budget).

Public API (imports are lazy: torch/transformers load only when used)::

    convert(src, out, *, dtypes=DECODER_DTYPES, external_data=False, report=True, calibrate=True,
            qat_steps=0, budget=None, lowbit=None) -> dict
    make_variant(fp32_model, dtype) -> onnx.ModelProto
    build_demo_models(out_root, which=("tiny", "smollm2")) -> {name: Path}
    reference_greedy(repo_dir, dtype, prompt_ids, n, eos_token_id=None) -> list[int]
    evaluate_repo(repo_dir, dtypes, ...) -> report dict
"""
from __future__ import annotations

import importlib

_LAZY = {
    "convert": "convert", "ConvertError": "convert", "load_source": "convert",
    "SUPPORTED_ARCHITECTURES": "convert", "DECODER_DTYPES": "convert",
    "make_variant": "quantize", "SUPPORTED": "quantize",
    "export_decoder": "export",
    "evaluate_repo": "evaluate", "reference_greedy": "evaluate",
    "write_chart": "evaluate", "held_out_text": "evaluate",
    "build_demo_models": "demo", "toolchain_fingerprint": "demo",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
