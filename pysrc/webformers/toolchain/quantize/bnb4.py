"""bnb4: NF4 (block 64) layers with ``MatMulBnb4Quantizer``; the tied table NF4-quantized once, shared by
an lm_head ``MatMulBnb4`` and a lookup decoded with standard ops (:func:`tied_bnb4`)."""
from __future__ import annotations

import numpy as np

from .graph import (MS, drop_unused_initializers, ensure_ms_opset, initializer, lm_head_weight, replace_nodes,
                    token_gather)

BNB_BLOCK = 64

# NF4 code book (QLoRA), the one MatMulBnb4 uses.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)


def quantize_nf4(w: np.ndarray, block: int = BNB_BLOCK):
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


def tied_bnb4(m):
    """NF4 lm_head (MatMulBnb4) sharing its table with a standard-op NF4 lookup."""
    from onnx import TensorProto, helper, numpy_helper

    wname = lm_head_weight(m)
    w = numpy_helper.to_array(initializer(m, wname))
    v, k = w.shape
    packed, absmax, _ = quantize_nf4(w)
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
    gather = token_gather(m, wname)
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
    replace_nodes(m, remove, nodes)
    ensure_ms_opset(m)
    drop_unused_initializers(m)


def bnb4_layers(m):
    """``MatMulBnb4Quantizer`` (NF4, block 64) on the layer matmuls."""
    from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer

    q = MatMulBnb4Quantizer(m, quant_type=MatMulBnb4Quantizer.NF4, block_size=BNB_BLOCK)
    q.process()
    return q.model.model
