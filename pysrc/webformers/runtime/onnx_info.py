"""What an ONNX model's framing says, read without onnx or protobuf: ``onnx_output_names(data)``.

Only the protobuf framing is walked, through a window of the bytes, so for model bytes that live in JS
(the browser) only small slices cross into Python.
"""
from __future__ import annotations

from .. import platform

__all__ = ["onnx_output_names"]


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
        return bytes(self.byte(i) for i in range(pos, end))


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
