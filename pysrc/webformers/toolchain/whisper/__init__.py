"""Whisper tiny.en: CTranslate2 files to an ONNX repo with per-module dtypes (``convert``), and the WER
evaluation on spoken sentences (``eval``).
"""
