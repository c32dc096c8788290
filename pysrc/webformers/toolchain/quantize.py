"""fp32 ONNX decoder → every dtype variant of the registry (``webformers.dtypes``).

- fp16: ``convert_float_to_float16(keep_io_types=True)``;
- q8 / uint8 / int8: every layer matmul and the tied lm_head → ``MatMulInteger`` with per-token activation
  scales (:func:`_dynamic_rows`, standard ops); q8 has per-tensor uint8 weights (the transformers.js
  ``_quantized`` file), uint8 per-channel uint8, int8 per-channel int8. The tied table is stored once, as the
  lm_head's 8-bit codes. (Whisper's encoders, which have no lm_head, still use ``quantize_dynamic`` through
  :func:`_dynamic`; its decoders go through this path.)
- q4 / q4f16 / q2: layer matmuls → ``MatMulNBits`` (block 32) with min/max blocks and *float* zero points,
  whose scale / zero point are double-quantized to 8-bit codes (:func:`_nbits_layers_dq`: 4.5 bits per
  weight for q4; a GGUF Q4_1 weight keeps its grid). ``MatMulNBitsQuantizer``'s integer zero points force
  each block's range to contain 0, which re-rounds every Q4_1 weight: top-1 agreement on SmolLM2 dropped
  to ~0.70 that way, versus ~0.98 with the exact grid. The **tied embedding** is quantized once
  (:func:`_tied_table`: 8-bit symmetric blocks — the Q8_0 grid — for q4/q4f16, 4-bit for q2) and shared by
  the lm_head (``MatMulNBits``, weight [V, K/32, 32*bits/8]) and the lookup (``GatherBlockQuantized``).
  q4f16 converts to fp16 first, then quantizes with fp16 scales;
- bnb4: ``MatMulBnb4Quantizer`` (NF4, block 64) for the layer matmuls; the tied table is NF4-quantized
  once, shared by an lm_head ``MatMulBnb4`` and a lookup decoded with standard ops (Gather of the packed
  rows, nibble unpacking, NF4 codebook Gather, absmax scaling).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ..dtypes import get_dtype

#: the dtypes this toolchain builds, in build order.
SUPPORTED = ("fp32", "fp16", "q8", "int8", "uint8", "q4", "q4f16", "bnb4", "q2")
BLOCK = 32
BNB_BLOCK = 64
MS = "com.microsoft"


def check_dtypes(names) -> list[str]:
    out = []
    for n in names:
        get_dtype(n)  # unknown names: ValueError listing the registry
        if n not in SUPPORTED:
            raise ValueError(f"the toolchain cannot build dtype {n!r}; it builds: {', '.join(SUPPORTED)}")
        if n not in out:
            out.append(n)
    return out


def _quiet():
    for name in ("onnxruntime", "onnxruntime.quantization", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------- 8-bit, per-token activations

def _quantize_w8(w: np.ndarray, signed: bool, per_channel: bool):
    """8-bit weights of ``w`` [K, N] for MatMulInteger: (codes [K, N], scale (scalar or [N]), zero point or None).

    Signed: symmetric int8 (no zero point). Unsigned: min/max uint8 with a uint8 zero point (range contains 0)."""
    axis = 0 if per_channel else None
    if signed:
        s = np.abs(w).max(axis=axis) / 127.0
        s = np.where(s == 0, 1.0, s).astype(np.float32)
        return np.clip(np.round(w / s), -127, 127).astype(np.int8), s, None
    lo = np.minimum(w.min(axis=axis), 0.0)
    hi = np.maximum(w.max(axis=axis), 0.0)
    s = ((hi - lo) / 255.0).astype(np.float32)
    s = np.where(s == 0, 1.0, s).astype(np.float32)
    zp = np.clip(np.round(-lo / s), 0, 255)
    q = np.clip(np.round(w / s) + zp, 0, 255).astype(np.uint8)
    return q, s, zp.astype(np.uint8)


def _dynamic_rows(m, signed: bool, per_channel: bool):
    """Every MatMul with a constant [K, N] weight and the (tied) lm_head → ``MatMulInteger`` with 8-bit weights
    and **per-token** activation scales, in standard ONNX ops.

    ``quantize_dynamic`` (DynamicQuantizeLinear) uses one activation scale for the whole [tokens, K] input. Over
    a prompt, the first token's outliers (up to ~3000 in SmolLM2's MLP, 4000x the 99th percentile) then set the
    scale for every token and round the others to a handful of levels: SmolLM2 q8 / int8 / uint8 fell to top-1
    0.54–0.58 (KL 0.62–0.67) that way; per-token scales give 0.80 / 0.89 / 0.89 (KL 0.13 / 0.05 / 0.05).
    Here each row gets its own symmetric scale ``s = max|x| / 127`` and the codes ``round(x / s) + 128`` are
    uint8 with a constant zero point, so MatMulInteger stays on its fast u8 kernels (onnxruntime's MatMulInteger
    takes only a scalar activation zero point). The weights: per-tensor uint8 (q8), per-channel uint8 (uint8) or
    per-channel symmetric int8 (int8). The tied token table is stored once, as the lm_head's [K, V] codes, and
    the lookup dequantizes its column (:func:`_tied_8bit_lookup`).
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in m.graph.initializer}
    mk = helper.make_node
    new_nodes, remove, quantized_inputs = [], set(), {}
    m.graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), "q8rows/last_axis"),
                                numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "q8rows/inv127"),
                                numpy_helper.from_array(np.array(1e-30, np.float32), "q8rows/tiny"),
                                numpy_helper.from_array(np.array(128.0, np.float32), "q8rows/mid_f"),
                                numpy_helper.from_array(np.array(128, np.uint8), "q8rows/mid")])

    def rows(x):
        """(uint8 codes, per-row scale [..., 1]) of activation ``x``, shared by the matmuls that read it."""
        if x not in quantized_inputs:
            p = f"{x}/q8rows"
            new_nodes.extend([
                mk("Abs", [x], [p + "/abs"], name=p + "/abs"),
                mk("ReduceMax", [p + "/abs", "q8rows/last_axis"], [p + "/absmax"], keepdims=1, name=p + "/absmax"),
                mk("Mul", [p + "/absmax", "q8rows/inv127"], [p + "/s0"], name=p + "/s0"),
                mk("Max", [p + "/s0", "q8rows/tiny"], [p + "/scale"], name=p + "/scale"),
                mk("Div", [x, p + "/scale"], [p + "/scaled"], name=p + "/scaled"),
                mk("Round", [p + "/scaled"], [p + "/rounded"], name=p + "/rounded"),
                mk("Add", [p + "/rounded", "q8rows/mid_f"], [p + "/shifted"], name=p + "/shifted"),
                mk("Cast", [p + "/shifted"], [p + "/codes"], to=TensorProto.UINT8, name=p + "/codes")])
            quantized_inputs[x] = (p + "/codes", p + "/scale")
        return quantized_inputs[x]

    def matmul(name, x, w_kn, y):
        q, s, zp = _quantize_w8(w_kn, signed, per_channel)
        p = f"{name}/w8"
        m.graph.initializer.extend([numpy_helper.from_array(q, p + "/codes"), numpy_helper.from_array(s, p + "/scale")])
        zp_in = ""
        if zp is not None:
            m.graph.initializer.append(numpy_helper.from_array(zp, p + "/zero_point"))
            zp_in = p + "/zero_point"
        codes, xs = rows(x)
        new_nodes.extend([
            mk("MatMulInteger", [codes, p + "/codes", "q8rows/mid", zp_in] if zp_in else [codes, p + "/codes", "q8rows/mid"],
               [p + "/acc"], name=p + "/matmul"),
            mk("Cast", [p + "/acc"], [p + "/acc_f"], to=TensorProto.FLOAT, name=p + "/acc_f"),
            # (acc * weight scale) * row scale, in this order: onnxruntime fuses Cast -> Mul(Mul(a_scale,
            # b_scale)) into MatMulIntegerToFloat, whose kernel reads a_scale as one scalar
            mk("Mul", [p + "/acc_f", p + "/scale"], [p + "/acc_w"], name=p + "/acc_w"),
            mk("Mul", [p + "/acc_w", xs], [y], name=p + "/out")])
        return p

    for node in m.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        t = inits[node.input[1]]
        if len(t.dims) != 2 or t.data_type != TensorProto.FLOAT:
            continue
        matmul(node.name or node.output[0], node.input[0], _weight_f32(t), node.output[0])
        remove.add(node.name)
    head = _find(m, "lm_head/gemm")
    table = head.input[1]
    p = matmul("lm_head", head.input[0], np.ascontiguousarray(_weight_f32(inits[table]).T), head.output[0])
    remove.add(head.name)
    _replace_nodes(m, remove, new_nodes)
    _tied_8bit_lookup(m, table, p + "/codes", p + "/zero_point" if _init(m, p + "/zero_point") else None,
                      p + "/scale")
    _drop_unused_initializers(m)
    return m


