"""q8 / uint8 / int8: 8-bit weights with per-token activation scales (:func:`dynamic_rows`), and
onnxruntime's ``quantize_dynamic`` for the layer matmuls of modules without an lm_head."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .graph import drop_unused_initializers, find_node, initializer, replace_nodes, token_gather, weight_f32


def quantize_w8(w: np.ndarray, signed: bool, per_channel: bool):
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


def dynamic_rows(m, signed: bool, per_channel: bool):
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
    the lookup dequantizes its column (:func:`tied_8bit_lookup`).
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
        q, s, zp = quantize_w8(w_kn, signed, per_channel)
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
        matmul(node.name or node.output[0], node.input[0], weight_f32(t), node.output[0])
        remove.add(node.name)
    head = find_node(m, "lm_head/gemm")
    table = head.input[1]
    p = matmul("lm_head", head.input[0], np.ascontiguousarray(weight_f32(inits[table]).T), head.output[0])
    remove.add(head.name)
    replace_nodes(m, remove, new_nodes)
    tied_8bit_lookup(m, table, p + "/codes", p + "/zero_point" if initializer(m, p + "/zero_point") else None,
                      p + "/scale")
    drop_unused_initializers(m)
    return m


def tied_8bit_lookup(m, table: str, codes: str, zero_point: str | None, scale: str):
    """The token lookup reads its row from the lm_head's 8-bit [K, V] codes (Gather on axis 1, dequantized by
    hand: (code - zero point) * scale, per token when the scale is per channel), so the fp32 table disappears."""
    from onnx import TensorProto, helper

    gather = token_gather(m, table)
    if gather is None:
        return
    per_row = len(initializer(m, scale).dims) > 0
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
    replace_nodes(m, {gather.name}, nodes)


def quantize_dynamic_layers(m, weight_type: str, per_channel: bool):
    """onnxruntime's ``quantize_dynamic`` on every constant-weight MatMul / Gemm (``weight_type`` ``"QInt8"``
    or ``"QUInt8"``): one activation scale per call, for modules without an lm_head."""
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
