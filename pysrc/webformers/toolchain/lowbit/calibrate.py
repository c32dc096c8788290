"""Calibration statistics and calibrated (GPTQ) quantization of a torch decoder's linear layers.

- :func:`collect_hessians`: ``H = Σ xᵀx`` of every decoder ``Linear``'s inputs over calibration windows, in
  one forward pass of the full-precision model (hooks on the Linear inputs).
- :func:`gptq_model`: sequential GPTQ — decoder layer by decoder layer, the Hessians are gathered from the
  inputs the *already quantized* earlier layers produce, then each linear is quantized (:func:`.gptq.gptq_quantize`).

Both leave the model's weights as they were and key their results by the Linear's qualified name
(``model.layers.0.self_attn.q_proj``); :func:`.mapping.linear_initializers` maps those to ONNX initializers.
"""
from __future__ import annotations

import numpy as np

from .corpus import token_windows
from .gptq import gptq_quantize
from .grid import QuantizedWeight, check_bits, on_grid, rtn
from .layers import DecoderStates, decoder_layers, linear_modules

__all__ = ["collect_hessians", "gptq_model"]


class _HessianHooks:
    """Accumulate ``Σ xᵀx`` (float64) of the inputs of the given Linear modules while installed."""

    def __init__(self, named_linears):
        import torch

        self.h = {n: torch.zeros((m.in_features, m.in_features), dtype=torch.float64) for n, m in named_linears}
        self.count = {n: 0 for n, _ in named_linears}
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in named_linears]

    def _hook(self, name):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            self.h[name] += (x.T @ x).double()
            self.count[name] += x.shape[0]
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

    def result(self) -> dict:
        return {n: (h / max(self.count[n], 1)).numpy() for n, h in self.h.items()}


def collect_hessians(model, tokenizer=None, texts=None, *, ids=None, windows: int = 32, window: int = 256,
                     batch: int = 4) -> dict[str, np.ndarray]:
    """{Linear name: H [in, in] float64} — the mean ``xᵀx`` of each decoder Linear's input over the
    calibration windows (``ids`` [W, T], or ``windows`` x ``window`` tokens of ``texts`` — default
    :func:`.corpus.calibration_text` — encoded with ``tokenizer``), from one pass of ``model``."""
    import torch

    ids = torch.as_tensor(token_windows(tokenizer, texts, ids, windows, window))
    layers = decoder_layers(model)
    named = [(n, m) for i, layer in enumerate(layers) for n, m in linear_modules(layer, f"model.layers.{i}.")]
    hooks = _HessianHooks(named)
    try:
        with torch.no_grad():
            for i in range(0, len(ids), batch):
                model(input_ids=ids[i:i + batch], use_cache=False)
    finally:
        hooks.remove()
    return hooks.result()


def gptq_model(model, bits, tokenizer=None, texts=None, *, ids=None, windows: int = 32, window: int = 256,
               batch: int = 4, damp: float = 0.01, act_order: bool = True, skip_on_grid: bool = True,
               hessians: dict | None = None, log=None) -> dict[str, QuantizedWeight]:
    """{Linear name: QuantizedWeight} for every decoder Linear of ``model``, by sequential GPTQ.

    ``hessians`` ({Linear name: H}, e.g. :func:`collect_hessians`'s): one-pass GPTQ instead — every Linear
    quantized against the full-precision model's inputs, no forward pass (cheaper, and shareable between bit
    widths; sequential is more accurate at 1-2 bits).

    ``bits``: one width for all, or {Linear name: bits} (a per-layer plan; names missing from it are not
    quantized and stay full precision while the later layers are calibrated). With ``skip_on_grid``, a weight
    that already lies on its min/max grid (a 4-bit GGUF source at 4 bits) is kept by plain rounding.
    The model's weights are restored before returning.
    """
    import torch

    if hessians is not None:
        return _gptq_one_pass(model, bits, hessians, damp, act_order, skip_on_grid, log)
    ids = token_windows(tokenizer, texts, ids, windows, window)
    layers = decoder_layers(model)
    states = DecoderStates(model, ids, batch)
    out: dict[str, QuantizedWeight] = {}
    saved = {}
    try:
        for li, layer in enumerate(layers):
            named = linear_modules(layer, f"model.layers.{li}.")
            plan = {n: _bits_for(bits, n) for n, _ in named}
            todo = [(n, m) for n, m in named if plan[n] is not None]
            hooks = _HessianHooks(todo)
            try:
                states.advance(li, states.copy_hidden())
            finally:
                hooks.remove()
            hs = hooks.result()
            for n, m in todo:
                w_kn = m.weight.detach().float().numpy().T
                b = plan[n]
                if skip_on_grid and on_grid(w_kn, b):
                    q = rtn(w_kn, b, search=False)
                else:
                    q = gptq_quantize(w_kn, hs[n], b, damp=damp, act_order=act_order)
                out[n] = q
                saved[n] = m.weight.detach().clone()
                with torch.no_grad():
                    m.weight.copy_(torch.from_numpy(q.values()))
            states.advance(li)
            if log:
                log(f"gptq layer {li + 1}/{len(layers)}")
    finally:
        mods = dict(model.named_modules())
        with torch.no_grad():
            for n, w in saved.items():
                mods[n].weight.copy_(w)
    return out


def _gptq_one_pass(model, bits, hessians, damp, act_order, skip_on_grid, log):
    out: dict[str, QuantizedWeight] = {}
    layers = decoder_layers(model)
    for li, layer in enumerate(layers):
        for n, m in linear_modules(layer, f"model.layers.{li}."):
            b = _bits_for(bits, n)
            if b is None:
                continue
            if n not in hessians:
                raise ValueError(f"no calibration Hessian for {n}")
            w_kn = m.weight.detach().float().numpy().T
            if skip_on_grid and on_grid(w_kn, b):
                out[n] = rtn(w_kn, b, search=False)
            else:
                out[n] = gptq_quantize(w_kn, hessians[n], b, damp=damp, act_order=act_order)
        if log:
            log(f"gptq layer {li + 1}/{len(layers)}")
    return out


def _bits_for(bits, name):
    if isinstance(bits, dict):
        b = bits.get(name)
        return None if b is None or b >= 16 else check_bits(b)
    return check_bits(bits)