def _tied_8bit_lookup(m, table: str, codes: str, zero_point: str | None, scale: str):
    """The token lookup reads its row from the lm_head's 8-bit [K, V] codes (Gather on axis 1, dequantized by
    hand: (code - zero point) * scale, per token when the scale is per channel), so the fp32 table disappears."""
    from onnx import TensorProto, helper

    gather = _token_gather(m, table)
    if gather is None:
        return
    per_row = len(_init(m, scale).dims) > 0
    q, mk = "embed_tokens/q8", helper.make_node
    nodes = [mk("Gather", [codes, "input_ids"], [q + "/cols"], axis=1, name=q + "/cols"),
             mk("Transpose", [q + "/cols"], [q + "/rows"], perm=[1, 2, 0], name=q + "/rows"),
             mk("Cast", [q + "/rows"], [q + "/rows_f"], to=TensorProto.FLOAT, name=q + "/rows_f")]
    centered = q + "/rows_f"
    if zero_point is not None:
        nodes.append(mk("Cast", [zero_point], [q + "/zp_f"], to=TensorProto.FLOAT, name=q + "/zp_f"))
        zp = q + "/zp_f"
        if per_row:
            nodes += [mk("Gather", [zp, "input_ids"], [q + "/zp_g"], axis=0, name=q + "/zp_g"),
                      mk("Unsqueeze", [q + "/zp_g", "q8rows/last_axis"], [q + "/zp_row"], name=q + "/zp_row")]
            zp = q + "/zp_row"
        nodes.append(mk("Sub", [q + "/rows_f", zp], [q + "/centered"], name=q + "/centered"))
        centered = q + "/centered"
    sc = scale
    if per_row:
        nodes += [mk("Gather", [scale, "input_ids"], [q + "/sc_g"], axis=0, name=q + "/sc_g"),
                  mk("Unsqueeze", [q + "/sc_g", "q8rows/last_axis"], [q + "/sc_row"], name=q + "/sc_row")]
        sc = q + "/sc_row"
    nodes.append(mk("Mul", [centered, sc], list(gather.output), name=q + "/out"))
    _replace_nodes(m, {gather.name}, nodes)


