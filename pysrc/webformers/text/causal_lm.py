"""``AutoModelForCausalLM`` and ``AutoTokenizer``: async ``from_pretrained`` over the model store.

    tok = await AutoTokenizer.from_pretrained("webformers/tiny-random-llama", host=...)
    model = await AutoModelForCausalLM.from_pretrained("webformers/tiny-random-llama", dtype="q4")
    out = await model.generate(tok.encode("Once upon a time"), max_new_tokens=20)
    print(tok.decode(out[0].tolist()))
    print(model.last_generation_stats)

The same code runs in Pyodide (onnxruntime-web) and on CPython (onnxruntime).
"""
from __future__ import annotations

import numpy as np

from ..runtime import backend as _backend
from ..generation.config import GenerationConfig
from ..generation.loop import GenerationMixin

__all__ = ["AutoModelForCausalLM", "AutoTokenizer", "CausalLM", "open_repo"]

_ORT_TYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32}


async def open_repo(model, *, revision="main", host=None, progress_callback=None):
    """``model`` as an open ``ModelRepo`` (a repo id is opened; an open repo is returned as is)."""
    if not isinstance(model, str):
        if callable(getattr(model, "json", None)) and callable(getattr(model, "text", None)):
            return model
        raise TypeError(f"model must be a repo id like 'webformers/tiny-random-llama' or an open ModelRepo, "
                        f"got {type(model).__name__}")
    from ..store.repo import ModelRepo
    kw = {"revision": revision, "progress_callback": progress_callback}
    if host is not None:
        kw["host"] = host
    return await ModelRepo.open(model, **kw)


async def _optional_json(repo, name):
    """A repo JSON file that may be absent: {} when the repo does not have it."""
    opt = getattr(repo, "optional_json", None)
    if callable(opt):
        return (await opt(name)) or {}
    has = getattr(repo, "has", None)
    if callable(has):
        present = has(name)
        if hasattr(present, "__await__"):
            present = await present
        if not present:
            return {}
        return await repo.json(name)
    try:
        return await repo.json(name)
    except (FileNotFoundError, KeyError, LookupError):
        return {}


class AutoTokenizer:
    """``await AutoTokenizer.from_pretrained(model, revision=, host=, progress_callback=)``."""

    def __init__(self):
        raise TypeError("use: tokenizer = await AutoTokenizer.from_pretrained(model)")

    @staticmethod
    async def from_pretrained(model, *, revision="main", host=None, progress_callback=None):
        from .tokenizers import Tokenizer
        repo = await open_repo(model, revision=revision, host=host, progress_callback=progress_callback)
        tokenizer_json = await repo.text("tokenizer.json")
        tokenizer_config = await _optional_json(repo, "tokenizer_config.json")
        return Tokenizer.from_json(tokenizer_json, tokenizer_config)


