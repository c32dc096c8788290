"""The fp32 execution form of a model, written with the ``onnx`` package (the toolchain extra): the rewrite the
CPython backend applies, and the reference for ``webformers/assets/exec-form.js``, which applies it in the browser's
onnxruntime worker (the tests check that both build the same model).

onnxruntime has no block-quantized GEMM for WebAssembly: ``com.microsoft.MatMulNBits`` and ``MatMulBnb4``
dequantize their whole weight on every call there. :func:`expand_quantized_matmuls` replaces each such node of
the main graph that has an fp32 form by a decode of its weight plus a plain matmul, so that onnxruntime
decodes the weight once, when the session is created (constant folding), and then runs a prepacked fp32
matmul. A node has an fp32 form when it is a MatMulNBits with 2/4/8-bit codes and no g_idx (act-order), or a
MatMulBnb4 with NF4 codes (quant_type 1) in whole blocks, and its weight initializer has its bytes as raw or
external data; the others stay as they are. The decodes:

- MatMulNBits (2/4/8 bits): its codes [N, K/block, blob] are the bytes of an ONNX uint2/uint4/uint8 tensor
  [N, K] (lowest bits first in both), so the initializer only gets a new type and shape, and
  ``DequantizeLinear(codes, scales [N, K/block], zero points, axis=1, block_size)`` gives W^T;
- MatMulBnb4 (NF4): its bytes [N*K/block, block/2] index a 256-row table of NF4 value pairs (``Gather``),
  times each block's absmax;
- then ``FusedMatMul(x, W^T, transB=1)``; graphs with fp16 activations cast to fp32 and back around it.

A MatMulNBits whose output is only added to a block-sum correction (the float-zero-point form the toolchain
writes: ``main + Reshape(MatMul(ReduceSum(Reshape(x, [-1, nb, g]), [-1]), C), Shape(main))`` with a constant
``C`` [nb, N]) has that correction folded into its weight, ``W^T[n, b*g + j] += C[b, n]``, so the session
runs one matmul per linear, like the fp32 model, instead of five more small nodes per step.

Create the session with :data:`SESSION_CONFIG` (``session.disable_quant_qdq`` = "1"): without it onnxruntime
keeps the DequantizeLinear nodes to fuse them back into MatMulNBits. The products are those of the native
kernels' fp32 path (accuracy level 0), so greedy tokens equal the stored file's.
"""
from __future__ import annotations

import numpy as np

__all__ = ["FORMS", "SESSION_CONFIG", "NF4", "expand_quantized_matmuls", "import_onnx"]

#: "native": the graph as stored; "fp32": weights decoded to fp32 when the session is created.
FORMS = ("native", "fp32")
#: session config entries the fp32 form needs (onnxruntime-web: ``extra: {session: {disable_quant_qdq: "1"}}``)
SESSION_CONFIG = {"session.disable_quant_qdq": "1"}

MS = "com.microsoft"
_KINDS = ("MatMulNBits", "MatMulBnb4")
#: the NF4 code book (QLoRA) of MatMulBnb4 quant_type 1
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
# byte -> (value of its high nibble, value of its low nibble): MatMulBnb4 stores the first element high
_NF4_PAIRS = np.stack([NF4[np.arange(256) >> 4], NF4[np.arange(256) & 15]], -1).astype(np.float32)


