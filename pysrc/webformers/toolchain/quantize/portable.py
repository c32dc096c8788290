"""Make quantized graphs run on every onnxruntime build the browser may use.

onnxruntime-web 1.30's native-WebGPU bundle (the one webformers and transformers.js ship) has no CPU
kernel for ``com.microsoft.GatherBlockQuantized``, so a shared 4-bit/8-bit embedding table looked up
with it fails to load on WASM ("Could not find an implementation for GatherBlockQuantized"). The
lookup is cheap (one row per token), so we express it with standard ONNX ops that every execution
provider has — Gather, Cast, Div/Mod (unpacking 2/4-bit codes), Sub, Mul, Reshape — reading the very same
bytes as the lm_head's MatMulNBits, so the table is still stored once.
"""
from __future__ import annotations

import numpy as np

__all__ = ["portable_block_gather"]


def portable_block_gather(model) -> int:
    """Rewrite every GatherBlockQuantized node of ``model`` (an onnx ModelProto) in place; returns how many."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    count = 0
    for idx in reversed(range(len(g.node))):
        node = g.node[idx]
        if node.op_type != "GatherBlockQuantized":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits = int(attrs.get("bits", 4))
        block = int(attrs.get("block_size", 128))
        if int(attrs.get("gather_axis", 0)) != 0 or int(attrs.get("quantize_axis", 1)) not in (1, -1):
            raise ValueError(f"{node.name}: only gather_axis=0, quantize_axis=last is supported")
        if bits not in (2, 4, 8):
            raise ValueError(f"{node.name}: GatherBlockQuantized with bits={bits} is not supported")
        data, indices, scales = node.input[0], node.input[1], node.input[2]
        zp = node.input[3] if len(node.input) > 3 and node.input[3] else None
        scale_t = inits.get(scales)
        scale_type = scale_t.data_type if scale_t is not None else TensorProto.FLOAT
        # scales may come out of a Cast node (fp16 storage, fp32 compute): follow it for the type
        for n in g.node:
            if n.output and n.output[0] == scales and n.op_type == "Cast":
                scale_type = helper.get_attribute_value(n.attribute[0])
        # the number of rows' K: from the scales initializer [V, K/block] when known
        src = scales
        for n in g.node:
            if n.output and n.output[0] == scales and n.op_type == "Cast":
                src = n.input[0]
        n_blocks = int(numpy_helper.to_array(inits[src]).shape[1])
        k = n_blocks * block
        p = node.name or f"gbq{idx}"

        def const(name, value):
            g.initializer.append(numpy_helper.from_array(np.asarray(value), f"{p}/{name}"))
            return f"{p}/{name}"

        new = []

        def op(kind, ins, name, **kw):
            out = f"{p}/{name}"
            new.append(helper.make_node(kind, ins, [out], name=out, **kw))
            return out

        def unpack(packed, name):
            """uint8 [..., n] -> int32 [..., n*8/bits]: lowest bits first (the MatMulNBits layout)."""
            wide = op("Cast", [packed], f"{name}_i32", to=TensorProto.INT32)
            if bits == 8:
                return wide
            mod = const(f"{name}_mod", np.int32(1 << bits))
            axis = const(f"{name}_ax", np.array([-1], np.int64))
            parts = []
            for j in range(8 // bits):
                shifted = op("Div", [wide, const(f"{name}_div{j}", np.int32(1 << (bits * j)))], f"{name}_s{j}") if j else wide
                part = op("Mod", [shifted, mod], f"{name}_p{j}")
                parts.append(op("Unsqueeze", [part, axis], f"{name}_u{j}"))
            both = op("Concat", parts, f"{name}_parts", axis=-1)
            return op("Reshape", [both, const(f"{name}_flat", np.array([0, -1], np.int64))], f"{name}_codes")

        ids_flat = op("Reshape", [indices, const("ids_shape", np.array([-1], np.int64))], "ids_flat")
        rows = op("Gather", [data, ids_flat], "rows", axis=0)                 # [T, K*bits/8]
        codes = unpack(rows, "q")
        blocks_shape = const("blocks_shape", np.array([0, n_blocks, block], np.int64))
        codes = op("Reshape", [codes, blocks_shape], "q_blocks")               # [T, nb, block] int32
        if zp is not None:
            zrows = op("Gather", [zp, ids_flat], "zp_rows", axis=0)
            zcodes = unpack(zrows, "z")
            zcodes = op("Slice", [zcodes, const("z_start", np.array([0], np.int64)),
                                  const("z_end", np.array([n_blocks], np.int64)),
                                  const("z_axis", np.array([1], np.int64))], "zp_blocks")
            zcodes = op("Unsqueeze", [zcodes, const("zp_ax", np.array([-1], np.int64))], "zp_col")
        else:
            zcodes = const("zp_default", np.int32(1 << (bits - 1)))
        centered = op("Sub", [codes, zcodes], "centered")
        values = op("Cast", [centered], "centered_f", to=scale_type)
        srows = op("Gather", [scales, ids_flat], "scale_rows", axis=0)
        scol = op("Unsqueeze", [srows, const("s_ax", np.array([-1], np.int64))], "scale_col")
        deq = op("Mul", [values, scol], "deq")
        flat = op("Reshape", [deq, const("row_shape", np.array([0, k], np.int64))], "deq_rows")
        shape = op("Concat", [op("Shape", [indices], "ids_dims"), const("k", np.array([k], np.int64))],
                   "out_shape", axis=0)
        new.append(helper.make_node("Reshape", [flat, shape], list(node.output), name=f"{p}/out"))
        del g.node[idx]
        for j, n in enumerate(new):
            g.node.insert(idx + j, n)
        count += 1
    return count
