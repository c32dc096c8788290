"""Generation, for every model: the decoding controls, the logits processors, the stopping criteria, the
streamers and the one loop.

- ``config``: ``GenerationConfig`` (from ``generation_config.json`` and call kwargs, validated);
- ``logits_process``: processors and warpers ``(input_ids, scores) -> scores``, ``build_logits_processor``,
  greedy / seeded sampling;
- ``stopping``: the stopping criteria and ``StopStrings``, the one stop-string matcher;
- ``streamers``: ``TextStreamer``, ``TextIteratorStreamer`` (text pieces as tokens arrive);
- ``loop``: ``generate_tokens(step, prompt, config)`` over a model's ``DecoderStep`` (the causal LM's in
  ``webformers.text.causal_lm``, Whisper's decoder in ``webformers.speech.whisper``).
"""
from .config import GenerationConfig
from .logits_process import (
    LogitsProcessor, LogitsProcessorList, MinNewTokensLengthLogitsProcessor, MinPLogitsWarper,
    NoBadWordsLogitsProcessor, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor, TemperatureLogitsWarper,
    TopKLogitsWarper, TopPLogitsWarper, build_logits_processor, greedy_next_token, sample_next_token, softmax,
)
from .loop import ContextLengthError, DecoderStep, generate_tokens
from .stopping import (
    CancelCriteria, EosTokenCriteria, MaxNewTokensCriteria, MaxTimeCriteria, StoppingCriteria,
    StoppingCriteriaList, StopStringCriteria, StopStrings, stopping_criteria,
)
from .streamers import BaseStreamer, StreamerList, TextIteratorStreamer, TextStreamer, generation_streamers

__all__ = [
    "GenerationConfig", "LogitsProcessor", "LogitsProcessorList", "MinNewTokensLengthLogitsProcessor",
    "MinPLogitsWarper", "NoBadWordsLogitsProcessor", "NoRepeatNGramLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor", "SuppressTokensLogitsProcessor",
    "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "build_logits_processor",
    "greedy_next_token", "sample_next_token", "softmax", "ContextLengthError", "DecoderStep", "generate_tokens",
    "CancelCriteria", "EosTokenCriteria", "MaxNewTokensCriteria", "MaxTimeCriteria", "StoppingCriteria",
    "StoppingCriteriaList", "StopStringCriteria", "StopStrings", "stopping_criteria", "BaseStreamer",
    "StreamerList", "TextIteratorStreamer", "TextStreamer", "generation_streamers",
]
