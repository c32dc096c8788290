"""``AutoTokenizer.from_pretrained``: a model repo's ``Tokenizer``, read through the model store."""
from __future__ import annotations

from .tokenizer import Tokenizer

__all__ = ["AutoTokenizer"]


class AutoTokenizer:
    """``tokenizer = await AutoTokenizer.from_pretrained(model, revision=, host=, progress_callback=)``."""

    def __init__(self):
        raise TypeError("use: tokenizer = await AutoTokenizer.from_pretrained(model)")

    @staticmethod
    async def from_pretrained(model, *, revision: str = "main", host: str | None = None,
                              progress_callback=None) -> Tokenizer:
        """Load the tokenizer of ``model``.

        Args:
            model: a repo id such as ``"webformers/tiny-random-llama"`` (opened with ``ModelRepo.open``), a
                local repo directory on CPython, or an already open ``ModelRepo``.
            revision: the repo revision (ignored for an open ``ModelRepo``).
            host: where repos live: an http(s) URL prefix, a URL template with ``{model}``, ``{revision}``
                and ``{file}``, or a local directory (default: ``WEBFORMERS_HOST`` / the page's origin).
            progress_callback: receives the store's download / cache events (``status``, ``file``, ...).

        Returns:
            A ``Tokenizer`` built from the repo's ``tokenizer.json`` and, when present,
            ``tokenizer_config.json`` (special tokens, chat template, clean-up setting).

        Raises:
            ValueError: the repo cannot be opened (no host, no manifest) or a file is missing or fails its
                sha256 check (``IntegrityError``).
            TokenizerError: ``tokenizer.json`` is invalid or uses an unsupported component (the message lists
                the supported ones).
        """
        from ...store import ModelRepo  # the store is only needed here; tokenizers alone stay light

        repo = model if isinstance(model, ModelRepo) else await ModelRepo.open(
            model, revision=revision, host=host, progress_callback=progress_callback)
        tokenizer_json = await repo.text("tokenizer.json")
        tokenizer_config = await repo.optional_json("tokenizer_config.json") or {}
        return Tokenizer.from_json(tokenizer_json, tokenizer_config)
