"""Block quantization grids for one MatMul weight, in numpy: fitting, rounding, packing.

A weight is held as ``W`` [N, K] (output channels x inputs: the MatMulNBits orientation, the transpose of the
ONNX MatMul initializer [K, N]) and quantized along K in blocks of ``block`` columns (the last block may be
partial):

- bits 2 / 4 / 8: ``W[n, k] ≈ (c - z[n, b]) * d[n, b]`` with codes ``c`` in ``[0, 2**bits - 1]`` and a *float*
  zero point ``z``; ``log d`` and ``z`` are stored as 8-bit codes over their range (:func:`..quantize.nbits.code8`), so the grid
  holds the values the file decodes. This is the layer layout of the q4 / q2 variants (block 32).
- bits 1: ``W[n, k] ≈ (2c - 1) * d[n, b]`` with ``c`` in ``{0, 1}`` (signs times a block scale, ``d`` stored as
  fp16): the q1 layout (block 128), whose codes expand to 2-bit MatMulNBits codes ``2c + 1`` with zero point 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quantize.nbits import code8

#: the bit widths a layer can take, and their default block sizes.
BLOCKS = {1: 128, 2: 32, 4: 32, 8: 32}


def check_bits(bits) -> int:
    if bits not in BLOCKS:
        raise ValueError(f"unsupported bit width {bits!r}; valid: {', '.join(map(str, BLOCKS))}")
    return int(bits)


def decode8(codes: np.ndarray, lo: float, step: float) -> np.ndarray:
    """What the graph computes from :func:`..quantize.nbits.code8`'s output (float32 Mul, then Add)."""
    return codes.astype(np.float32) * np.float32(step) + np.float32(lo)


def _starts(k: int, block: int) -> np.ndarray:
    return np.arange(0, k, block)


