"""q4 / q4f16 / q2: ``MatMulNBits`` layers on an exact min/max block grid (:func:`nbits_layers`) and the
tied embedding quantized once, shared by the lm_head and the token lookup (:func:`tied_table`)."""
from __future__ import annotations

import numpy as np

from .graph import (MS, drop_unused_initializers, ensure_ms_opset, find_node, initializer, onnx_float,
                    replace_nodes, token_gather, weight_f32)

BLOCK = 32


def quantize_blockwise(w: np.ndarray, bits: int, block: int = BLOCK, float_zero_points: bool = False,
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


def quantize_sym8(w: np.ndarray, block: int = BLOCK):
    """Symmetric 8-bit blocks (the GGUF Q8_0 grid): (uint8 codes q+128 [N, K/block, block], fp16 scales)."""
    n, k = w.shape
    wb = w.reshape(n, k // block, block).astype(np.float32)
    d = (np.abs(wb).max(-1) / 127.0).astype(np.float16)
    d[d == 0] = 1.0
    q = np.clip(np.round(wb / d.astype(np.float32)[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), d


def code8(x):
    """8-bit linear codes of ``x`` over its range: (uint8 codes, lo, step)."""
    lo, hi = float(x.min()), float(x.max())
    step = (hi - lo) / 255.0 or 1.0
    return np.clip(np.round((x - lo) / step), 0, 255).astype(np.uint8), lo, step


def tied_table(m, bits: int, act=np.float32):
    """Quantize the lm_head weight once and share it between MatMulNBits (lm_head, [V, K/32, 32*bits/8]) and
    the token lookup (GatherBlockQuantized on the same bytes reshaped to [V, K*bits/8]).

    8 bits: symmetric blocks (the Q8_0 grid, so a GGUF Q8_0 table is kept exactly), default zero point 128.
    4/2 bits: min/max blocks with integer zero points. Scales are stored as fp16 and cast at load time.
    """
    from onnx import helper, numpy_helper

    head = find_node(m, "lm_head/gemm")
    wname = head.input[1]
    w = weight_f32(initializer(m, wname))
    v, k = w.shape
    p = f"{wname}_q{bits}"
    if bits == 8:
        packed, scale16 = quantize_sym8(w)
        zp = None
    else:
        packed, scale, zp, _ = quantize_blockwise(w, bits, fp16_scales=True)
        scale16 = scale.astype(np.float16)
    inits = [numpy_helper.from_array(packed, p + "/B"), numpy_helper.from_array(scale16, p + "/scales_fp16"),
             numpy_helper.from_array(np.array([v, k * bits // 8], np.int64), p + "/rows_shape")]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, p + "/zero_points"))
    m.graph.initializer.extend(inits)
    zp_in = [p + "/zero_points"] if zp is not None else []
    kept = find_node(m, "lm_head/flat").input[0]
    out = find_node(m, "lm_head/logits").output[0]
    nodes = [helper.make_node("Cast", [p + "/scales_fp16"], [p + "/scales"], to=onnx_float(act), name=p + "/scales"),
             helper.make_node("MatMulNBits", [kept, p + "/B", p + "/scales", *zp_in], [out], domain=MS,
                              K=k, N=v, bits=bits, block_size=BLOCK, name="lm_head/matmul")]
    remove = {"lm_head/flat", "lm_head/gemm", "lm_head/logits"}
    gather = token_gather(m, wname)
    if gather is not None:  # tied: the lookup reads the same bytes
        remove.add(gather.name)
        nodes += [
            helper.make_node("Reshape", [p + "/B", p + "/rows_shape"], [p + "/rows"], name=p + "/rows"),
            helper.make_node("GatherBlockQuantized", [p + "/rows", "input_ids", p + "/scales", *zp_in],
                             list(gather.output), domain=MS, bits=bits, block_size=BLOCK, gather_axis=0,
                             quantize_axis=1, name="embed_tokens/gather_q")]
    replace_nodes(m, remove, nodes)
    ensure_ms_opset(m)
    drop_unused_initializers(m)


def nbits_layers(m, bits: int, act=np.float32):
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
    ft = onnx_float(act)
    mid = float(1 << (bits - 1))
    for node in m.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        t = inits[node.input[1]]
        if len(t.dims) != 2 or t.dims[0] % BLOCK or t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue
        w = weight_f32(t)
        k, n = w.shape
        nb = k // BLOCK
        packed, scale, zpf, _ = quantize_blockwise(np.ascontiguousarray(w.T), bits, float_zero_points=True)
        sc, s_lo, s_step = code8(np.log(scale))
        zc, z_lo, z_step = code8(zpf)
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
    replace_nodes(m, remove, new_nodes)
    ensure_ms_opset(m)
    drop_unused_initializers(m)
    return m
