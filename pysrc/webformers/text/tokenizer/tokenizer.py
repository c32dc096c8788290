"""``Tokenizer``: a pure-Python tokenizer built from ``tokenizer.json`` (+ ``tokenizer_config.json``).

No ``tokenizers`` / ``regex`` / ``tiktoken``: this runs unchanged in Pyodide. Encoding mirrors the HF
``tokenizers`` library step by step, so that ids and decoded text are identical:

    added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer -> model -> post-processor

``__call__``, ``decode``'s clean-up and ``apply_chat_template`` follow transformers.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence as _Seq

from .added_tokens import AddedToken, AddedTokenMatcher
from .decoders import build_decoder, clean_up_tokenization
from .errors import TokenizerError
from .models import build_model
from .normalizers import build_normalizer
from .post_processors import build_post_processor
from .pre_tokenizers import build_pre_tokenizer
from .stream import TokenStreamDecoder

__all__ = ["Tokenizer"]


def _token_content(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and "content" in v:
        return v["content"]
    raise TokenizerError(f"special token must be a string or {{'content': ...}}, got {v!r}")


def _load_json(value: Any, what: str) -> Any:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{what} is not valid JSON: {exc}") from None
    raise TokenizerError(f"{what} must be a dict, a JSON string or None, got {type(value).__name__}")


class Tokenizer:
    """A tokenizer built from the parsed contents of ``tokenizer.json`` and ``tokenizer_config.json``.

    Construct with :meth:`from_json` (no I/O). ``encode``/``decode`` match HF ``tokenizers``;
    ``__call__`` and ``apply_chat_template`` follow transformers.
    """

    def __init__(self, tokenizer_json: dict, tokenizer_config: dict | None = None,
                 chat_template: str | list | dict | None = None):
        if not isinstance(tokenizer_json, dict) or "model" not in tokenizer_json:
            raise TokenizerError("tokenizer.json must be an object with a 'model' entry")
        cfg = dict(tokenizer_config or {})
        self.config = cfg
        self.model = build_model(tokenizer_json["model"])
        self.normalizer = build_normalizer(tokenizer_json.get("normalizer"))
        self.pre_tokenizer = build_pre_tokenizer(tokenizer_json.get("pre_tokenizer"))
        self.post_processor = build_post_processor(tokenizer_json.get("post_processor"))
        self.decoder = build_decoder(tokenizer_json.get("decoder"))
        self.decoder_has_byte_fallback = '"ByteFallback"' in json.dumps(tokenizer_json.get("decoder"))
        self.truncation = tokenizer_json.get("truncation")
        self.padding = tokenizer_json.get("padding")

        self.added_tokens: dict[int, AddedToken] = {}
        for d in tokenizer_json.get("added_tokens") or []:
            tok = AddedToken(d)
            self.added_tokens[tok.id] = tok
        self.added_tokens_encoder = {t.content: i for i, t in self.added_tokens.items()}
        self.special_tokens = {t.content for t in self.added_tokens.values() if t.special}
        self.all_special_ids = sorted(i for i, t in self.added_tokens.items() if t.special)
        raw = [(t.content, t) for t in self.added_tokens.values() if not t.normalized]
        normed = [((self.normalizer(t.content) if self.normalizer else t.content), t)
                  for t in self.added_tokens.values() if t.normalized]
        self._raw_matcher = AddedTokenMatcher(raw)
        self._norm_matcher = AddedTokenMatcher(normed)

        self.vocab: dict[str, int] = dict(self.model.vocab)
        self.vocab.update(self.added_tokens_encoder)
        self._id_to_token: dict[int, str] = dict(zip(self.model.vocab.values(), self.model.vocab.keys()))
        # HF decodes a normalized added token through its normalized form (e.g. "Hello" -> "\u2581Hello").
        self._id_to_token.update({i: (self.normalizer(t.content) if t.normalized and self.normalizer else t.content)
                                  for i, t in self.added_tokens.items()})
        self._special_ids = frozenset(self.all_special_ids)

        self.bos_token = _token_content(cfg.get("bos_token"))
        self.eos_token = _token_content(cfg.get("eos_token"))
        self.pad_token = _token_content(cfg.get("pad_token"))
        self.unk_token = _token_content(cfg.get("unk_token"))
        if self.unk_token is None and getattr(self.model, "unk_token", None):
            self.unk_token = self.model.unk_token
        self.padding_side = cfg.get("padding_side", "right")
        self.truncation_side = cfg.get("truncation_side", "right")
        for side, name in ((self.padding_side, "padding_side"), (self.truncation_side, "truncation_side")):
            if side not in ("left", "right"):
                raise TokenizerError(f"tokenizer_config {name} must be 'left' or 'right', got {side!r}")
        mml = cfg.get("model_max_length")
        self.model_max_length = int(mml) if isinstance(mml, (int, float)) and mml < 1e12 else None
        self.clean_up_tokenization_spaces = bool(cfg.get("clean_up_tokenization_spaces", False))
        self.chat_template = chat_template if chat_template is not None else cfg.get("chat_template")

    # -- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, tokenizer_json: dict | str | bytes, tokenizer_config: dict | str | bytes | None = None,
                  chat_template: str | None = None) -> "Tokenizer":
        """Build from already-fetched file contents (dicts or JSON text). Does no I/O.

        ``chat_template``: the text of a separate ``chat_template.jinja`` if the repo has one (it
        overrides ``tokenizer_config['chat_template']``).
        """
        tj = _load_json(tokenizer_json, "tokenizer.json")
        if tj is None:
            raise TokenizerError("tokenizer.json is required")
        return cls(tj, _load_json(tokenizer_config, "tokenizer_config.json"), chat_template)

    @classmethod
    def from_directory(cls, path) -> "Tokenizer":
        """CPython convenience: read tokenizer.json, tokenizer_config.json and chat_template.jinja from a dir."""
        from pathlib import Path

        p = Path(path)
        if not (p / "tokenizer.json").exists():
            raise TokenizerError(f"no tokenizer.json in {p}")
        cfg = p / "tokenizer_config.json"
        tpl = p / "chat_template.jinja"
        return cls.from_json((p / "tokenizer.json").read_text(encoding="utf-8"),
                             cfg.read_text(encoding="utf-8") if cfg.exists() else None,
                             tpl.read_text(encoding="utf-8") if tpl.exists() else None)

    # -- vocabulary ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def token_to_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        return self.vocab.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._id_to_token.get(int(token_id))

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.token_to_id(tokens)
        return [self.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.id_to_token(ids)
        return [self.id_to_token(i) for i in ids]

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self.token_to_id(self.unk_token)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        out = {}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        for name in ("sep_token", "cls_token", "mask_token"):
            v = _token_content(self.config.get(name))
            if v is not None:
                out[name] = v
        return out

    # -- encoding -----------------------------------------------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        ids: list[int] = []
        model_tokenize = self.model.tokenize
        for s, e, tok in self._raw_matcher.split(text):
            if tok is not None:
                ids.append(tok.id)
                continue
            seg = text[s:e]
            if not seg:
                continue
            norm = self.normalizer(seg) if self.normalizer else seg
            for s2, e2, tok2 in self._norm_matcher.split(norm):
                if tok2 is not None:
                    ids.append(tok2.id)
                    continue
                piece = norm[s2:e2]
                if not piece:
                    continue
                pieces = [(piece, s == 0 and s2 == 0)]
                if self.pre_tokenizer is not None:
                    pieces = self.pre_tokenizer(pieces)
                for p, _ in pieces:
                    ids.extend(model_tokenize(p))
        return ids

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        pp = self.post_processor
        return pp.num_special(pair) if pp is not None else 0

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        """Token ids for ``text`` (and optionally ``text_pair``), like ``tokenizers.Tokenizer.encode(...).ids``.

        Truncation and padding configured in tokenizer.json are applied, as the HF library does
        (``__call__`` follows transformers instead: only what its arguments ask for).
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode() expects a str, got {type(text).__name__}")
        a = self._encode_text(text)
        b = self._encode_text(text_pair) if text_pair is not None else None
        if self.truncation:
            a, b = self._truncate(a, b, int(self.truncation.get("max_length", 512)), add_special_tokens,
                                  self.truncation.get("direction", "Right").lower())
        ids = self._post_process(a, b, add_special_tokens)
        return self._json_padding(ids) if self.padding else ids

    def _json_padding(self, ids: list[int]) -> list[int]:
        p = self.padding
        strategy = p.get("strategy")
        target = strategy["Fixed"] if isinstance(strategy, dict) and "Fixed" in strategy else len(ids)
        multiple = p.get("pad_to_multiple_of")
        if multiple and target % multiple:
            target += multiple - target % multiple
        k = target - len(ids)
        if k <= 0:
            return ids
        pad = [int(p.get("pad_id", 0))] * k
        return ids + pad if str(p.get("direction", "Right")).lower() == "right" else pad + ids

    def _post_process(self, a, b, add_special_tokens):
        if self.post_processor is None:
            return a + (b or [])
        return self.post_processor(a, b, add_special_tokens)

    def _truncate(self, a, b, max_length, add_special_tokens, direction):
        budget = max_length - (self.num_special_tokens_to_add(b is not None) if add_special_tokens else 0)
        budget = max(budget, 0)
        if b is None:
            if len(a) > budget:
                a = a[:budget] if direction == "right" else a[len(a) - budget:]
            return a, None
        while len(a) + len(b) > budget:  # longest first
            if len(a) >= len(b):
                a = a[:-1] if direction == "right" else a[1:]
            else:
                b = b[:-1] if direction == "right" else b[1:]
        return a, b

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return [self._id_to_token[i] for i in self.encode(text, add_special_tokens=add_special_tokens)]

    def __call__(self, text: str | _Seq[str], text_pair: str | _Seq[str] | None = None,
                 add_special_tokens: bool = True, padding: bool | str = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_attention_mask: bool = True) -> dict:
        """transformers-like batch encoding: ``{"input_ids": ..., "attention_mask": ...}``.

        ``padding``: False, True/"longest" or "max_length". ``return_tensors``: None (lists) or "np"
        (int64 numpy arrays, 2-D). Padding uses ``pad_token_id`` and ``padding_side`` from the config.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = None
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise TokenizerError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise TokenizerError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if return_tensors not in (None, "np"):
            raise TokenizerError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        limit = max_length if max_length is not None else self.model_max_length
        batch = []
        for i, t in enumerate(texts):
            a = self._encode_text(t)
            b = self._encode_text(pairs[i]) if pairs is not None else None
            if truncation:
                if limit is None:
                    raise TokenizerError("truncation=True needs max_length (the config has no model_max_length)")
                a, b = self._truncate(a, b, limit, add_special_tokens, self.truncation_side)
            batch.append(self._post_process(a, b, add_special_tokens))
        masks = [[1] * len(ids) for ids in batch]
        if padding in (True, "longest", "max_length"):
            if padding == "max_length":
                if limit is None:
                    raise TokenizerError("padding='max_length' needs max_length")
                target = limit
            else:
                target = max((len(x) for x in batch), default=0)
            pad_id = self.pad_token_id
            if pad_id is None:
                raise TokenizerError("padding needs a pad token: tokenizer_config has no usable 'pad_token'")
            for ids, mask in zip(batch, masks):
                k = target - len(ids)
                if k > 0:
                    if self.padding_side == "right":
                        ids.extend([pad_id] * k)
                        mask.extend([0] * k)
                    else:
                        ids[:0] = [pad_id] * k
                        mask[:0] = [0] * k
        if return_tensors == "np":
            import numpy as np

            if len({len(x) for x in batch}) > 1:
                raise TokenizerError("sequences have different lengths: pass padding=True to return arrays")
            out = {"input_ids": np.asarray(batch, dtype=np.int64).reshape(len(batch), -1)}
            if return_attention_mask:
                out["attention_mask"] = np.asarray(masks, dtype=np.int64).reshape(len(batch), -1)
            return out
        out = {"input_ids": batch[0] if single else batch}
        if return_attention_mask:
            out["attention_mask"] = masks[0] if single else masks
        return out

    # -- decoding -----------------------------------------------------------------------------------------
    def decoder_tokens(self, ids: Iterable[int], skip_special_tokens: bool = False) -> list[str]:
        """The strings the decoder joins for ``ids`` (unknown ids, and special ones when skipped, left out)."""
        toks = []
        special = self._special_ids
        get = self._id_to_token.get
        for i in ids:
            i = int(i)
            t = get(i)
            if t is None:  # out-of-vocabulary ids are skipped, as HF does
                continue
            if skip_special_tokens and i in special:
                continue
            toks.append(t)
        return toks

    def decode_tokens(self, toks: list[str]) -> str:
        """The decoder's text for ``decoder_tokens`` (no clean-up)."""
        if self.decoder is None:
            return " ".join(toks)
        return "".join(self.decoder(toks))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text for ``ids`` (HF ``tokenizers`` decode; then transformers' optional space clean-up)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        text = self.decode_tokens(self.decoder_tokens(ids, skip_special_tokens))
        cleanup = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if cleanup else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kw) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kw) for s in sequences]

    def stream_decoder(self, skip_special_tokens: bool = False,
                       clean_up_tokenization_spaces: bool | None = None) -> TokenStreamDecoder:
        """A ``TokenStreamDecoder`` over this tokenizer (text deltas as ids arrive)."""
        return TokenStreamDecoder(self, skip_special_tokens, clean_up_tokenization_spaces)

    # -- chat templates -----------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tools=None,
                            tokenize: bool = True, *, chat_template: str | None = None, documents=None,
                            continue_final_message: bool = False, return_dict: bool = False, **kwargs):
        """Render ``messages`` with the model's chat template (sandboxed jinja2, like transformers).

        Returns the prompt text if ``tokenize=False``; otherwise its ids (no extra special tokens added),
        or ``{"input_ids", "attention_mask"}`` with ``return_dict=True``. Extra ``kwargs`` are passed to the
        template (after the special tokens ``bos_token``, ``eos_token``, ...).
        """
        from ..chat_template import render_chat_template, select_chat_template

        template = select_chat_template(self.chat_template, chat_template, tools)
        variables = {**self.special_tokens_map, **kwargs}
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    tools=tools, documents=documents,
                                    continue_final_message=continue_final_message, **variables)
        if not tokenize:
            return text
        ids = self.encode(text, add_special_tokens=False)
        if return_dict:
            return {"input_ids": ids, "attention_mask": [1] * len(ids)}
        return ids
