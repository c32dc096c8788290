"""Quantization-aware training: fine-tune a torch decoder's linear weights through the variant's own
quantizer, distilled from the frozen full-precision model.

Each decoder ``Linear`` gets a block grid (:class:`.grid.Grid`: from an initial quantization such as GPTQ's, or
fitted to the weight) and a parametrization that rounds its latent fp32 weight onto that grid in the forward
pass: the codes follow the latent weight (straight-through gradient), the grid's log-scales and zero points
are trained with their exact gradients, both through the 8-bit / fp16 storage the file gives them. The loss is
KL(teacher || student) of the next-token distributions on calibration windows. The token table, when
``table_bits`` is given, is replaced by its quantized values (frozen) so the student sees what the file will
hold. Export rounds the tuned latent weights onto the trained grids, as the forward pass did.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .corpus import token_windows
from .graph import table_values
from .grid import Grid, QuantizedWeight, check_bits, fit_grid
from .layers import decoder_layers, linear_modules

__all__ = ["qat", "QATResult"]


@dataclass
class QATResult:
    losses: list[float]                                   # one per step
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)   # Linear name → tuned weight
    resumed_from: int = 0                                 # steps loaded from the checkpoint


def _fake_quant_module():
    import torch

    def stored(x):
        """``x`` through 8-bit codes over its range (:func:`..quantize.nbits.code8`), straight-through."""
        lo, hi = x.detach().min(), x.detach().max()
        step = torch.where(hi > lo, (hi - lo) / 255.0, torch.ones_like(hi))
        q = torch.clamp(torch.round((x - lo) / step), 0, 255) * step + lo
        return x + (q - x).detach()

    def blocks(w, a, block):
        """(``w`` as [N, nb, block] or [N, K], ``a`` [N, nb] broadcast to it, column → block index or None)."""
        n, k = w.shape
        if k % block == 0:
            return w.view(n, k // block, block), a[..., None], None
        cols = torch.arange(k) // block
        return w, a[:, cols], cols

    def block_sum(x, like, cols):
        if cols is None:
            return x.sum(-1)
        return torch.zeros(like.shape, dtype=x.dtype).index_add_(1, cols, x)

    class RoundToGrid(torch.autograd.Function):
        """``w`` [N, K] rounded to the grid ``(c - z) * d`` (``z`` None: ``±d``), blocks of ``block`` along K.
        Backward: the weight's gradient passes straight through; ``d`` and ``z`` get their exact gradients
        given the codes."""

        @staticmethod
        def forward(ctx, w, d, z, qmax, block):
            W, D, cols = blocks(w, d, block)
            ctx.block, ctx.cols = block, cols
            if z is None:
                sign = torch.where(W >= 0, 1.0, -1.0)
                ctx.save_for_backward(sign, d)
                return (sign * D).reshape(w.shape)
            Z = blocks(w, z, block)[1]
            c = torch.clamp(torch.round(W / D + Z), 0.0, qmax)
            ctx.save_for_backward(c.to(torch.uint8), d, z)
            return ((c - Z) * D).reshape(w.shape)

        @staticmethod
        def backward(ctx, g):
            if len(ctx.saved_tensors) == 2:
                sign, d = ctx.saved_tensors
                G = blocks(g, d, ctx.block)[0]
                return g, block_sum(G * sign, d, ctx.cols), None, None, None
            c, d, z = ctx.saved_tensors
            G, D, _ = blocks(g, d, ctx.block)
            Z = blocks(g, z, ctx.block)[1]
            return (g, block_sum(G * (c.float() - Z), d, ctx.cols), block_sum(-G * D, z, ctx.cols),
                    None, None)

    class FakeQuant(torch.nn.Module):
        """The weight rounded onto its block grid in the forward pass. The codes follow the latent weight
        (straight-through gradient); the grid's log-scales and zero points are trained too, with exact
        gradients given the codes, through the 8-bit (fp16 for 1 bit) storage they get in the file."""

        def __init__(self, grid: Grid, train_grid: bool):
            super().__init__()
            self.bits, self.block, self.k, self.qmax = grid.bits, grid.block, grid.k, float(grid.qmax)
            log_s = torch.from_numpy(np.log(grid.scales).astype(np.float32))
            self.log_scales = torch.nn.Parameter(log_s, requires_grad=train_grid)
            if grid.bits != 1:
                self.zero_points = torch.nn.Parameter(torch.from_numpy(grid.zero_points.astype(np.float32)),
                                                      requires_grad=train_grid)

        def forward(self, w):
            if self.bits == 1:
                d16 = torch.exp(self.log_scales)
                d = d16 + (d16.half().float() - d16).detach()
                return RoundToGrid.apply(w, d, None, self.qmax, self.block)
            d = torch.exp(stored(self.log_scales))
            return RoundToGrid.apply(w, d, stored(self.zero_points), self.qmax, self.block)

        def grid(self) -> Grid:
            z = None if self.bits == 1 else self.zero_points.detach().numpy()
            return Grid.from_log(self.bits, self.block, self.k, self.log_scales.detach().numpy(), z)

    return FakeQuant


def _fingerprint(model, ids, config, init) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    h.update(np.ascontiguousarray(ids).tobytes())
    for n in sorted(init):
        h.update(init[n].codes.tobytes() + init[n].grid.scales.tobytes())
    for _, m in linear_modules(decoder_layers(model)[0]):
        h.update(m.weight.detach().float().numpy().tobytes())
    return h.hexdigest()


def qat(model, bits, steps: int, *, tokenizer=None, texts=None, ids=None, init: dict | None = None,
        table_bits: int | None = None, lr: float = 1e-4, grid_lr: float | None = 1e-3, batch: int = 4,
        window: int = 128,
        windows: int = 256, seed: int = 0, checkpoint=None, checkpoint_every: int = 10,
        log=None) -> QATResult:
    """Fine-tune ``model`` (in place) for ``steps`` Adam steps with its decoder Linears rounded to ``bits``
    (one width, or {Linear name: bits}; others stay fixed) and return the loss curve and the tuned weights on
    their grids.

    Data: ``ids`` [W, T] windows, or ``windows`` x ``window`` tokens of ``texts`` (default: the calibration text)
    encoded with ``tokenizer``; each step takes ``batch`` windows drawn with a generator seeded by
    (``seed``, step), so a run is deterministic and a resumed run takes the same batches. ``init``:
    {Linear name: QuantizedWeight} to start from (latent weights = its values, grid = its grid), e.g. GPTQ's.
    Learning rates (cosine decay to 0): ``lr`` for the latent weights, ``grid_lr`` for the grids' log-scales
    and zero points (None: grids stay fixed). ``checkpoint``: a file written every ``checkpoint_every``
    steps and at the end (latent weights, optimizer state, losses); a run with the same settings, data and
    starting model resumes from it. ``log(str)`` gets one line per step.
    After the call the model holds the tuned latent (unrounded) weights; its token table is left unchanged.
    """
    import torch
    from torch.nn.utils import parametrize

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    ids = token_windows(tokenizer, texts, ids, windows, window)
    if len(ids) < batch:
        raise ValueError(f"need at least {batch} token windows [W, T], got shape {ids.shape}")
    named = [(n, m) for i, layer in enumerate(decoder_layers(model))
             for n, m in linear_modules(layer, f"model.layers.{i}.")]
    plan = {n: (check_bits(bits[n]) if isinstance(bits, dict) else check_bits(bits))
            for n, _ in named if not isinstance(bits, dict) or bits.get(n) is not None}
    init = init or {}
    config = {"bits": {n: plan[n] for n in sorted(plan)}, "steps": steps, "lr": lr, "grid_lr": grid_lr,
              "batch": batch, "seed": seed, "table_bits": table_bits, "init": sorted(init)}
    fingerprint = _fingerprint(model, ids, config, init)

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()
    emb_saved = emb.weight.detach().clone()
    if table_bits is not None:
        with torch.no_grad():
            emb.weight.copy_(torch.from_numpy(table_values(emb_saved.numpy(), table_bits)))
    FakeQuant = _fake_quant_module()
    quantizers, latents = {}, []
    for n, m in named:
        if n not in plan:
            continue
        w = m.weight.detach().float().numpy()
        if n in init:
            q = init[n]
            if q.codes.shape != w.shape or q.bits != plan[n]:
                raise ValueError(f"{n}: init weight ({q.bits} bits, {q.codes.shape}) does not match "
                                 f"({plan[n]} bits, {w.shape})")
            grid = q.grid
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(q.values()))
        else:
            grid = fit_grid(w, plan[n])
        quantizers[n] = FakeQuant(grid, grid_lr is not None)
        parametrize.register_parametrization(m, "weight", quantizers[n])
        latent = m.parametrizations.weight.original
        latent.requires_grad_(True)
        latents.append((n + ".weight", latent))
        if grid_lr is not None:
            latents += [(f"{n}.{k}", p) for k, p in quantizers[n].named_parameters()]
    groups = [{"params": [p for k, p in latents if k.endswith(".weight")], "lr": lr}]
    if grid_lr is not None:
        groups.append({"params": [p for k, p in latents if not k.endswith(".weight")], "lr": grid_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, steps) / max(steps, 1))))
    losses, start = [], 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(str(ckpt), weights_only=False)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt}: checkpoint of a different run (settings, data or starting model differ); "
                             "delete it or pass another checkpoint path")
        with torch.no_grad():
            for n, p in latents:
                p.copy_(state["latent"][n])
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        losses, start = list(state["losses"]), int(state["step"])
        if log:
            log(f"qat resumed at step {start}/{steps}")

    def save(step):
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        torch.save({"fingerprint": fingerprint, "step": step, "losses": losses, "optim": opt.state_dict(),
                    "sched": sched.state_dict(), "latent": {n: p.detach().clone() for n, p in latents}}, str(tmp))
        os.replace(tmp, ckpt)

    try:
        model.eval()
        for step in range(start, steps):
            rng = np.random.default_rng([seed, step])
            x = torch.from_numpy(ids[rng.choice(len(ids), batch, replace=False)])
            with torch.no_grad():
                t_logp = torch.log_softmax(teacher(input_ids=x, use_cache=False).logits.float(), -1)
            s_logp = torch.log_softmax(model(input_ids=x, use_cache=False).logits.float(), -1)
            loss = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if log:
                log(f"qat step {step + 1}/{steps} loss {losses[-1]:.4f}")
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                save(step + 1)
    finally:
        grids = {n: fq.grid() for n, fq in quantizers.items()}
        for n, m in named:
            if n in quantizers and parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        with torch.no_grad():
            emb.weight.copy_(emb_saved)
        for p in model.parameters():
            p.requires_grad_(False)
    mods = dict(model.named_modules())
    weights = {n: QuantizedWeight(g, g.nearest(mods[n].weight.detach().float().numpy())) for n, g in grids.items()}
    return QATResult(losses, weights, start)
