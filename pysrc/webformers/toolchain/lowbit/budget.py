"""Bits per layer under a byte budget.

- :func:`measure_sensitivity`: for every decoder Linear and bit width, the mean KL(fp32 || model) of the
  next-token distributions when only that Linear is lowered (optionally also the token table, ``"lm_head"``);
  ``per_layer``: one entry per decoder layer, its Linears lowered together (:func:`layer_key`), which the
  plan then gives one width (:func:`layer_sizes`, :func:`expand_plan`).
- :func:`weight_bytes` / :func:`table_bytes`: the bytes a weight adds to the file at a bit width (what
  :mod:`.graph` writes for it).
- :func:`choose_bits`: the per-layer plan of least predicted loss (the sum of the layers' KLs) whose bytes
  fit the budget — an exact multiple-choice knapsack over byte units (sizes rounded up, so the plan never
  exceeds the budget).
"""
from __future__ import annotations

import math

import numpy as np

from .corpus import token_windows
from .grid import BLOCKS, check_bits, rtn
from .layers import DecoderStates, decoder_layers, linear_modules

TABLE = "lm_head"   # the plan's key for the tied token table


def weight_bytes(k: int, n: int, bits: int) -> int:
    """Bytes of the initializers :func:`.graph.write_matmuls` adds for a [K, N] weight at ``bits`` (32 / 16:
    the float weight itself)."""
    if bits in (32, 16):
        return k * n * bits // 8
    bits = check_bits(bits)
    if bits == 1:
        nb = -(-k // BLOCKS[1])
        pads = 32 if k % BLOCKS[1] else 0
        return n * k // 8 + 2 * n * nb + 16 + 24 + pads
    nb = k // BLOCKS[bits]
    return n * k * bits // 8 + 2 * n * nb + 20 + 24 + 8


def table_bytes(v: int, k: int, bits: int) -> int:
    """Bytes of the tied [V, K] token table at ``bits`` (:func:`.graph.write_tied_table`)."""
    if bits in (32, 16):
        return v * k * bits // 8
    if bits == 1:
        return v * k // 8 + 2 * v * -(-k // 128)
    if bits == 8:
        return v * k + 2 * v * (k // 32)
    if bits in (2, 4):
        nb = k // 32
        return v * k * bits // 8 + 2 * v * nb + v * ((nb * bits + 7) // 8)
    raise ValueError(f"unsupported table bit width {bits!r}; valid: 1, 2, 4, 8, 16, 32")


def _kl(ref_logp, logits) -> float:
    import torch

    lp = torch.log_softmax(logits.double(), -1)
    return float((ref_logp.exp() * (ref_logp - lp)).sum(-1).mean())


def layer_key(name: str) -> str:
    """The decoder layer a Linear belongs to (``model.layers.3.mlp.up_proj`` → ``model.layers.3``); other
    names (the table) are their own key."""
    parts = name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
        return ".".join(parts[:3])
    return name


def layer_sizes(sizes: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    """``sizes`` ({Linear name: {bits: bytes}}) summed per :func:`layer_key`: the bytes of a whole decoder
    layer at each width (widths every member has)."""
    out: dict[str, dict[int, int]] = {}
    for n, s in sizes.items():
        key = layer_key(n)
        if key not in out:
            out[key] = dict(s)
        else:
            acc = out[key]
            out[key] = {b: acc[b] + s[b] for b in acc if b in s}
    return out


def expand_plan(plan: dict[str, int], names) -> dict[str, int]:
    """A per-layer plan ({layer key: bits}, from :func:`layer_sizes` and per-layer sensitivities) as
    {name: bits} for every one of ``names``."""
    return {n: plan[layer_key(n)] for n in names}


def measure_sensitivity(model, bits=(1, 2, 4, 8), tokenizer=None, texts=None, *, ids=None, windows: int = 4,
                        window: int = 128, batch: int = 4, hessians: dict | None = None,
                        table: bool = False, per_layer: bool = False, log=None) -> dict[str, dict[int, float]]:
    """{Linear name: {bits: KL}} — each decoder Linear of ``model`` alone rounded to each width (fitted grid,
    weighted by ``diag(hessians[name])`` when given), the rest full precision, measured on ``ids`` [W, T] (or
    ``windows`` x ``window`` calibration tokens). ``table``: also ``"lm_head"`` — the tied token table at each
    width (:func:`.graph.table_values`) in both its uses. Layers run from the lowered one on (cached inputs).

    ``per_layer``: {``"model.layers.<i>"``: {bits: KL}} instead — all Linears of decoder layer ``i`` rounded
    to the width together (one run per layer and width: 7x fewer runs on a Llama layer)."""
    import torch

    from .graph import table_values

    ids = token_windows(tokenizer, texts, ids, windows, window)
    bits = [check_bits(b) for b in bits]
    states = DecoderStates(model, ids, batch)
    with torch.no_grad():
        ref = [torch.log_softmax(x.double(), -1) for x in states.logits_from(0, states.hidden)]
    out: dict[str, dict[int, float]] = {}

    def kl_from(i, hidden):
        parts = states.logits_from(i, hidden)
        return float(np.mean([_kl(r, p) for r, p in zip(ref, parts)]))

    for li, layer in enumerate(decoder_layers(model)):
        hidden = states.copy_hidden()
        linears = linear_modules(layer, f"model.layers.{li}.")
        units = [(f"model.layers.{li}", linears)] if per_layer else [(n, [(n, m)]) for n, m in linears]
        for key, group in units:
            saved = [m.weight.detach().clone() for _, m in group]
            out[key] = {}
            try:
                for b in bits:
                    for (name, m), w in zip(group, saved):
                        h = None if hessians is None or name not in hessians else np.diag(hessians[name])
                        q = rtn(w.float().numpy().T, b, h=h)
                        with torch.no_grad():
                            m.weight.copy_(torch.from_numpy(q.values()))
                    out[key][b] = kl_from(li, hidden)
            finally:
                with torch.no_grad():
                    for (_, m), w in zip(group, saved):
                        m.weight.copy_(w)
        states.advance(li)
        if log:
            log(f"sensitivity layer {li + 1}/{len(decoder_layers(model))}")
    if table:
        emb = model.get_input_embeddings()
        saved = emb.weight.detach().clone()
        out[TABLE] = {}
        try:
            for b in bits:
                with torch.no_grad():
                    emb.weight.copy_(torch.from_numpy(table_values(saved.numpy(), b)))
                fresh = DecoderStates(model, ids, batch)
                out[TABLE][b] = kl_from(0, fresh.hidden)
        finally:
            with torch.no_grad():
                emb.weight.copy_(saved)
    return out


def choose_bits(sensitivity: dict[str, dict[int, float]], sizes: dict[str, dict[int, int]], budget: int,
                resolution: int = 100_000) -> dict[str, int]:
    """{name: bits} minimizing ``Σ sensitivity[name][bits]`` subject to ``Σ sizes[name][bits] <= budget`` bytes.

    Each name chooses among the widths present in both its ``sensitivity`` and ``sizes`` entries. Sizes are
    counted in units of ``ceil(budget / resolution)`` bytes, rounded up, so the returned plan fits ``budget``.
    A budget below the smallest plan raises ``ValueError`` naming that minimum.
    """
    names = sorted(sensitivity)
    missing = [n for n in names if n not in sizes]
    if missing:
        raise ValueError(f"no sizes for {missing[:5]}")
    options = []
    for n in names:
        opts = sorted(b for b in sensitivity[n] if b in sizes[n])
        if not opts:
            raise ValueError(f"{n}: no bit width has both a sensitivity and a size")
        options.append(opts)
    smallest = sum(min(sizes[n][b] for b in o) for n, o in zip(names, options))
    if budget < smallest:
        raise ValueError(f"budget {budget:,} bytes is below the smallest plan ({smallest:,} bytes)")
    unit = max(1, math.ceil(budget / resolution))
    cap = budget // unit
    best = np.zeros(cap + 1)
    choice = np.zeros((len(names), cap + 1), np.int8)
    for i, (n, opts) in enumerate(zip(names, options)):
        new = np.full(cap + 1, np.inf)
        for j, b in enumerate(opts):
            s = math.ceil(sizes[n][b] / unit)
            if s > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[s:] = best[:cap + 1 - s] + float(sensitivity[n][b])
            better = cand < new
            new[better] = cand[better]
            choice[i, better] = j
        best = new
    if not np.isfinite(best[cap]):
        raise ValueError(f"budget {budget:,} bytes is too small once sizes are rounded up to {unit}-byte units; "
                         "raise it or the resolution")
    plan, c = {}, cap
    for i in range(len(names) - 1, -1, -1):
        b = options[i][int(choice[i, c])]
        plan[names[i]] = b
        c -= math.ceil(sizes[names[i]][b] / unit)
    return dict(sorted(plan.items()))


def plan_sizes(shapes: dict[str, tuple[int, int]], bits=(1, 2, 4, 8), table_shape: tuple[int, int] | None = None,
               table_widths=(1, 2, 4, 8)) -> dict[str, dict[int, int]]:
    """{name: {bits: bytes}} for [K, N] weight ``shapes`` (and the [V, K] token table as ``"lm_head"``)."""
    out = {n: {b: weight_bytes(k, nn, b) for b in bits} for n, (k, nn) in shapes.items()}
    if table_shape is not None:
        out[TABLE] = {b: table_bytes(*table_shape, b) for b in table_widths}
    return out
