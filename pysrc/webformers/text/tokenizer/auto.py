"""``AutoTokenizer.from_pretrained``: a model repo's ``Tokenizer``, read through the model store."""
from __future__ import annotations

import asyncio

from ... import platform
from . import compact
from .errors import TokenizerError
from .tokenizer import Tokenizer, _load_json

__all__ = ["AutoTokenizer"]

_PENDING: set = set()  # compact forms being stored


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
            ``tokenizer_config.json`` (special tokens, chat template, clean-up setting). Where files are
            cached, the parsed tokenizer is kept in its compact form (``compact.py``) beside tokenizer.json,
            and later loads read that instead while tokenizer.json's sha256 is unchanged.

        Raises:
            ValueError: the repo cannot be opened (no host, no manifest) or a file is missing or fails its
                sha256 check (``IntegrityError``).
            TokenizerError: ``tokenizer.json`` is invalid or uses an unsupported component (the message lists
                the supported ones).
        """
        from ...store import ModelRepo  # the store is only needed here; tokenizers alone stay light

        repo = model if isinstance(model, ModelRepo) else await ModelRepo.open(
            model, revision=revision, host=host, progress_callback=progress_callback)
        tokenizer_config = await repo.optional_json("tokenizer_config.json") or {}
        kept = await repo.derived("tokenizer.json", compact.KIND)
        if kept is not None:
            try:
                return Tokenizer(compact.loads(platform.byte_slice(kept, 0, platform.byte_length(kept))),
                                 tokenizer_config)
            except TokenizerError:
                pass  # not readable here: parsed from tokenizer.json below, and kept again
        tokenizer_json = _load_json(await repo.text("tokenizer.json"), "tokenizer.json")
        tokenizer = Tokenizer(tokenizer_json, tokenizer_config)
        keep = _keep(repo, tokenizer_json, tokenizer)
        if platform.IN_BROWSER:  # made and stored while the page goes on (the model loads next)
            task = asyncio.ensure_future(keep)
            _PENDING.add(task)  # the loop holds tasks weakly
            task.add_done_callback(_PENDING.discard)
        else:
            await keep
        return tokenizer


async def _keep(repo, tokenizer_json: dict, tokenizer: Tokenizer) -> None:
    """Make and store the compact form; a failure (quota, a closed cache) only costs the next load its parse."""
    await asyncio.sleep(0)  # in the browser: after the caller has its tokenizer
    try:
        await repo.put_derived("tokenizer.json", compact.KIND, compact.dumps(tokenizer_json, tokenizer))
    except Exception:
        pass
