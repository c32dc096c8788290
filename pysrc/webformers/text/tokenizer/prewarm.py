r"""Imported before a Python memory snapshot is made (``webformers/assets/pyboot.js``, ``SNAPSHOT_PRELOAD``):
fills the caches a tokenizer build would otherwise fill on every visit, so that a restored interpreter has
them. They are the Unicode category table behind ``\p{..}`` (``regex.category_ranges``, a scan of every
code point) and the compiled pre-tokenizer patterns of the common tokenizer families (``compile_regex``).
"""
from __future__ import annotations

from .pre_tokenizers import GPT2_PATTERN
from .regex import category_ranges, compile_regex

#: tokenizer.json ``Split`` patterns of the Llama 3 and Qwen2 families, and BertPreTokenizer's
COMMON_PATTERNS = (
    GPT2_PATTERN,
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"\w+|[^\w\s]+",
)

category_ranges()
for _p in COMMON_PATTERNS:
    compile_regex(_p)
del _p
