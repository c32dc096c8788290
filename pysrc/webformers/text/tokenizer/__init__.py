"""The pure-Python tokenizer: ``tokenizer.json`` (+ ``tokenizer_config.json``) with ids and text identical
to the HF ``tokenizers`` library, in Pyodide and on CPython.

- ``tokenizer``: ``Tokenizer`` (encode, decode, ``__call__``, ``apply_chat_template``);
- ``auto``: ``AutoTokenizer.from_pretrained`` through the model store;
- ``stream``: ``TokenStreamDecoder``, text deltas while ids arrive;
- the pipeline's components, one module each: ``normalizers``, ``pre_tokenizers``, ``models`` (BPE,
  WordPiece), ``decoders``, ``post_processors``, ``added_tokens``; ``regex`` (Unicode classes and the
  oniguruma-to-``re`` translation), ``byte_level`` (the GPT-2 byte alphabet), ``errors``.
"""
from .auto import AutoTokenizer
from .decoders import build_decoder, clean_up_tokenization
from .errors import TokenizerError
from .models import build_model
from .normalizers import build_normalizer
from .post_processors import build_post_processor
from .pre_tokenizers import GPT2_PATTERN, build_pre_tokenizer
from .regex import category_ranges, property_ranges, translate_regex
from .stream import TokenStreamDecoder
from .tokenizer import Tokenizer

__all__ = [
    "Tokenizer", "AutoTokenizer", "TokenStreamDecoder", "TokenizerError", "build_normalizer",
    "build_pre_tokenizer", "build_model", "build_decoder", "build_post_processor", "translate_regex",
    "category_ranges", "property_ranges", "clean_up_tokenization", "GPT2_PATTERN",
]
