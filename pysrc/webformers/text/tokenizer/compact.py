"""The compact form of a parsed ``tokenizer.json``, kept in the model store so that later loads skip the
JSON parse and the BPE merge-table build.

``dumps(tokenizer_json, tokenizer) -> bytes``: ``marshal`` of the tokenizer.json dict in which a BPE model's
``merges`` list is replaced by the table the ``Tokenizer`` resolved from it (``merge_table``: ``{(left id,
right id): (rank, merged id)}``). ``loads(data) -> dict`` gives that dict back, ready for ``Tokenizer(...)``.
Only built-in types are written, so reading it runs no code. ``KIND`` names the form (with the Python
version, whose ``marshal`` wrote it) in the store (``ModelRepo.derived``).
"""
from __future__ import annotations

import marshal
import sys

from .errors import TokenizerError

__all__ = ["KIND", "dumps", "loads"]

FORMAT = 1
KIND = f"tokenizer-compact-{FORMAT}-py{sys.version_info[0]}{sys.version_info[1]}"


def dumps(tokenizer_json: dict, tokenizer) -> bytes:
    """The compact form of ``tokenizer_json``, using the merge table ``tokenizer`` (built from it) resolved."""
    tj = dict(tokenizer_json)
    model = dict(tj["model"])
    table = getattr(tokenizer.model, "merges", None)
    if model.get("type", "BPE") == "BPE" and isinstance(table, dict):
        model.pop("merges", None)
        model["merge_table"] = table
    tj["model"] = model
    return marshal.dumps({"format": FORMAT, "tokenizer": tj})


def loads(data: bytes) -> dict:
    """The tokenizer.json dict of a compact form (``TokenizerError`` when ``data`` is not one)."""
    try:
        obj = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as exc:
        raise TokenizerError(f"not a compact tokenizer: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("tokenizer"), dict):
        raise TokenizerError(f"not a compact tokenizer of format {FORMAT}")
    return obj["tokenizer"]
