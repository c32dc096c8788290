"""Text generation: ``GenerationConfig``, logits processors, stopping criteria, streamers, the loop."""
from .config import GenerationConfig
from .logits_process import (
    LogitsProcessor, LogitsProcessorList, MinNewTokensLengthLogitsProcessor, MinPLogitsWarper,
    NoBadWordsLogitsProcessor, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    build_logits_processor, greedy_next_token, sample_next_token, softmax,
)
from .streamers import BaseStreamer, IncrementalDecoder, TextIteratorStreamer, TextStreamer
from .loop import (
    CancelCriteria, ContextLengthError, EosTokenCriteria, GenerationMixin, MaxNewTokensCriteria,
    MaxTimeCriteria, StopStringCriteria, StoppingCriteriaList, trim_stop_strings,
)

__all__ = [
    "GenerationConfig", "LogitsProcessor", "LogitsProcessorList", "MinNewTokensLengthLogitsProcessor",
    "MinPLogitsWarper", "NoBadWordsLogitsProcessor", "NoRepeatNGramLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor", "SuppressTokensLogitsProcessor", "TemperatureLogitsWarper",
    "TopKLogitsWarper", "TopPLogitsWarper", "build_logits_processor", "greedy_next_token",
    "sample_next_token", "softmax", "BaseStreamer", "IncrementalDecoder", "TextIteratorStreamer",
    "TextStreamer", "CancelCriteria", "ContextLengthError", "EosTokenCriteria", "GenerationMixin",
    "MaxNewTokensCriteria", "MaxTimeCriteria", "StopStringCriteria", "StoppingCriteriaList",
    "trim_stop_strings",
]
