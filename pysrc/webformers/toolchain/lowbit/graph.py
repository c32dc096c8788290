"""Write quantized weights into an fp32 (or fp16) decoder graph exported by :mod:`..export`.

Layer matmuls (:func:`write_matmuls`), per weight by its bit width:

- 2 / 4 / 8 bits: the layout of the q4 / q2 variants — a ``MatMulNBits`` (block 32) with the default zero point
  ``2**(bits-1)`` plus the block-sum correction ``blocksum(x) @ Cᵀ`` that restores the float zero points; scales
  and zero points are 8-bit codes decoded by standard ops (folded into constants when the session loads).
- 1 bit (the Bonsai "q1" layout): the weight is stored as sign bits uint8 [N, K/8]; a ``Gather`` through a
  [256, 2] table expands each byte into the 2-bit codes ``2c + 1`` (LSB first) of a ``MatMulNBits`` (bits 2,
  block 128, default zero point 2), so each weight decodes to ``±scale``. onnxruntime folds the expansion at load:
  the 2-bit codes live in memory, the 1-bit ones on disk.

The tied token table (:func:`write_tied_table`) is quantized once and shared by the lm_head and the lookup:
2 / 4 / 8 bits — the q4 / q2 variants' table (:func:`..quantize.nbits.tied_table`); 1 bit — signs with
block-128 scales, the lm_head through the 2-bit expansion above and the lookup decoding the sign bits of its
rows with standard ops (Gather, Cast, Mul).
"""
from __future__ import annotations

import numpy as np

from ..quantize.graph import (MS, drop_unused_initializers, ensure_ms_opset, find_node, initializer, onnx_float,
                              replace_nodes, token_gather, weight_f32)
from ..quantize.nbits import quantize_blockwise, quantize_sym8, tied_table
from .grid import QuantizedWeight, fit_grid

Q1_TABLE = "lowbit/q1_codes2"      # [256, 2] uint8: one byte of signs → eight 2-bit codes
Q1_SIGNS = "lowbit/q1_signs"       # [256, 8] float: one byte of signs → eight ±1


def q1_code_table() -> np.ndarray:
    """[256, 2] uint8: byte ``b`` → the 2-bit codes ``2*bit_j + 1`` of its bits j = 0..7, lowest bits first."""
    bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
    codes = (2 * bits + 1).astype(np.uint8).reshape(256, 2, 4)
    return (codes[..., 0] | codes[..., 1] << 2 | codes[..., 2] << 4 | codes[..., 3] << 6).astype(np.uint8)


def q1_sign_table(dtype=np.float32) -> np.ndarray:
    """[256, 8]: byte ``b`` → ``2*bit_j - 1`` for j = 0..7."""
    return (2 * ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1) - 1).astype(dtype)


# --------------------------------------------------------------------------- graph helpers

def _add(m, name, value):
    """Add initializer ``name`` (once: shared tables are added by the first weight that needs them)."""
    from onnx import numpy_helper

    if initializer(m, name) is None:
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def finish(m):
    """Drop initializers nothing reads and declare the com.microsoft opset."""
    ensure_ms_opset(m)
    drop_unused_initializers(m)
    return m


# --------------------------------------------------------------------------- layer matmuls

