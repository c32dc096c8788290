"""The demo page's Python entry points, called by ``web/worker.js``: ``chat`` (text) and ``speech`` (Whisper)."""