class CausalLM(GenerationMixin):
    """A decoder-only language model on one backend session (see ``GenerationMixin.generate``).

    Attributes: ``config`` (config.json), ``generation_config``, ``session``, ``dtype``, ``device``,
    ``warnings`` (from loading), ``max_position_embeddings``, ``last_generation_stats``.
    """

    def __init__(self, session, config: dict, generation_config: GenerationConfig | None = None, *,
                 dtype: str | None = None, device: str | None = None, warnings=(), tokenizer=None,
                 backend=None):
        self.session = session
        self.config = dict(config)
        self.backend = backend if backend is not None else _backend
        self.dtype = dtype
        self.device = device if device is not None else getattr(session, "device", None)
        self.warnings = list(warnings)
        self.load_timings: dict = {}  # set by from_pretrained: see loading.Loaded.timings
        self.tokenizer = tokenizer
        gc = generation_config if generation_config is not None else GenerationConfig()
        if gc.eos_token_id is None and self.config.get("eos_token_id") is not None:
            gc = gc.update(eos_token_id=self.config["eos_token_id"])
        self.generation_config = gc
        cfg = self.config
        text_cfg = cfg.get("text_config") or {}
        get = lambda k: cfg.get(k, text_cfg.get(k))  # noqa: E731
        self.max_position_embeddings = get("max_position_embeddings")
        n_heads = get("num_attention_heads")
        self.num_kv_heads = get("num_key_value_heads") or n_heads
        self.head_dim = get("head_dim") or (get("hidden_size") // n_heads if n_heads and get("hidden_size") else None)
        self._check_layout()
        self.kv_dtype = self._kv_dtype()

    def _check_layout(self):
        names = self.session.input_names
        if "input_ids" not in names:
            raise ValueError(f"the model has no 'input_ids' input (inputs: {', '.join(names)}); not a decoder")
        if "logits" not in self.session.output_names:
            raise ValueError(f"the model has no 'logits' output (outputs: {', '.join(self.session.output_names)})")
        has_past = any(n.startswith("past_key_values.") for n in names)
        if has_past and (not self.num_kv_heads or not self.head_dim):
            raise ValueError("config.json lacks num_attention_heads / hidden_size (or head_dim), needed to "
                             "build the empty KV cache")

    def _kv_dtype(self):
        """The KV cache element type, as the session declares it (fp16 files converted with
        ``keep_io_types`` keep a float32 cache; onnx-community's q4f16 files use float16)."""
        types = getattr(self.session, "input_types", None) or {}
        for n, t in types.items():
            if n.startswith("past_key_values."):
                if t not in _ORT_TYPES:
                    raise ValueError(f"unsupported KV cache type {t} for {n}; supported: {', '.join(_ORT_TYPES)}")
                return np.dtype(_ORT_TYPES[t])
        return np.dtype(np.float32)

    @property
    def num_layers(self) -> int:
        return sum(1 for n in self.session.input_names if n.startswith("past_key_values.") and n.endswith(".key"))

    def dispose(self) -> None:
        """Free the KV cache and the session."""
        self.clear_cache()
        self.session.dispose()

    def __repr__(self):
        return (f"CausalLM(model_type={self.config.get('model_type')!r}, dtype={self.dtype!r}, "
                f"device={self.device!r}, layers={self.num_layers})")


class AutoModelForCausalLM:
    """``model = await AutoModelForCausalLM.from_pretrained(model, dtype=, device=, ...)``."""

    def __init__(self):
        raise TypeError("use: model = await AutoModelForCausalLM.from_pretrained(model)")

    @staticmethod
    async def from_pretrained(model, *, dtype="auto", device="auto", revision="main", host=None,
                              progress_callback=None, strict=False, max_bytes=None,
                              module: str = "model") -> CausalLM:
        """Open ``model`` (repo id or open ``ModelRepo``), load ``onnx/{module}{suffix}.onnx`` for
        ``dtype`` on ``device`` (fallbacks per the dtype registry unless ``strict``) and return a
        ``CausalLM``. Loading warnings (e.g. a dtype fallback) are in ``model.warnings``."""
        from ..runtime.load import load_sessions
        repo = await open_repo(model, revision=revision, host=host, progress_callback=progress_callback)
        config = await repo.json("config.json")
        gen = await _optional_json(repo, "generation_config.json")
        present = [f"present.{i}.{kv}" for i in range(int(config.get("num_hidden_layers", 0) or 0))
                   for kv in ("key", "value")]
        kw = {"dtype": dtype, "device": device, "strict": strict, "progress_callback": progress_callback,
              "keep_on_device": {module: present}}
        if max_bytes is not None:
            kw["max_bytes"] = max_bytes
        loaded = await load_sessions(repo, [module], **kw)
        dtypes = getattr(loaded, "dtypes", {}) or {}
        lm = CausalLM(loaded.sessions[module], config, GenerationConfig.from_dict(gen),
                      dtype=dtypes.get(module) if isinstance(dtypes, dict) else dtypes,
                      device=getattr(loaded, "device", None), warnings=getattr(loaded, "warnings", ()))
        lm.load_timings = dict(getattr(loaded, "timings", None) or {})
        return lm