def _per_column(a: np.ndarray, k: int, block: int) -> np.ndarray:
    """[N, nb] block values → [N, K] (each column gets its block's value)."""
    return a[:, np.arange(k) // block]


def _block_sum(a: np.ndarray, block: int) -> np.ndarray:
    return np.add.reduceat(a, _starts(a.shape[1], block), axis=1)


@dataclass
class Grid:
    """The per-block scales (and zero points) of one [N, K] weight, as the file decodes them."""

    bits: int
    block: int
    k: int
    scales: np.ndarray                       # float32 [N, nb]
    zero_points: np.ndarray | None = None    # float32 [N, nb]; None for 1 bit
    #: bits 2/4/8: the stored 8-bit codes — (scale codes, lo, step) of log(scales), (zp codes, lo, step)
    scale_code8: tuple | None = None
    zp_code8: tuple | None = None

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    def nearest(self, w: np.ndarray) -> np.ndarray:
        """Codes (uint8 [N, K]) of the nearest grid values to ``w`` [N, K]."""
        d = _per_column(self.scales, self.k, self.block)
        if self.bits == 1:
            return (w >= 0).astype(np.uint8)
        z = _per_column(self.zero_points, self.k, self.block)
        return np.clip(np.round(w / d + z), 0, self.qmax).astype(np.uint8)

    def values(self, codes: np.ndarray) -> np.ndarray:
        """Dequantized float32 [N, K] of ``codes``."""
        d = _per_column(self.scales, self.k, self.block)
        if self.bits == 1:
            return ((2.0 * codes.astype(np.float32) - 1.0) * d).astype(np.float32)
        z = _per_column(self.zero_points, self.k, self.block)
        return ((codes.astype(np.float32) - z) * d).astype(np.float32)

    @staticmethod
    def stored(bits: int, block: int, k: int, scales: np.ndarray, zero_points: np.ndarray | None) -> "Grid":
        """The grid the file will hold for these float scales / zero points (8-bit or fp16 storage applied)."""
        scales = np.maximum(np.asarray(scales, np.float64), 1e-12)
        return Grid.from_log(bits, block, k, np.log(scales).astype(np.float32), zero_points)

    @staticmethod
    def from_log(bits: int, block: int, k: int, log_scales: np.ndarray, zero_points: np.ndarray | None) -> "Grid":
        """:meth:`stored` from the natural log of the scales (float32 [N, nb])."""
        log_scales = np.asarray(log_scales, np.float32)
        if bits == 1:
            s = np.exp(log_scales).astype(np.float16)
            s[s == 0] = np.float16(6e-8)
            return Grid(1, block, k, s.astype(np.float32))
        sc = code8(log_scales)
        zc = code8(np.asarray(zero_points, np.float32))
        return Grid(bits, block, k, np.exp(decode8(*sc)).astype(np.float32), decode8(*zc), sc, zc)


@dataclass
class QuantizedWeight:
    """A weight on its grid: ``codes`` uint8 [N, K]; ``dequantize()`` gives the ONNX [K, N] float32 weight."""

    grid: Grid
    codes: np.ndarray

    @property
    def bits(self) -> int:
        return self.grid.bits

    @property
    def shape_kn(self) -> tuple[int, int]:
        return self.grid.k, self.codes.shape[0]

    def values(self) -> np.ndarray:
        """[N, K] float32: the weight as the file decodes it (torch Linear orientation)."""
        return self.grid.values(self.codes)

    def dequantize(self) -> np.ndarray:
        """[K, N] float32: the ONNX MatMul initializer this weight replaces."""
        return np.ascontiguousarray(self.values().T)

    def packed(self) -> np.ndarray:
        """The bytes on disk: bits 2/4/8 → MatMulNBits ``B`` uint8 [N, nb, block*bits/8] (lowest bits first,
        the last block zero-padded); bits 1 → uint8 [N, K/8], bit j of byte i = code of input 8i + j."""
        n, k = self.codes.shape
        if self.bits == 1:
            if k % 8:
                raise ValueError(f"1-bit packing needs the input size to be a multiple of 8, got {k}")
            c = self.codes.reshape(n, k // 8, 8)
            out = np.zeros((n, k // 8), np.uint8)
            for j in range(8):
                out |= (c[..., j] << j).astype(np.uint8)
            return out
        return pack_nbits(self.codes, self.bits, self.grid.block)


def pack_nbits(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """uint8 codes [N, K] → MatMulNBits ``B`` [N, ceil(K/block), block*bits/8], lowest bits first."""
    n, k = codes.shape
    nb = -(-k // block)
    full = np.zeros((n, nb * block), np.uint8)
    full[:, :k] = codes
    per = 8 // bits
    q = full.reshape(n, nb, block // per, per)
    packed = np.zeros((n, nb, block // per), np.uint8)
    for j in range(per):
        packed |= (q[..., j] << (bits * j)).astype(np.uint8)
    return packed


# --------------------------------------------------------------------------- fitting

def _weighted_fit(w, c, h, block):
    """Per-block weighted least squares ``w ≈ a*c + b`` (weights ``h`` per column): (a, b), None where degenerate."""
    hw = np.broadcast_to(h, w.shape)
    s = _block_sum(hw, block)
    sc = _block_sum(hw * c, block)
    scc = _block_sum(hw * c * c, block)
    sw = _block_sum(hw * w, block)
    swc = _block_sum(hw * w * c, block)
    den = s * scc - sc * sc
    ok = den > 1e-12 * np.maximum(s * scc, 1e-30)
    a = np.where(ok, (s * swc - sc * sw) / np.where(ok, den, 1.0), 0.0)
    b = (sw - a * sc) / np.maximum(s, 1e-30)
    return a, b, ok & (a > 0)


def _block_error(w, v, h, block):
    return _block_sum(np.broadcast_to(h, w.shape) * (w - v) ** 2, block)


def fit_grid(w: np.ndarray, bits: int, block: int | None = None, h: np.ndarray | None = None,
             search: bool = True) -> Grid:
    """The grid of ``w`` [N, K] (torch Linear orientation) at ``bits``.

    ``h`` [K] weighs each input's squared error (the diagonal of the calibration Hessian XᵀX; uniform when
    None). bits 2/4/8: min/max blocks, then (``search``) a clipping search over shrunk ranges, each refined by
    weighted least squares of ``w ≈ d*c - d*z`` on its codes, keeping the least-error grid per block.
    bits 1: ``d`` = the weighted mean of ``|w|`` (the least-squares scale for the signs of ``w``).
    """
    bits = check_bits(bits)
    block = block or BLOCKS[bits]
    w = np.asarray(w, np.float64)
    n, k = w.shape
    h = np.ones(k) if h is None else np.maximum(np.asarray(h, np.float64), 0.0)
    if not h.any():
        h = np.ones(k)
    h = h[None, :]
    starts = _starts(k, block)
    if bits == 1:
        hs = _block_sum(np.broadcast_to(h, w.shape), block)
        d = _block_sum(h * np.abs(w), block) / np.maximum(hs, 1e-30)
        d = np.where(d > 0, d, np.abs(w).max() or 1.0)
        return Grid.stored(1, block, k, d, None)
    qmax = (1 << bits) - 1
    if k % block == 0:
        d, z = _search_full_blocks(w.reshape(n, k // block, block), h.reshape(1, k // block, block), qmax, search)
        return Grid.stored(bits, block, k, d, z)
    lo0 = np.minimum.reduceat(w, starts, axis=1)
    hi0 = np.maximum.reduceat(w, starts, axis=1)
    mid, half = (lo0 + hi0) / 2, np.maximum((hi0 - lo0) / 2, 1e-12)
    best_d = best_z = best_e = None
    for shrink in ((1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5) if search else (1.0,)):
        d = 2 * half * shrink / qmax
        z = -(mid - half * shrink) / d
        cands = [(d, z)]
        if search:
            c = np.clip(np.round(w / _per_column(d, k, block) + _per_column(z, k, block)), 0, qmax)
            a, b, ok = _weighted_fit(w, c, h, block)
            cands.append((np.where(ok, a, d), np.where(ok, -b / np.where(ok, a, 1.0), z)))
        for dd, zz in cands:
            dc, zc = _per_column(dd, k, block), _per_column(zz, k, block)
            v = (np.clip(np.round(w / dc + zc), 0, qmax) - zc) * dc
            e = _block_error(w, v, h, block)
            if best_e is None:
                best_d, best_z, best_e = dd.copy(), zz.copy(), e
            else:
                better = e < best_e
                best_d = np.where(better, dd, best_d)
                best_z = np.where(better, zz, best_z)
                best_e = np.where(better, e, best_e)
    return Grid.stored(bits, block, k, best_d, best_z)


def _search_full_blocks(w3, h3, qmax, search):
    """:func:`fit_grid`'s clipping search when every block is full: ``w3`` [N, nb, block], ``h3`` [1, nb, block];
    the same candidates and choice, on block-shaped arrays (no per-column gathers). Returns (d, z) [N, nb]."""
    lo0, hi0 = w3.min(-1), w3.max(-1)
    mid, half = (lo0 + hi0) / 2, np.maximum((hi0 - lo0) / 2, 1e-12)
    hw = np.broadcast_to(h3, w3.shape)
    s = hw.sum(-1)
    best_d = best_z = best_e = None
    for shrink in ((1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5) if search else (1.0,)):
        d = 2 * half * shrink / qmax
        z = -(mid - half * shrink) / d
        cands = [(d, z)]
        if search:
            c = np.clip(np.round(w3 / d[..., None] + z[..., None]), 0, qmax)
            hc = hw * c
            sc, scc = hc.sum(-1), (hc * c).sum(-1)
            sw, swc = (hw * w3).sum(-1), (hc * w3).sum(-1)
            den = s * scc - sc * sc
            ok = den > 1e-12 * np.maximum(s * scc, 1e-30)
            a = np.where(ok, (s * swc - sc * sw) / np.where(ok, den, 1.0), 0.0)
            b = (sw - a * sc) / np.maximum(s, 1e-30)
            ok &= a > 0
            cands.append((np.where(ok, a, d), np.where(ok, -b / np.where(ok, a, 1.0), z)))
        for dd, zz in cands:
            v = (np.clip(np.round(w3 / dd[..., None] + zz[..., None]), 0, qmax) - zz[..., None]) * dd[..., None]
            e = (hw * (w3 - v) ** 2).sum(-1)
            if best_e is None:
                best_d, best_z, best_e = dd.copy(), zz.copy(), e
            else:
                better = e < best_e
                best_d = np.where(better, dd, best_d)
                best_z = np.where(better, zz, best_z)
                best_e = np.where(better, e, best_e)
    return best_d, best_z


def rtn(w_kn: np.ndarray, bits: int, block: int | None = None, h: np.ndarray | None = None,
        search: bool = True) -> QuantizedWeight:
    """Round-to-nearest quantization of an ONNX [K, N] weight on its fitted grid (:func:`fit_grid`)."""
    w = np.ascontiguousarray(np.asarray(w_kn, np.float32).T)
    g = fit_grid(w, bits, block, h, search)
    return QuantizedWeight(g, g.nearest(w))


def on_grid(w_kn: np.ndarray, bits: int, block: int | None = None, tol: float = 1e-4) -> bool:
    """True when ``w_kn`` [K, N] already lies on a min/max grid of ``bits`` per block (a source quantized to
    that grid, e.g. a GGUF Q4_1 weight at 4 bits): calibrating it again can only lose accuracy."""
    bits = check_bits(bits)
    if bits == 1:
        w = np.abs(np.asarray(w_kn, np.float64).T)
        block = block or BLOCKS[1]
        starts = _starts(w.shape[1], block)
        spread = np.maximum.reduceat(w, starts, axis=1) - np.minimum.reduceat(w, starts, axis=1)
        return bool(spread.max() <= tol * max(float(w.max()), 1e-12))
    w = np.asarray(w_kn, np.float64).T
    block = block or BLOCKS[bits]
    k = w.shape[1]
    starts = _starts(k, block)
    lo = np.minimum.reduceat(w, starts, axis=1)
    d = np.maximum(np.maximum.reduceat(w, starts, axis=1) - lo, 1e-30) / ((1 << bits) - 1)
    t = (w - _per_column(lo, k, block)) / _per_column(d, k, block)
    return bool(np.abs(t - np.round(t)).max() <= tol * ((1 << bits) - 1))
