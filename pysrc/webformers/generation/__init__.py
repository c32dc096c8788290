"""Generation, for every model: the decoding controls, the logits processors, the stopping criteria, the
streamers and the one loop.

- ``config``: ``GenerationConfig`` (from ``generation_config.json`` and call kwargs, validated);
- ``logits_process``: processors and warpers ``(input_ids, scores) -> scores``, ``build_logits_processor``,
  greedy / seeded sampling;
- ``stopping``: the stopping criteria and ``StopStrings``, the one stop-string matcher;
- ``streamers``: ``TextStreamer``, ``TextIteratorStreamer`` (text pieces as tokens arrive);
- ``loop``: ``generate_tokens(step, prompt, config)`` over a model's ``DecoderStep`` (the causal LM's in
  ``webformers.text.causal_lm``, Whisper's decoder in ``webformers.speech.whisper``).

The names below are imported from their submodule on first use: ``config``, ``stopping`` and ``streamers``
import without numpy, ``logits_process`` and ``loop`` with it (see ``platform.packages_ready``).
"""
from __future__ import annotations

import importlib

_NAMES = {
    "config": ["GenerationConfig"],
    "logits_process": [
        "LogitsProcessor", "LogitsProcessorList", "MinNewTokensLengthLogitsProcessor", "MinPLogitsWarper",
        "NoBadWordsLogitsProcessor", "NoRepeatNGramLogitsProcessor", "RepetitionPenaltyLogitsProcessor",
        "SuppressTokensAtBeginLogitsProcessor", "SuppressTokensLogitsProcessor", "TemperatureLogitsWarper",
        "TopKLogitsWarper", "TopPLogitsWarper", "build_logits_processor", "greedy_next_token", "sample_next_token",
        "softmax"],
    "loop": ["ContextLengthError", "DecoderStep", "generate_tokens"],
    "stopping": [
        "CancelCriteria", "EosTokenCriteria", "MaxNewTokensCriteria", "MaxTimeCriteria", "StoppingCriteria",
        "StoppingCriteriaList", "StopStringCriteria", "StopStrings", "stopping_criteria"],
    "streamers": ["BaseStreamer", "StreamerList", "TextIteratorStreamer", "TextStreamer", "generation_streamers"],
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'webformers.generation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