# --------------------------------------------------------------------------- blockwise (MatMulNBits layout)

def _quantize_blockwise(w: np.ndarray, bits: int, block: int = BLOCK, float_zero_points: bool = False,
                        fp16_scales: bool = False):
    """Asymmetric min/max quantization of ``w`` [N, K] along K in blocks.

    Returns (packed uint8 [N, K/block, block*bits/8], scales float32 [N, K/block],
    zero_points uint8 [N, ceil(K/block*bits/8)], dequantized float32 [N, K]) in the MatMulNBits layout
    (lowest bits first); GatherBlockQuantized reads the same bytes reshaped to [N, K*bits/8].
    """
    n, k = w.shape
    if k % block:
        raise ValueError(f"hidden size {k} is not a multiple of the quantization block {block}")
    nb = k // block
    qmax = (1 << bits) - 1
    wb = w.reshape(n, nb, block).astype(np.float32)
    if float_zero_points:  # the exact min/max grid (what GGUF Q4_1 / Q2_K-style blocks use)
        mn, mx = wb.min(-1), wb.max(-1)
    else:  # integer zero points: the range must contain 0
        mn, mx = np.minimum(wb.min(-1), 0.0), np.maximum(wb.max(-1), 0.0)
    scale = (mx - mn) / qmax
    scale[scale == 0] = 1.0
    if fp16_scales:  # quantize against the scale the file will hold
        scale = scale.astype(np.float16).astype(np.float32)
    if float_zero_points:
        zpf = (-mn / scale).astype(np.float32)
        q = np.clip(np.round((wb - mn[..., None]) / scale[..., None]), 0, qmax).astype(np.uint8)
    else:
        zp = np.clip(np.round(-mn / scale), 0, qmax).astype(np.uint8)
        q = np.clip(np.round(wb / scale[..., None]) + zp[..., None], 0, qmax).astype(np.uint8)
    per = 8 // bits
    qq = q.reshape(n, nb, block // per, per)
    packed = np.zeros((n, nb, block // per), np.uint8)
    for j in range(per):
        packed |= (qq[..., j] << (bits * j)).astype(np.uint8)
    if float_zero_points:
        deq = ((q.astype(np.float32) - zpf[..., None]) * scale[..., None]).reshape(n, k)
        return packed, scale.astype(np.float32), zpf, deq
    zpk = np.zeros((n, (nb * bits + 7) // 8), np.uint8)
    for b in range(nb):
        zpk[:, (b * bits) // 8] |= (zp[:, b] << ((b * bits) % 8)).astype(np.uint8)
    deq = ((q.astype(np.float32) - zp[..., None]) * scale[..., None]).reshape(n, k)
    return packed, scale.astype(np.float32), zpk, deq


# NF4 code book (QLoRA), the one MatMulBnb4 uses.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)


def _quantize_nf4(w: np.ndarray, block: int = BNB_BLOCK):
    """NF4 of ``w`` [N, K] in row-major blocks: (packed uint8 [N*K/2], absmax float32 [N*K/block], deq)."""
    n, k = w.shape
    if k % block and block % k:
        raise ValueError(f"hidden size {k} and the bnb4 block {block}: neither divides the other")
    flat = w.reshape(-1, block).astype(np.float32)
    absmax = np.abs(flat).max(-1)
    absmax[absmax == 0] = 1.0
    norm = flat / absmax[:, None]
    codes = np.abs(norm[..., None] - NF4).argmin(-1).astype(np.uint8).reshape(-1)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)  # first element in the high nibble
    deq = (NF4[codes].reshape(-1, block) * absmax[:, None]).reshape(n, k)
    return packed, absmax.astype(np.float32), deq


# --------------------------------------------------------------------------- graph surgery

def _find(m, name):
    for n in m.graph.node:
        if n.name == name:
            return n
    raise RuntimeError(f"node {name!r} not in graph (was the model exported by webformers?)")


def _init(m, name):
    for t in m.graph.initializer:
        if t.name == name:
            return t
    return None


def _lm_head_weight(m) -> str:
    return _find(m, "lm_head/gemm").input[1]


def _token_gather(m, table: str):
    for n in m.graph.node:
        if n.op_type == "Gather" and n.input[0] == table and n.input[1] == "input_ids":
            return n
    return None


def _replace_nodes(m, remove_names, new_nodes):
    keep = [n for n in m.graph.node if n.name not in remove_names]
    del m.graph.node[:]
    m.graph.node.extend(keep + list(new_nodes))
    _toposort(m)


def _toposort(m):
    g = m.graph
    avail = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in avail for i in n.input):
                ordered.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle or a dangling input: " + ", ".join(n.name for n in rest[:5]))
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def _drop_unused_initializers(m):
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)


def _ensure_ms_opset(m):
    if not any(o.domain == MS for o in m.opset_import):
        m.opset_import.append(__import__("onnx").helper.make_opsetid(MS, 1))


def _quantize_sym8(w: np.ndarray, block: int = BLOCK):
    """Symmetric 8-bit blocks (the GGUF Q8_0 grid): (uint8 codes q+128 [N, K/block, block], fp16 scales)."""
    n, k = w.shape
    wb = w.reshape(n, k // block, block).astype(np.float32)
    d = (np.abs(wb).max(-1) / 127.0).astype(np.float16)
    d[d == 0] = 1.0
    q = np.clip(np.round(wb / d.astype(np.float32)[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), d


def _weight_f32(t):
    from onnx import numpy_helper

    return numpy_helper.to_array(t).astype(np.float32)


def _onnx_float(dtype):
    from onnx import TensorProto

    return TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT


def _tied_table(m, bits: int, act=np.float32):
    """Quantize the lm_head weight once and share it between MatMulNBits (lm_head, [V, K/32, 32*bits/8]) and
    the token lookup (GatherBlockQuantized on the same bytes reshaped to [V, K*bits/8]).

    8 bits: symmetric blocks (the Q8_0 grid, so a GGUF Q8_0 table is kept exactly), default zero point 128.
    4/2 bits: min/max blocks with integer zero points. Scales are stored as fp16 and cast at load time.
    """
    from onnx import helper, numpy_helper

    head = _find(m, "lm_head/gemm")
    wname = head.input[1]
    w = _weight_f32(_init(m, wname))
    v, k = w.shape
    p = f"{wname}_q{bits}"
    if bits == 8:
        packed, scale16 = _quantize_sym8(w)
        zp = None
    else:
        packed, scale, zp, _ = _quantize_blockwise(w, bits, fp16_scales=True)
        scale16 = scale.astype(np.float16)
    inits = [numpy_helper.from_array(packed, p + "/B"), numpy_helper.from_array(scale16, p + "/scales_fp16"),
             numpy_helper.from_array(np.array([v, k * bits // 8], np.int64), p + "/rows_shape")]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, p + "/zero_points"))
    m.graph.initializer.extend(inits)
    zp_in = [p + "/zero_points"] if zp is not None else []
    kept = _find(m, "lm_head/flat").input[0]
    out = _find(m, "lm_head/logits").output[0]
    nodes = [helper.make_node("Cast", [p + "/scales_fp16"], [p + "/scales"], to=_onnx_float(act), name=p + "/scales"),
             helper.make_node("MatMulNBits", [kept, p + "/B", p + "/scales", *zp_in], [out], domain=MS,
                              K=k, N=v, bits=bits, block_size=BLOCK, name="lm_head/matmul")]
    remove = {"lm_head/flat", "lm_head/gemm", "lm_head/logits"}
    gather = _token_gather(m, wname)
    if gather is not None:  # tied: the lookup reads the same bytes
        remove.add(gather.name)
        nodes += [
            helper.make_node("Reshape", [p + "/B", p + "/rows_shape"], [p + "/rows"], name=p + "/rows"),
            helper.make_node("GatherBlockQuantized", [p + "/rows", "input_ids", p + "/scales", *zp_in],
                             list(gather.output), domain=MS, bits=bits, block_size=BLOCK, gather_axis=0,
                             quantize_axis=1, name="embed_tokens/gather_q")]
    _replace_nodes(m, remove, nodes)
    _ensure_ms_opset(m)
    _drop_unused_initializers(m)


def _code8(x):
    """8-bit linear codes of ``x`` over its range: (uint8 codes, lo, step)."""
    lo, hi = float(x.min()), float(x.max())
    step = (hi - lo) / 255.0 or 1.0
    return np.clip(np.round((x - lo) / step), 0, 255).astype(np.uint8), lo, step


def _nbits_layers_dq(m, bits: int, act=np.float32):
    """MatMulNBits for every MatMul with a constant [K, N] weight, keeping a min/max block grid exactly.

    Each block of 32 is ``w = (q - z) * d`` with a *float* zero point ``z`` (a GGUF Q4_1 weight keeps its grid;
    integer zero points force every range to contain 0 and re-round every weight: SmolLM2's top-1 agreement
    fell to ~0.70 that way). onnxruntime's MatMulNBits has no fast kernel for float zero points (7x slower
    per token), so the graph computes ``x @ W^T`` as a fast MatMulNBits with the default zero point
    ``m = 2**(bits-1)`` plus a small correction ``blocksum(x) @ C^T`` with ``C[n, b] = (m - z[n, b]) * d[n, b]``
    (1/32 of the matmul's work). ``d`` and ``z`` are stored as 8-bit codes (log-domain scale, linear zero
    point: 0.5 bit per weight) that standard ops decode; onnxruntime folds those chains into constants when
    the session loads.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in m.graph.initializer}
    new_nodes, remove = [], set()
    ft = _onnx_float(act)
    mid = float(1 << (bits - 1))
    for node in m.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        t = inits[node.input[1]]
        if len(t.dims) != 2 or t.dims[0] % BLOCK or t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue
        w = _weight_f32(t)
        k, n = w.shape
        nb = k // BLOCK
        packed, scale, zpf, _ = _quantize_blockwise(np.ascontiguousarray(w.T), bits, float_zero_points=True)
        sc, s_lo, s_step = _code8(np.log(scale))
        zc, z_lo, z_step = _code8(zpf)
        p = node.input[1] + f"_Q{bits}"
        m.graph.initializer.extend([
            numpy_helper.from_array(packed, p), numpy_helper.from_array(sc, p + "/scale_codes"),
            numpy_helper.from_array(zc, p + "/zp_codes"),
            numpy_helper.from_array(np.array([s_step, s_lo, z_step, z_lo, mid], np.float32), p + "/dq"),
            numpy_helper.from_array(np.array([-1, nb, BLOCK], np.int64), p + "/blocks_shape")])
        mk = helper.make_node
        x, y = node.input[0], node.output[0]
        new_nodes += [
            # constant chains (folded at load): scales d, zero points z, correction C^T
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
            # runtime: fast symmetric MatMulNBits + block-sum correction
            mk("MatMulNBits", [x, p, p + "/scales"], [p + "/main"], domain=MS, K=k, N=n, bits=bits,
               block_size=BLOCK, name=(node.name or p) + f"_Q{bits}"),
            mk("Reshape", [x, p + "/blocks_shape"], [p + "/x_blocks"], name=p + "/x_blocks"),
            mk("ReduceSum", [p + "/x_blocks", p + "/last_axis"], [p + "/x_sums"], keepdims=0, name=p + "/x_sums"),
            mk("MatMul", [p + "/x_sums", p + "/corr_w"], [p + "/corr"], name=p + "/corr"),
            mk("Shape", [p + "/main"], [p + "/main_shape"], name=p + "/main_shape"),
            mk("Reshape", [p + "/corr", p + "/main_shape"], [p + "/corr_r"], name=p + "/corr_r"),
            mk("Add", [p + "/main", p + "/corr_r"], [y], name=p + "/out"),
        ]
        m.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), p + "/last_axis"))
        remove.add(node.name)
    _replace_nodes(m, remove, new_nodes)
    _ensure_ms_opset(m)
    _drop_unused_initializers(m)
    return m


def _tied_bnb4(m):
    """NF4 lm_head (MatMulBnb4) sharing its table with a standard-op NF4 lookup."""
    from onnx import TensorProto, helper, numpy_helper

    wname = _lm_head_weight(m)
    w = numpy_helper.to_array(_init(m, wname))
    v, k = w.shape
    packed, absmax, _ = _quantize_nf4(w)
    p = f"{wname}_nf4"
    if k % BNB_BLOCK == 0:  # whole blocks per row
        nbk, blk, rows_per_block = k // BNB_BLOCK, BNB_BLOCK, 1
    else:  # one block spans several rows (tiny models)
        nbk, blk, rows_per_block = 1, k, BNB_BLOCK // k
    m.graph.initializer.extend([
        numpy_helper.from_array(packed, p + "/B"), numpy_helper.from_array(absmax, p + "/absmax"),
        numpy_helper.from_array(np.array([v, k // 2], np.int64), p + "/rows_shape"),
        numpy_helper.from_array(np.array([v // rows_per_block, nbk], np.int64), p + "/absmax_shape"),
        numpy_helper.from_array(np.array(rows_per_block, np.int64), p + "/rows_per_block"),
        numpy_helper.from_array(NF4, p + "/codebook"),
        numpy_helper.from_array(np.array(4, np.uint8), p + "/four"),
        numpy_helper.from_array(np.array(15, np.uint8), p + "/mask"),
        numpy_helper.from_array(np.array([-1], np.int64), p + "/last"),
        numpy_helper.from_array(np.array([0, 0, nbk, blk], np.int64), p + "/blocks_shape"),
        numpy_helper.from_array(np.array([0, 0, k], np.int64), p + "/out_shape"),
    ])
    nodes = [helper.make_node("MatMulBnb4", ["lm_head/kept", p + "/B", p + "/absmax"], ["logits"], domain=MS,
                              K=k, N=v, block_size=BNB_BLOCK, quant_type=1, name="lm_head/matmul")]
    remove = {"lm_head/flat", "lm_head/gemm", "lm_head/logits"}
    gather = _token_gather(m, wname)
    if gather is not None:
        remove.add(gather.name)
        q = p + "/lookup"
        mk = helper.make_node
        block_ids = "input_ids"
        if rows_per_block > 1:
            block_ids = q + "/block_ids"
            nodes.append(mk("Div", ["input_ids", p + "/rows_per_block"], [block_ids], name=q + "/block_ids"))
        nodes += [
            mk("Reshape", [p + "/B", p + "/rows_shape"], [q + "/rows"], name=q + "/rows"),
            mk("Reshape", [p + "/absmax", p + "/absmax_shape"], [q + "/absmax_rows"], name=q + "/absmax_rows"),
            mk("Gather", [q + "/rows", "input_ids"], [q + "/bytes"], axis=0, name=q + "/bytes"),
            mk("BitShift", [q + "/bytes", p + "/four"], [q + "/hi"], direction="RIGHT", name=q + "/hi"),
            mk("BitwiseAnd", [q + "/bytes", p + "/mask"], [q + "/lo"], name=q + "/lo"),
            mk("Unsqueeze", [q + "/hi", p + "/last"], [q + "/hi1"], name=q + "/hi1"),
            mk("Unsqueeze", [q + "/lo", p + "/last"], [q + "/lo1"], name=q + "/lo1"),
            mk("Concat", [q + "/hi1", q + "/lo1"], [q + "/pairs"], axis=-1, name=q + "/pairs"),
            mk("Cast", [q + "/pairs"], [q + "/codes"], to=TensorProto.INT32, name=q + "/codes"),
            mk("Gather", [p + "/codebook", q + "/codes"], [q + "/values"], axis=0, name=q + "/values"),
            mk("Reshape", [q + "/values", p + "/blocks_shape"], [q + "/blocks"], name=q + "/blocks"),
            mk("Gather", [q + "/absmax_rows", block_ids], [q + "/absmax"], axis=0, name=q + "/absmax"),
            mk("Unsqueeze", [q + "/absmax", p + "/last"], [q + "/absmax1"], name=q + "/absmax1"),
            mk("Mul", [q + "/blocks", q + "/absmax1"], [q + "/scaled"], name=q + "/scaled"),
            mk("Reshape", [q + "/scaled", p + "/out_shape"], list(gather.output), name=q + "/out"),
        ]
    _replace_nodes(m, remove, nodes)
    _ensure_ms_opset(m)
    _drop_unused_initializers(m)


# --------------------------------------------------------------------------- variants

def _fp16(m):
    from onnxruntime.transformers.float16 import convert_float_to_float16
    return convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=True)


def _dynamic(m, weight_type: str, per_channel: bool):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.onnx", Path(td) / "out.onnx"
        onnx.save_model(m, str(src))
        quantize_dynamic(str(src), str(dst), weight_type=getattr(QuantType, weight_type),
                         per_channel=per_channel, op_types_to_quantize=["MatMul", "Gemm"],
                         extra_options={"MatMulConstBOnly": True})
        q = onnx.load(str(dst))
    return q


def _bnb4_layers(m):
    from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer

    q = MatMulBnb4Quantizer(m, quant_type=MatMulBnb4Quantizer.NF4, block_size=BNB_BLOCK)
    q.process()
    return q.model.model


def make_variant(fp32_model, dtype: str):
    """A new ``onnx.ModelProto`` of ``dtype`` built from the fp32 model (which is left untouched).

    Shared-table lookups are expressed with standard ops (:mod:`.portable`): onnxruntime-web's WASM
    kernels have no GatherBlockQuantized."""
    from .portable import portable_block_gather

    m = _make_variant(fp32_model, dtype)
    portable_block_gather(m)
    return m


def _make_variant(fp32_model, dtype: str):
    import copy

    _quiet()
    m = copy.deepcopy(fp32_model)
    if dtype == "fp32":
        return m
    if dtype == "fp16":
        return _fp16(m)
    if dtype in ("q8", "uint8", "int8"):
        return _dynamic_rows(m, signed=dtype == "int8", per_channel=dtype != "q8")
    if dtype in ("q4", "q4f16", "q2"):
        act = np.float16 if dtype == "q4f16" else np.float32
        if dtype == "q4f16":
            m = _fp16(m)
        # q4: 8-bit shared table (Q8_0 grid) + 4.5-bit layers; q2: 4-bit table + 2.5-bit layers
        _tied_table(m, 8 if dtype != "q2" else 4, act)
        return _nbits_layers_dq(m, 4 if dtype != "q2" else 2, act)
    if dtype == "bnb4":
        _tied_bnb4(m)
        return _bnb4_layers(m)
    raise ValueError(f"the toolchain cannot build dtype {dtype!r}; it builds: {', '.join(SUPPORTED)}")


def _nbits_layers(m, bits: int):
    """The layer quantizer for other modules (e.g. whisper's encoder): :func:`_nbits_layers_dq` in fp32."""
    return _nbits_layers_dq(m, bits)