def _nbits_nodes(m, p, q: QuantizedWeight, x, y, name, act):
    """MatMulNBits with the default zero point + the float-zero-point correction (bits 2/4/8, block 32)."""
    from onnx import TensorProto, helper

    g, bits = q.grid, q.bits
    k, n = q.shape_kn
    nb = k // g.block
    (sc, s_lo, s_step), (zc, z_lo, z_step) = g.scale_code8, g.zp_code8
    mid = float(1 << (bits - 1))
    ft = onnx_float(act)
    _add(m, p, q.packed())
    _add(m, p + "/scale_codes", sc)
    _add(m, p + "/zp_codes", zc)
    _add(m, p + "/dq", np.array([s_step, s_lo, z_step, z_lo, mid], np.float32))
    _add(m, p + "/blocks_shape", np.array([-1, nb, g.block], np.int64))
    _add(m, p + "/last_axis", np.array([-1], np.int64))
    if k % g.block:
        raise ValueError(f"{p}: input size {k} is not a multiple of the {bits}-bit block {g.block}")
    mk = helper.make_node
    return [
        mk("Split", [p + "/dq"], [p + "/s_step", p + "/s_lo", p + "/z_step", p + "/z_lo", p + "/mid"], axis=0,
           num_outputs=5, name=p + "/dq_split"),
        mk("Cast", [p + "/scale_codes"], [p + "/sc_f"], to=TensorProto.FLOAT, name=p + "/sc_f"),
        mk("Mul", [p + "/sc_f", p + "/s_step"], [p + "/sc_m"], name=p + "/sc_m"),
        mk("Add", [p + "/sc_m", p + "/s_lo"], [p + "/log_scales"], name=p + "/log_scales"),
        mk("Exp", [p + "/log_scales"], [p + "/scales_f32"], name=p + "/scales_f32"),
        mk("Cast", [p + "/zp_codes"], [p + "/zc_f"], to=TensorProto.FLOAT, name=p + "/zc_f"),
        mk("Mul", [p + "/zc_f", p + "/z_step"], [p + "/zc_m"], name=p + "/zc_m"),
        mk("Add", [p + "/zc_m", p + "/z_lo"], [p + "/zp_f32"], name=p + "/zp_f32"),
        mk("Sub", [p + "/mid", p + "/zp_f32"], [p + "/shift"], name=p + "/shift"),
        mk("Mul", [p + "/shift", p + "/scales_f32"], [p + "/corr_nb"], name=p + "/corr_nb"),
        mk("Transpose", [p + "/corr_nb"], [p + "/corr_bn"], perm=[1, 0], name=p + "/corr_bn"),
        mk("Cast", [p + "/corr_bn"], [p + "/corr_w"], to=ft, name=p + "/corr_w"),
        mk("Cast", [p + "/scales_f32"], [p + "/scales"], to=ft, name=p + "/scales"),
        mk("MatMulNBits", [x, p, p + "/scales"], [p + "/main"], domain=MS, K=k, N=n, bits=bits,
           block_size=g.block, name=name),
        mk("Reshape", [x, p + "/blocks_shape"], [p + "/x_blocks"], name=p + "/x_blocks"),
        mk("ReduceSum", [p + "/x_blocks", p + "/last_axis"], [p + "/x_sums"], keepdims=0, name=p + "/x_sums"),
        mk("MatMul", [p + "/x_sums", p + "/corr_w"], [p + "/corr"], name=p + "/corr"),
        mk("Shape", [p + "/main"], [p + "/main_shape"], name=p + "/main_shape"),
        mk("Reshape", [p + "/corr", p + "/main_shape"], [p + "/corr_r"], name=p + "/corr_r"),
        mk("Add", [p + "/main", p + "/corr_r"], [y], name=p + "/out"),
    ]


