"""Speech recognition: audio decoding and log-mel features (``audio``), the Whisper model on its two ONNX
modules, decoded by the shared generation loop (``whisper``), and the ASR pipeline (``pipeline``)."""