def import_onnx():
    """The ``onnx`` module, or an ImportError saying how to get it."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError("execution='fp32' on CPython rewrites the model with the onnx package, which is not "
                          "installed: pip install 'webformers[toolchain]' (or use execution='native')") from e
    return onnx


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _reads(node):
    """Every name ``node`` reads: its inputs and what the nodes of its subgraphs (If / Loop bodies) read."""
    yield from node.input
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                yield from _reads(n)


class _Builder:
    """The nodes and initializers that replace one matmul, named under ``prefix``."""

    def __init__(self, prefix: str):
        self.p = prefix
        self.nodes, self.inits = [], []

    def const(self, name, value):
        from onnx import numpy_helper

        full = f"{self.p}/const/{name}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def i64(self, name, values):
        return self.const(name, np.array(values, np.int64))

    def packed(self, name, onnx_type, dims, raw: bytes):
        from onnx import helper

        full = f"{self.p}/const/{name}"
        self.inits.append(helper.make_tensor(full, onnx_type, dims, raw, raw=True))
        return full

    def op(self, kind, inputs, name, out=None, domain=None, **attrs):
        """Append one node; its output is ``out`` (a name of the graph) or ``prefix/name``."""
        from onnx import helper

        out = out or f"{self.p}/{name}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], name=f"{self.p}/{name}", domain=domain, **attrs))
        return out


class _Graph:
    """What the rewrite reads of the main graph, and initializers re-read with another type and shape."""

    def __init__(self, graph):
        self.g = graph
        self.inits = {t.name: t for t in graph.initializer}
        #: element types the graph states: initializers, graph inputs, Cast outputs
        self.types = {t.name: t.data_type for t in graph.initializer}
        self.types.update((i.name, i.type.tensor_type.elem_type) for i in graph.input)
        #: how many node inputs read a name (subgraphs' too; graph outputs count 2)
        self.uses: dict[str, int] = {}
        for o in graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 2
        for n in graph.node:
            for i in _reads(n):
                self.uses[i] = self.uses.get(i, 0) + 1
        for n in graph.node:
            if n.op_type == "Cast" and n.domain == "" and n.output[0] not in self.types:
                self.types[n.output[0]] = int(_attrs(n)["to"])
        self.copies: dict[str, object] = {}
        #: main-graph node index by output name, and the main-graph node indices reading each name
        self.producer: dict[str, int] = {}
        self.readers: dict[str, list[int]] = {}
        for idx, n in enumerate(graph.node):
            for o in n.output:
                self.producer[o] = idx
            for i in n.input:
                self.readers.setdefault(i, []).append(idx)
        #: names whose values do not depend on the graph inputs: initializers (not overridable by an input) and
        #: outputs of nodes (without subgraphs) reading only such names
        self.inputs = inputs = {i.name for i in graph.input}
        self.const = {t.name for t in graph.initializer if t.name not in inputs}
        for n in graph.node:
            if not any(a.HasField("g") or len(a.graphs) for a in n.attribute) and all(
                    not i or i in self.const for i in n.input):
                self.const.update(n.output)

    def ints(self, name: str):
        """The values of an int64 initializer ``name`` (not overridable by an input) as a list, else None."""
        from onnx import TensorProto, numpy_helper

        t = self.inits.get(name)
        if t is None or name not in self.const or t.data_type != TensorProto.INT64 or t.data_location == t.EXTERNAL:
            return None
        return [int(v) for v in numpy_helper.to_array(t).reshape(-1)]

    def bytes_init(self, name: str) -> bool:
        """Whether ``name`` is an initializer whose value bytes can be re-read with another type (raw_data or
        external data)."""
        t = self.inits.get(name)
        return t is not None and (t.HasField("raw_data") or t.data_location == t.EXTERNAL)

    def retype(self, name: str, onnx_type: int, dims, suffix: str) -> str:
        """The initializer ``name`` (see ``bytes_init``) read as ``onnx_type`` [dims] (the same bytes): changed
        in place when only one node reads it, else a copy named ``name/suffix`` (made once, however many
        nodes read it)."""
        t = self.inits[name]
        if self.uses.get(name, 0) > 1:
            copy_name = f"{name}/{suffix}"
            if copy_name in self.copies:
                return copy_name
            copy = self.g.initializer.add()
            copy.CopyFrom(t)
            copy.name = copy_name
            self.copies[copy_name] = t = copy
        del t.dims[:]
        t.dims.extend(int(d) for d in dims)
        t.data_type = onnx_type
        return t.name


def _unpack_small(b: _Builder, packed, bits: int, name: str):
    """uint8 bytes [..., n] -> uint8 codes [..., n, 8/bits], lowest bits first (small tensors: zero points)."""
    axis = b.i64(f"{name}_ax", [-1])
    if bits == 8:
        return b.op("Unsqueeze", [packed, axis], f"{name}_one")
    mask = b.const(f"{name}_mask", np.uint8((1 << bits) - 1))
    parts = []
    for j in range(8 // bits):
        shifted = packed
        if j:
            shifted = b.op("BitShift", [packed, b.const(f"{name}_sh{j}", np.uint8(bits * j))], f"{name}_s{j}",
                           direction="RIGHT")
        parts.append(b.op("Unsqueeze", [b.op("BitwiseAnd", [shifted, mask], f"{name}_p{j}"), axis], f"{name}_u{j}"))
    return b.op("Concat", parts, f"{name}_codes", axis=-1)


def _decode_nbits(b: _Builder, g: _Graph, node):
    """W^T [N, K] (fp32) of a MatMulNBits node: DequantizeLinear over its codes re-typed as uint<bits> [N, K]."""
    from onnx import TensorProto

    a = _attrs(node)
    k, n, bits, block = int(a["K"]), int(a["N"]), int(a["bits"]), int(a["block_size"])
    utype = {2: TensorProto.UINT2, 4: TensorProto.UINT4, 8: TensorProto.UINT8}[bits]
    nb = -(-k // block)
    codes = g.retype(node.input[1], utype, [n, nb * block], f"u{bits}")
    scales = b.op("Cast", [node.input[2]], "s_f", to=TensorProto.FLOAT)
    scales = b.op("Reshape", [scales, b.i64("s_shape", [n, nb])], "s")
    zp = node.input[3] if len(node.input) > 3 and node.input[3] else None
    zp_type = g.types.get(zp) if zp else None
    whole_bytes = zp is not None and g.bytes_init(zp) and zp_type == TensorProto.UINT8 and (nb * bits) % 8 == 0
    if zp is None or whole_bytes:
        if zp is None:  # the default zero point 2**(bits-1) in every block
            mid = 1 << (bits - 1)
            byte = sum(mid << (bits * j) for j in range(8 // bits))
            zp = b.packed("zp", utype, [n, nb], bytes([byte]) * -(-(n * nb * bits) // 8))
        else:  # packed uint8 rows [N, nb*bits/8]: the bytes of a uint<bits> [N, nb] tensor
            zp = g.retype(zp, utype, [n, nb], f"u{bits}")
        w = b.op("DequantizeLinear", [codes, scales, zp], "w_nk", axis=1, block_size=block)
    else:  # float zero points, or packed rows that are not whole bytes: w = q*s - z*s
        if zp_type == TensorProto.UINT8:
            z = _unpack_small(b, zp, bits, "z")
            z = b.op("Reshape", [z, b.i64("z_rows", [n, -1])], "z_rows")
            z = b.op("Slice", [z, b.i64("z0", [0]), b.i64("z1", [nb]), b.i64("z_axis", [1])], "z_blocks")
        else:
            z = b.op("Reshape", [zp, b.i64("z_shape", [n, nb])], "z_blocks")
        z = b.op("Cast", [z], "z_f", to=TensorProto.FLOAT)
        offset = b.op("Unsqueeze", [b.op("Mul", [z, scales], "zs"), b.i64("zs_ax", [-1])], "zs3")
        w = b.op("DequantizeLinear", [codes, scales], "qs", axis=1, block_size=block)
        w = b.op("Reshape", [w, b.i64("w_blocks", [n, nb, block])], "qs_blocks")
        w = b.op("Sub", [w, offset], "w_blocks")
        w = b.op("Reshape", [w, b.i64("w_rows", [n, nb * block])], "w_nk")
    if nb * block != k:
        w = b.op("Slice", [w, b.i64("k0", [0]), b.i64("k1", [k]), b.i64("k_axis", [1])], "w_nk_k")
    return w


def _block_sum_correction(g: _Graph, node):
    """For a MatMulNBits ``node`` whose output is only added to a block-sum correction of its own input (see
    the module docstring): ``{"y": the Add's output, "c": C, "blocks": nb, "group": g, "at": the Add's index,
    "drop": the indices of the pattern's nodes}``; else None."""
    if node.op_type != "MatMulNBits":
        return None
    a = _attrs(node)
    k, x, main = int(a["K"]), node.input[0], node.output[0]

    def only(name, op):  # the node producing ``name``, of type ``op``, when one main-graph node reads ``name``
        idx = g.producer.get(name)
        if idx is None or g.uses.get(name) != 1 or len(g.readers.get(name, [])) != 1:
            return None, None
        n = g.g.node[idx]
        return (idx, n) if n.op_type == op and n.domain in ("", "ai.onnx") else (None, None)

    readers = g.readers.get(main, [])
    if g.uses.get(main) != 2 or len(readers) != 2:
        return None
    add = next((i for i in readers if g.g.node[i].op_type == "Add"), None)
    shape = next((i for i in readers if g.g.node[i].op_type == "Shape"), None)
    if add is None or shape is None:
        return None
    add_n, shape_n = g.g.node[add], g.g.node[shape]
    if add_n.domain not in ("", "ai.onnx") or shape_n.domain not in ("", "ai.onnx") or shape_n.attribute:
        return None
    if len(add_n.input) != 2 or add_n.input[0] == add_n.input[1]:
        return None
    other = add_n.input[1] if add_n.input[0] == main else add_n.input[0]
    r_idx, r = only(other, "Reshape")
    if r is None or len(r.input) != 2 or r.input[1] != shape_n.output[0] or g.uses.get(r.input[1]) != 1:
        return None
    mm_idx, mm = only(r.input[0], "MatMul")
    if mm is None or mm.input[1] not in g.const:
        return None
    rs_idx, rs = only(mm.input[0], "ReduceSum")
    if rs is None or len(rs.input) != 2 or g.ints(rs.input[1]) not in ([-1], [2]):
        return None
    ra = _attrs(rs)
    if set(ra) - {"keepdims", "noop_with_empty_axes"} or int(ra.get("keepdims", 1)) != 0:
        return None
    xb_idx, xb = only(rs.input[0], "Reshape")
    if xb is None or len(xb.input) != 2 or xb.input[0] != x:
        return None
    dims = g.ints(xb.input[1])
    if dims is None or len(dims) != 3 or dims[0] != -1 or min(dims[1:]) <= 0 or dims[1] * dims[2] != k:
        return None
    return {"y": add_n.output[0], "c": mm.input[1], "blocks": dims[1], "group": dims[2], "at": add,
            "drop": {add, shape, r_idx, mm_idx, rs_idx, xb_idx}}


def _fold_correction(b: _Builder, g: _Graph, w: str, n: int, k: int, corr: dict) -> str:
    """W^T [N, K] plus the block-sum correction C [nb, N] repeated over each block of ``group`` inputs."""
    from onnx import TensorProto

    nb, group, c = corr["blocks"], corr["group"], corr["c"]
    ctype = g.types.get(c)
    if ctype is None:
        c = b.op("CastLike", [c, w], "corr_f")
    elif ctype != TensorProto.FLOAT:
        c = b.op("Cast", [c], "corr_f", to=TensorProto.FLOAT)
    c = b.op("Reshape", [c, b.i64("corr_shape", [nb, n])], "corr_bn")
    c = b.op("Transpose", [c], "corr_nb", perm=[1, 0])
    c = b.op("Unsqueeze", [c, b.i64("corr_ax", [-1])], "corr_nb1")
    w = b.op("Reshape", [w, b.i64("wc_shape", [n, nb, group])], "wc_blocks")
    w = b.op("Add", [w, c], "wc_sum")
    return b.op("Reshape", [w, b.i64("wc_rows", [n, k])], "w_corrected")


def _decode_bnb4(b: _Builder, g: _Graph, node):
    """W^T [N, K] (fp32) of a MatMulBnb4 (NF4) node: its bytes [N*K/block, block/2] index the NF4 pair table."""
    from onnx import TensorProto

    a = _attrs(node)
    k, n, block = int(a["K"]), int(a["N"]), int(a["block_size"])
    blocks = n * k // block
    codes = g.retype(node.input[1], TensorProto.UINT8, [blocks, block // 2], "blocks")
    codes = b.op("Cast", [codes], "codes_i32", to=TensorProto.INT32)
    values = b.op("Gather", [b.const("nf4_pairs", _NF4_PAIRS), codes], "values", axis=0)  # [blocks, block/2, 2]
    absmax = b.op("Cast", [node.input[2]], "absmax_f", to=TensorProto.FLOAT)
    absmax = b.op("Reshape", [absmax, b.i64("absmax_shape", [blocks, 1, 1])], "absmax")
    w = b.op("Mul", [values, absmax], "scaled")
    return b.op("Reshape", [w, b.i64("w_rows", [n, k])], "w_nk")


def _rewritable(g: _Graph, node) -> bool:
    """Whether ``node`` has an fp32 form (see the module docstring)."""
    if node.domain != MS or node.op_type not in _KINDS or not g.bytes_init(node.input[1]):
        return False
    a = _attrs(node)
    if node.op_type == "MatMulNBits":
        return int(a["bits"]) in (2, 4, 8) and not (len(node.input) > 4 and node.input[4])
    k, n, block = int(a["K"]), int(a["N"]), int(a["block_size"])
    return int(a.get("quant_type", 1)) == 1 and block % 2 == 0 and (n * k) % block == 0


def _rewrite_node(b: _Builder, g: _Graph, node, corr=None):
    """Decode W^T into ``b`` (plus the block-sum correction ``corr`` when there is one, see
    ``_block_sum_correction``), then FusedMatMul in fp32 (+ bias) writing the node's output (``corr``'s Add's
    output when there is one)."""
    from onnx import TensorProto

    w = _decode_nbits(b, g, node) if node.op_type == "MatMulNBits" else _decode_bnb4(b, g, node)
    if corr is not None:
        a = _attrs(node)
        w = _fold_correction(b, g, w, int(a["N"]), int(a["K"]), corr)
    x, y = node.input[0], (corr["y"] if corr is not None else node.output[0])
    act = g.types.get(node.input[2])  # the activations have the scales' type (T1 of both ops)
    if act == TensorProto.FLOAT:
        x32 = x
    elif act is None:
        x32 = b.op("CastLike", [x, w], "x_f")
    else:
        x32 = b.op("Cast", [x], "x_f", to=TensorProto.FLOAT)
    bias = node.input[5] if node.op_type == "MatMulNBits" and len(node.input) > 5 and node.input[5] else None
    out = y if bias is None and act == TensorProto.FLOAT else f"{b.p}/y_f"
    b.op("FusedMatMul", [x32, w], "y_f", out=out, domain=MS, transB=1)
    if bias is not None:
        out = b.op("Add", [out, b.op("CastLike", [bias, w], "bias_f")], "y_bias",
                   out=y if act == TensorProto.FLOAT else None)
    if act is None:
        b.op("CastLike", [out, x], "out", out=y)
    elif act != TensorProto.FLOAT:
        b.op("Cast", [out], "out", out=y, to=act)


def expand_quantized_matmuls(model, form: str = "fp32") -> dict:
    """Rewrite ``model`` (an onnx ModelProto, in place) into execution ``form``: "native" leaves it as it is;
    "fp32" rewrites every node of the main graph that has an fp32 form (see the module docstring). Returns
    ``{"changed": how many matmuls were rewritten, "weights": how many weights those hold (sum of K*N)}``.
    2-bit codes need uint2 tensors: the model then imports ONNX opset 25 and IR version 11.
    """
    if form not in FORMS:
        raise ValueError(f"unknown execution form {form!r}; choose one of: {', '.join(FORMS)}")
    if form == "native":
        return {"changed": 0, "weights": 0}
    graph = model.graph
    g = _Graph(graph)
    targets = {i for i, n in enumerate(graph.node) if _rewritable(g, n)}
    if not targets:
        return {"changed": 0, "weights": 0}
    if not any(o.domain in ("", "ai.onnx") and o.version >= 21 for o in model.opset_import):
        raise ValueError("the fp32 form needs ONNX opset >= 21 (blocked DequantizeLinear); the model imports "
                         + ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import))
    added, uint2, weights = [], False, 0
    emit, drop = {}, set()  # node index -> the replacement emitted there; pattern nodes left out
    pattern_reads: dict[str, int] = {}  # how many times the left-out correction nodes read each name
    for idx, node in enumerate(graph.node):
        if idx not in targets:
            continue
        a = _attrs(node)
        weights += int(a["K"]) * int(a["N"])
        uint2 |= node.op_type == "MatMulNBits" and int(a["bits"]) == 2
        corr = _block_sum_correction(g, node)
        b = _Builder(f"{node.name or f'{node.op_type}_{idx}'}/{form}")
        _rewrite_node(b, g, node, corr)
        # with a correction, the replacement takes the place of its Add (after every node it reads)
        emit[idx if corr is None else corr["at"]] = b
        drop.add(idx)
        if corr is not None:
            drop |= corr["drop"]
            for i in corr["drop"]:
                for name in graph.node[i].input:
                    pattern_reads[name] = pattern_reads.get(name, 0) + 1
        added.extend(b.inits)
    out_nodes = []
    for idx, node in enumerate(graph.node):
        if idx in emit:
            out_nodes.extend(emit[idx].nodes)
        elif idx not in drop:
            out_nodes.append(node)
    # initializers only the left-out correction nodes read (block shapes, axes) go with them
    kept_reads = {i for b in emit.values() for n in b.nodes for i in n.input}
    dead = {name for name, count in pattern_reads.items() if name in g.inits and name not in g.inputs
            and name not in kept_reads and g.uses.get(name) == count}
    if dead:
        live = [t for t in graph.initializer if t.name not in dead]
        del graph.initializer[:]
        graph.initializer.extend(live)
    del graph.node[:]
    graph.node.extend(out_nodes)
    graph.initializer.extend(added)
    if uint2:  # uint2 tensors and DequantizeLinear over them: ONNX opset 25, IR 11
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, 25)
        model.ir_version = max(model.ir_version, 11)
    return {"changed": len(targets), "weights": weights}