def _q1_codes_nodes(m, p, packed: np.ndarray, k: int, block: int):
    """Standard ops expanding sign bytes ``p`` [N, K/8] into MatMulNBits codes ``p/B`` [N, nb, block/4]."""
    from onnx import TensorProto, helper

    n = packed.shape[0]
    nb = -(-k // block)
    _add(m, p, packed)
    _add(m, Q1_TABLE, q1_code_table())
    _add(m, p + "/codes_shape", np.array([n, k // 4], np.int64))
    _add(m, p + "/blocks_shape", np.array([n, nb, block // 4], np.int64))
    mk = helper.make_node
    nodes = [mk("Cast", [p], [p + "/idx"], to=TensorProto.INT32, name=p + "/idx"),
             mk("Gather", [Q1_TABLE, p + "/idx"], [p + "/codes2"], axis=0, name=p + "/codes2"),
             mk("Reshape", [p + "/codes2", p + "/codes_shape"], [p + "/codes"], name=p + "/codes")]
    codes = p + "/codes"
    if k % block:
        _add(m, p + "/pads", np.array([0, 0, 0, nb * block // 4 - k // 4], np.int64))
        nodes.append(mk("Pad", [codes, p + "/pads"], [p + "/codes_padded"], name=p + "/codes_padded"))
        codes = p + "/codes_padded"
    nodes.append(mk("Reshape", [codes, p + "/blocks_shape"], [p + "/B"], name=p + "/B"))
    return nodes


def _q1_matmul_nodes(m, p, q: QuantizedWeight, x, y, name, act):
    from onnx import helper

    k, n = q.shape_kn
    _add(m, p + "/scales_fp16", q.grid.scales.astype(np.float16))
    nodes = _q1_codes_nodes(m, p, q.packed(), k, q.grid.block)
    return nodes + [
        helper.make_node("Cast", [p + "/scales_fp16"], [p + "/scales"], to=onnx_float(act), name=p + "/scales"),
        helper.make_node("MatMulNBits", [x, p + "/B", p + "/scales"], [y], domain=MS, K=k, N=n, bits=2,
                         block_size=q.grid.block, name=name)]


def write_matmuls(m, weights: dict[str, QuantizedWeight], act=np.float32):
    """Replace every ``MatMul`` whose weight initializer is a key of ``weights`` (in place); returns ``m``."""
    inits = {t.name for t in m.graph.initializer}
    unknown = [w for w in weights if w not in inits]
    if unknown:
        raise ValueError(f"no initializers {unknown[:5]} in the graph")
    new_nodes, remove = [], set()
    for node in m.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        q = weights[node.input[1]]
        t = initializer(m, node.input[1])
        if tuple(t.dims) != q.shape_kn:
            raise ValueError(f"{node.input[1]}: quantized shape {q.shape_kn} != initializer {tuple(t.dims)}")
        p = node.input[1] + f"_Q{q.bits}"
        name = (node.name or p) + f"_Q{q.bits}"
        build = _q1_matmul_nodes if q.bits == 1 else _nbits_nodes
        new_nodes += build(m, p, q, node.input[0], node.output[0], name, act)
        remove.add(node.name)
    replace_nodes(m, remove, new_nodes)
    return finish(m)


# --------------------------------------------------------------------------- the tied table

def table_values(w: np.ndarray, bits: int, block: int = 128) -> np.ndarray:
    """The token table ``w`` [V, K] as :func:`write_tied_table` stores it at ``bits``, dequantized (float32)."""
    w = np.asarray(w, np.float32)
    if bits in (2, 4):
        return quantize_blockwise(w, bits, fp16_scales=True)[3]
    if bits == 8:
        q, d = quantize_sym8(w)
        return ((q.astype(np.float32) - 128.0) * d.astype(np.float32)[..., None]).reshape(w.shape)
    if bits == 1:
        g = fit_grid(w, 1, block)
        return g.values(g.nearest(w))
    raise ValueError(f"unsupported table bit width {bits!r}; valid: 1, 2, 4, 8")


def write_tied_table(m, bits: int, act=np.float32, block: int = 128):
    """Quantize the lm_head weight once and share it with the token lookup when the embedding is tied (in
    place); returns ``m``. 2 / 4 / 8 bits: :func:`..quantize.nbits.tied_table` (block 32); 1 bit: signs with
    ``block`` scales (fp16), the lm_head a MatMulNBits on the expanded codes, the lookup in standard ops."""
    from onnx import helper

    if bits in (2, 4, 8):
        tied_table(m, bits, act)
        return finish(m)
    if bits != 1:
        raise ValueError(f"unsupported table bit width {bits!r}; valid: 1, 2, 4, 8")
    wname = find_node(m, "lm_head/gemm").input[1]
    w = weight_f32(initializer(m, wname))
    v, k = w.shape
    g = fit_grid(w, 1, block)
    q = QuantizedWeight(g, g.nearest(w))
    p = f"{wname}_q1"
    mk = helper.make_node
    kept = find_node(m, "lm_head/flat").input[0]
    out = find_node(m, "lm_head/logits").output[0]
    remove = {"lm_head/flat", "lm_head/gemm", "lm_head/logits"}
    _add(m, p + "/scales_fp16", g.scales.astype(np.float16))
    nodes = [mk("Cast", [p + "/scales_fp16"], [p + "/scales"], to=onnx_float(act), name=p + "/scales")]
    nodes += _q1_codes_nodes(m, p, q.packed(), k, block)
    nodes.append(mk("MatMulNBits", [kept, p + "/B", p + "/scales"], [out], domain=MS, K=k, N=v, bits=2,
                    block_size=block, name="lm_head/matmul"))
    gather = token_gather(m, wname)
    if gather is not None:
        remove.add(gather.name)
        nodes += _q1_lookup_nodes(m, p, k, block, list(gather.output), act)
    replace_nodes(m, remove, nodes)
    return finish(m)


def _q1_lookup_nodes(m, p, k, block, outputs, act):
    """Token rows decoded from the sign bytes ``p`` [V, K/8]: signs [T, K] times their block scales."""
    from onnx import TensorProto, helper

    q = p + "/lookup"
    mk = helper.make_node
    _add(m, Q1_SIGNS + ("_fp16" if act == np.float16 else ""), q1_sign_table(act))
    signs = Q1_SIGNS + ("_fp16" if act == np.float16 else "")
    _add(m, q + "/ids_shape", np.array([-1], np.int64))
    _add(m, q + "/row_shape", np.array([0, k], np.int64))
    _add(m, q + "/block_of", (np.arange(k) // block).astype(np.int64))
    _add(m, q + "/k", np.array([k], np.int64))
    return [
        mk("Reshape", ["input_ids", q + "/ids_shape"], [q + "/ids"], name=q + "/ids"),
        mk("Gather", [p, q + "/ids"], [q + "/bytes"], axis=0, name=q + "/bytes"),                 # [T, K/8]
        mk("Cast", [q + "/bytes"], [q + "/idx"], to=TensorProto.INT32, name=q + "/idx"),
        mk("Gather", [signs, q + "/idx"], [q + "/signs"], axis=0, name=q + "/signs"),              # [T, K/8, 8]
        mk("Reshape", [q + "/signs", q + "/row_shape"], [q + "/sign_rows"], name=q + "/sign_rows"),  # [T, K]
        mk("Gather", [p + "/scales", q + "/ids"], [q + "/scale_rows"], axis=0, name=q + "/scale_rows"),  # [T, nb]
        mk("Gather", [q + "/scale_rows", q + "/block_of"], [q + "/scale_cols"], axis=1, name=q + "/scale_cols"),
        mk("Mul", [q + "/sign_rows", q + "/scale_cols"], [q + "/rows"], name=q + "/rows"),
        mk("Shape", ["input_ids"], [q + "/ids_dims"], name=q + "/ids_dims"),
        mk("Concat", [q + "/ids_dims", q + "/k"], [q + "/out_shape"], axis=0, name=q + "/out_shape"),
        mk("Reshape", [q + "/rows", q + "/out_shape"], outputs, name=q + "/out"),
    ]
