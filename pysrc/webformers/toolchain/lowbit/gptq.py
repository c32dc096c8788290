"""GPTQ: quantize a weight column by column, spreading each column's rounding error over the columns not
yet quantized through the inverse calibration Hessian (Frantar et al., 2022), on a fixed block grid.

The grid (scales / zero points per block) is fitted once on the original weight, weighted by the Hessian's
diagonal (:func:`.grid.fit_grid`), so the codes GPTQ picks are exactly the ones the file decodes.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .grid import BLOCKS, Grid, QuantizedWeight, check_bits, fit_grid

__all__ = ["gptq_quantize"]


def gptq_quantize(w: np.ndarray, H: np.ndarray, bits: int, block: int | None = None, *,
                  grid: Grid | None = None, damp: float = 0.01, act_order: bool = True,
                  lazy: int = 128) -> QuantizedWeight:
    """Quantize ``w`` [K, N] (the ONNX MatMul initializer, ``y = x @ w``) given ``H`` [K, K] (``Σ xᵀx`` of the
    calibration inputs ``x``, any positive scale).

    Minimizes ``tr((W - Q) H (W - Q)ᵀ)`` greedily: columns in order of decreasing ``H[k, k]`` (``act_order``),
    each rounded to its block's grid, its error fed back with the Cholesky factor of ``(H + damp*mean(diag H) I)⁻¹``;
    ``lazy`` columns are updated together. Inputs that never fire (``H[k, k] == 0``) get weight 0.
    Returns the codes on ``grid`` (default: fitted to ``w`` with ``h = diag(H)``).

    The torch work runs on one intra-op thread (:func:`_one_thread`): it is thousands of small per-column ops,
    and with several threads each op waits on a thread barrier, which on a busy machine costs milliseconds.
    """
    with _one_thread():
        return _gptq(w, H, bits, block, grid, damp, act_order, lazy)


@contextmanager
def _one_thread():
    """torch on one intra-op thread inside the block (the previous count restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _gptq(w, H, bits, block, grid, damp, act_order, lazy) -> QuantizedWeight:
    bits = check_bits(bits)
    block = block or (grid.block if grid is not None else BLOCKS[bits])
    W = np.array(np.asarray(w, np.float64).T)                  # [N, K]
    n, k = W.shape
    H = np.array(H, np.float64)
    if H.shape != (k, k):
        raise ValueError(f"Hessian shape {H.shape} does not match the weight's input size {k}")
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if grid is None:
        grid = fit_grid(W, bits, block, h=np.where(dead, 0.0, np.diag(H)))
    elif (grid.bits, grid.block, grid.k) != (bits, block, k):
        raise ValueError(f"grid ({grid.bits} bits, block {grid.block}, K {grid.k}) does not match "
                         f"({bits} bits, block {block}, K {k})")
    import torch

    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(k)
    Wt = torch.from_numpy(W[:, perm].copy())
    Ht = torch.from_numpy(H[perm][:, perm].copy())
    Ht.diagonal().add_(damp * float(Ht.diagonal().mean()))
    U = _inverse_cholesky_upper(Ht)
    blocks = torch.from_numpy(perm // grid.block)
    d = torch.from_numpy(grid.scales.astype(np.float64))[:, blocks]           # [N, K] in column order
    z = None if bits == 1 else torch.from_numpy(grid.zero_points.astype(np.float64))[:, blocks]
    codes = torch.zeros((n, k), dtype=torch.float64)
    qmax = float(grid.qmax)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        W1 = Wt[:, i1:i2].clone()
        E = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = W1[:, j]
            dj = d[:, i1 + j]
            if z is None:
                c = (col >= 0).double()
                v = (2.0 * c - 1.0) * dj
            else:
                zj = z[:, i1 + j]
                c = torch.clamp(torch.round(col / dj + zj), 0.0, qmax)
                v = (c - zj) * dj
            codes[:, i1 + j] = c
            err = (col - v) / U1[j, j]
            W1[:, j:] -= torch.outer(err, U1[j, j:])
            E[:, j] = err
        Wt[:, i2:] -= E @ U[i1:i2, i2:]
    out = np.empty((n, k), np.float64)
    out[:, perm] = codes.numpy()
    return QuantizedWeight(grid, out.astype(np.uint8))


def _inverse_cholesky_upper(H):
    """Upper-triangular ``U`` (torch float64) with ``Uᵀ U = H⁻¹``; damping grows until ``H`` is positive definite."""
    import torch

    eye = torch.eye(len(H), dtype=H.dtype)
    extra = 0.0
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(H + extra * eye)
        if int(info) == 0:
            break
        extra = max(extra * 10, 1e-6 * float(H.diagonal().mean()))
    else:
        raise np.linalg.LinAlgError("calibration Hessian is not positive definite even after damping")
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)
