"""Speech recognition: audio decoding and features (``audio``), the Whisper model and its pipeline (``whisper``)."""
