"""The demo page's Python entry points, run in the page's worker (``callPage`` in web/ui/util.js) and on
CPython: ``chat`` (text generation) and ``speech`` (Whisper) with one verb set (``model_info``, ``load``,
``run``, ``loaded``, ``dispose``), and ``browser`` (environment, model cache) for what is about no one model."""
