"""Run a transformers decoder-only model (Llama family) one decoder layer at a time on cached inputs.

``DecoderStates(model, ids)`` runs the embedding once per mini-batch and records what the first decoder
layer receives (hidden states and keyword arguments: mask, rotary position embeddings, ...). The states can
then be pushed through layer ``i`` (:meth:`advance`), and logits computed from any layer on
(:meth:`logits_from`) — what sequential GPTQ and per-layer sensitivity need, without full forwards.
"""
from __future__ import annotations

import numpy as np


class _Captured(Exception):
    pass


def decoder_layers(model):
    """The decoder layer list of a ``*ForCausalLM`` (``model.model.layers``)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or getattr(base, "norm", None) is None or getattr(model, "lm_head", None) is None:
        raise ValueError(f"{type(model).__name__}: expected a decoder-only causal LM with model.layers, "
                         "model.norm and lm_head (the Llama layout)")
    return layers


def linear_modules(module, prefix: str = ""):
    """[(qualified name, torch.nn.Linear)] under ``module``."""
    import torch

    return [(f"{prefix}{n}" if n else prefix.rstrip("."), m) for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear)]


class DecoderStates:
    """Per-mini-batch decoder states of ``model`` on token windows ``ids`` [W, T]."""

    def __init__(self, model, ids, batch: int = 4):
        import torch

        self.model = model
        self.layers = decoder_layers(model)
        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        self.hidden, self.kwargs = [], []
        captured = {}

        def grab(_mod, args, kwargs):
            captured["h"] = args[0] if args else kwargs.pop("hidden_states")
            captured["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            raise _Captured

        hook = self.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                for i in range(0, len(ids), batch):
                    try:
                        model(input_ids=ids[i:i + batch], use_cache=False)
                    except _Captured:
                        pass
                    self.hidden.append(captured["h"].detach())
                    self.kwargs.append(captured["kw"])
        finally:
            hook.remove()
        self.ids = ids
        self.batch = batch

    def copy_hidden(self) -> list:
        return [h.clone() for h in self.hidden]

    def advance(self, i: int, hidden=None) -> list:
        """Hidden states after layer ``i`` (from ``hidden``, default the stored states, which are replaced)."""
        import torch

        src = self.hidden if hidden is None else hidden
        with torch.no_grad():
            out = [_tensor(self.layers[i](h, **kw)) for h, kw in zip(src, self.kwargs)]
        if hidden is None:
            self.hidden = out
        return out

    def logits_from(self, i: int, hidden) -> list:
        """Logits (float32, one tensor per mini-batch) running layers ``i..`` then the final norm and lm_head."""
        import torch

        with torch.no_grad():
            out = []
            for h, kw in zip(hidden, self.kwargs):
                for layer in self.layers[i:]:
                    h = _tensor(layer(h, **kw))
                out.append(self.model.lm_head(self.model.model.norm(h)).float())
        return out


def _tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x
