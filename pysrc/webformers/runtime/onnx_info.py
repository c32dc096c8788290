"""What an ONNX model's framing says, read without onnx or protobuf: ``onnx_output_names(data)``,
``onnx_opset(data)``, ``quantized_matmul_weights(data)``.

Only the protobuf framing is walked, through a window of the bytes, so for model bytes that live in JS
(the browser) only small slices cross into Python.
"""
from __future__ import annotations

from .. import platform

__all__ = ["onnx_output_names", "onnx_opset", "quantized_matmul_weights"]


class _Reader:
    """Random access to model bytes (a JS Uint8Array in the browser) through a window, so only small
    slices cross to Python."""

    WINDOW = 1 << 16

    def __init__(self, data):
        self.data = data
        self.n = platform.byte_length(data)
        self.start, self.buf = 0, b""

    def byte(self, pos: int) -> int:
        if not (self.start <= pos < self.start + len(self.buf)):
            self.buf = platform.byte_slice(self.data, pos, min(self.n, pos + self.WINDOW))
            self.start = pos
        return self.buf[pos - self.start]

    def bytes(self, pos: int, end: int) -> bytes:
        if not (self.start <= pos and end <= self.start + len(self.buf)):
            if end - pos > self.WINDOW:
                return platform.byte_slice(self.data, pos, end)
            self.buf = platform.byte_slice(self.data, pos, min(self.n, pos + self.WINDOW))
            self.start = pos
        return self.buf[pos - self.start:end - self.start]


def _varint(r: _Reader, pos: int):
    shift = value = 0
    while True:
        if pos >= r.n:
            raise ValueError("truncated ONNX protobuf")
        b = r.byte(pos)
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(r: _Reader, pos: int, end: int):
    """(field number, wire type, value | (start, end)) of a protobuf message in [pos, end)."""
    while pos < end:
        tag, pos = _varint(r, pos)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, pos = _varint(r, pos)
            yield num, wt, v
        elif wt == 1:
            pos += 8
        elif wt == 2:
            n, pos = _varint(r, pos)
            yield num, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt} in ONNX model")


def onnx_output_names(data) -> list[str]:
    """The graph output names of an ONNX model given as bytes or a JS Uint8Array (reads only the framing)."""
    r = _Reader(data)
    for num, wt, v in _fields(r, 0, r.n):
        if num == 7 and wt == 2:  # ModelProto.graph
            names = []
            for gnum, gwt, gv in _fields(r, *v):
                if gnum == 12 and gwt == 2:  # GraphProto.output: ValueInfoProto
                    for vnum, vwt, vv in _fields(r, *gv):
                        if vnum == 1 and vwt == 2:
                            names.append(r.bytes(*vv).decode("utf-8"))
                            break
            return names
    raise ValueError("not an ONNX model: no graph found")


def onnx_opset(data) -> int:
    """The version of the default ONNX domain (``""`` / ``"ai.onnx"``) a model imports (0: none)."""
    r = _Reader(data)
    for num, wt, v in _fields(r, 0, r.n):
        if num == 8 and wt == 2:  # ModelProto.opset_import: OperatorSetIdProto domain (1), version (2)
            domain, version = b"", 0
            for onum, owt, ov in _fields(r, *v):
                if onum == 1 and owt == 2:
                    domain = r.bytes(*ov)
                elif onum == 2 and owt == 0:
                    version = ov
            if domain in (b"", b"ai.onnx"):
                return version
    return 0


def _graph(r: _Reader):
    for num, wt, v in _fields(r, 0, r.n):
        if num == 7 and wt == 2:  # ModelProto.graph
            return v
    raise ValueError("not an ONNX model: no graph found")


def _matmul(node: bytes):
    """(weight input, K*N) of a com.microsoft MatMulNBits / MatMulBnb4 NodeProto that has an fp32 form (2/4/8
    bits and no g_idx; NF4 in whole blocks: as ``runtime.exec_form``), else None."""
    r = _Reader(node)
    inputs, op, domain, attrs = [], "", "", {}
    for num, wt, v in _fields(r, 0, r.n):
        if wt != 2:
            continue
        if num == 1:
            inputs.append(r.bytes(*v))
        elif num == 4:
            op = r.bytes(*v)
        elif num == 7:
            domain = r.bytes(*v)
        elif num == 5:  # AttributeProto: name (1), i (3)
            name = value = None
            for anum, awt, av in _fields(r, *v):
                if anum == 1 and awt == 2:
                    name = r.bytes(*av)
                elif anum == 3 and awt == 0:
                    value = av
            attrs[name] = value
    if domain != b"com.microsoft" or len(inputs) < 2:
        return None
    k, n, block = attrs.get(b"K") or 0, attrs.get(b"N") or 0, attrs.get(b"block_size") or 0
    if op == b"MatMulNBits":
        ok = attrs.get(b"bits") in (2, 4, 8) and not (len(inputs) > 4 and inputs[4])
    elif op == b"MatMulBnb4":
        ok = attrs.get(b"quant_type", 1) == 1 and block and block % 2 == 0 and (n * k) % block == 0
    else:
        ok = False
    return (inputs[1], k * n) if ok else None


def quantized_matmul_weights(data) -> int:
    """How many weights (sum of K*N) the ``com.microsoft`` MatMulNBits / MatMulBnb4 nodes of an ONNX model's main
    graph that have an fp32 form hold: what that form expands (``runtime.exec_form``). ``data``: bytes or a JS
    Uint8Array; only the nodes and the initializers' headers are read."""
    r = _Reader(data)
    inits, matmuls = set(), []
    for num, wt, v in _fields(r, *_graph(r)):
        if wt != 2:
            continue
        if num == 1:  # GraphProto.node
            node = r.bytes(*v)
            m = _matmul(node) if b"MatMulNBits" in node or b"MatMulBnb4" in node else None
            if m is not None:
                matmuls.append(m)
        elif num == 5:  # GraphProto.initializer: TensorProto name (8), raw_data (9), data_location (14)
            name, values = None, False
            for tnum, twt, tv in _fields(r, *v):
                if tnum == 8 and twt == 2:
                    name = r.bytes(*tv)
                elif (tnum == 9 and twt == 2) or (tnum == 14 and twt == 0 and tv == 1):
                    values = True
            if values:
                inits.add(name)
    return sum(kn for weight, kn in matmuls if weight in inits)
