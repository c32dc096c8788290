// Execution forms: ONNX model bytes rewritten before onnxruntime-web creates a session from them.
//
// onnxruntime's WebAssembly build has no block-quantized GEMM: com.microsoft.MatMulNBits and MatMulBnb4
// dequantize their whole weight on every call. expandQuantizedMatmuls(bytes, "fp32") replaces each such node
// it can (see rewritable) by a decode of its weight plus a plain matmul, so that onnxruntime decodes the
// weight once, when the session is created (constant folding), and then runs a prepacked fp32 matmul:
//   MatMulNBits (2/4/8 bits): its codes [N, K/block, blob] are the bytes of an ONNX uint2/uint4/uint8 tensor
//     [N, K] (lowest bits first in both), so the initializer only gets a new type and shape, and
//     DequantizeLinear(codes, scales [N, K/block], zero points, axis=1, block_size) gives W^T;
//   MatMulBnb4 (NF4): its bytes [N*K/block, block/2] index a 256-row table of NF4 value pairs (Gather),
//     times each block's absmax;
//   then FusedMatMul(x, W^T, transB=1); graphs with fp16 activations cast to fp32 and back around it.
// A MatMulNBits whose output is only added to a block-sum correction (the float-zero-point form the toolchain
// writes: main + Reshape(MatMul(ReduceSum(Reshape(x, [-1, nb, g]), [-1]), C), Shape(main)) with a constant C
// [nb, N]) has that correction folded into its weight, W^T[n, b*g + j] += C[b, n], so the session runs one
// matmul per linear, like the fp32 model, instead of five more small nodes per step.
// Create the session with `extra: SESSION_EXTRA` (session.disable_quant_qdq = "1"): without it onnxruntime
// keeps the DequantizeLinear nodes to fuse them back into MatMulNBits. Only the graph's small parts are
// re-encoded; every weight byte is copied through as it is. pysrc/webformers/runtime/exec_form.py is the same
// rewrite written with the onnx package (the tests check that both build the same model).

export const FORMS = ["native", "fp32"];
export const SESSION_EXTRA = { session: { disable_quant_qdq: "1" } };

const MS = "com.microsoft";
const T = { FLOAT: 1, UINT8: 2, INT32: 6, INT64: 7, UINT4: 21, UINT2: 25 };
const UTYPE = { 2: T.UINT2, 4: T.UINT4, 8: T.UINT8 };
const KINDS = ["MatMulNBits", "MatMulBnb4"];
// the NF4 code book (QLoRA) of MatMulBnb4 quant_type 1
const NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
  0.7229568362236023, 1.0];
// byte -> [value of its high nibble, value of its low nibble] (MatMulBnb4 stores the first element high)
const NF4_PAIRS = Array.from({ length: 512 }, (_, i) => NF4[i & 1 ? (i >> 1) & 15 : i >> 5]);

// ---- protobuf reading: a message's fields as byte ranges of the model (nothing is copied)
const utf8 = new TextDecoder();
const utf8enc = new TextEncoder();

// A varint as a Number: exact below 2**53, which covers what this module reads (lengths, field tags, element
// types, dims and the K/N/bits/block_size/quant_type/to attributes); negative int64 values come out wrong.
function readVarint(buf, pos) {
  let value = 0, scale = 1, b;
  do {
    if (pos >= buf.length) throw new Error("truncated ONNX protobuf (varint)");
    b = buf[pos++];
    value += (b & 0x7f) * scale;
    scale *= 128;
  } while (b & 0x80);
  return [value, pos];
}

// {field, wire, at (the tag's offset), vstart, end, value (varints)} for each field in [start, end)
function* fields(buf, start = 0, end = buf.length) {
  let pos = start;
  while (pos < end) {
    const at = pos;
    let tag;
    [tag, pos] = readVarint(buf, pos);
    const field = Math.floor(tag / 8), wire = tag & 7;
    let value = null, vstart = pos;
    if (wire === 0) [value, pos] = readVarint(buf, pos);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      let len;
      [len, vstart] = readVarint(buf, pos);
      pos = vstart + len;
    } else throw new Error(`unsupported protobuf wire type ${wire} in the ONNX model`);
    if (pos > end) throw new Error("truncated ONNX protobuf");
    yield { field, wire, at, vstart, end: pos, value };
  }
}

const str = (buf, f) => utf8.decode(buf.subarray(f.vstart, f.end));

// NodeProto: inputs, outputs, name, op type, domain, its attribute names, its int attributes and its
// subgraphs (If/Loop bodies)
function parseNode(buf, f) {
  const n = { input: [], output: [], name: "", opType: "", domain: "", attrNames: [], attrs: {}, subgraphs: [] };
  for (const g of fields(buf, f.vstart, f.end)) {
    if (g.field === 1) n.input.push(str(buf, g));
    else if (g.field === 2) n.output.push(str(buf, g));
    else if (g.field === 3) n.name = str(buf, g);
    else if (g.field === 4) n.opType = str(buf, g);
    else if (g.field === 7) n.domain = str(buf, g);
    else if (g.field === 5) {
      let name = "", i = null;
      for (const a of fields(buf, g.vstart, g.end)) {
        if (a.field === 1) name = str(buf, a);
        else if (a.field === 3) i = a.value;
        else if (a.field === 6 || a.field === 11) n.subgraphs.push(a);  // AttributeProto.g / .graphs
      }
      n.attrNames.push(name);
      if (i !== null) n.attrs[name] = i;
    }
  }
  return n;
}

// every name the nodes of a subgraph (and of its own subgraphs) read
function* subgraphInputs(buf, graph) {
  for (const f of fields(buf, graph.vstart, graph.end)) {
    if (f.field !== 1) continue;
    const n = parseNode(buf, f);
    yield* n.input;
    for (const s of n.subgraphs) yield* subgraphInputs(buf, s);
  }
}

// the values of an int64 TensorProto as Numbers (from raw_data or int64_data), or null when they are external
function int64Values(buf, f) {
  const out = [];
  let external = false, raw = null;
  for (const g of fields(buf, f.vstart, f.end)) {
    if (g.field === 9) raw = g;
    else if (g.field === 14) external = g.value === 1;
    else if (g.field === 7 && g.wire === 0) out.push(Number(BigInt.asIntN(64, BigInt(varintBig(buf, g.vstart)))));
    else if (g.field === 7) {  // packed
      for (let pos = g.vstart; pos < g.end;) {
        const [v, next] = varintBigAt(buf, pos);
        out.push(Number(BigInt.asIntN(64, v)));
        pos = next;
      }
    }
  }
  if (external) return null;
  if (raw) {
    const view = new DataView(buf.buffer, buf.byteOffset + raw.vstart, raw.end - raw.vstart);
    for (let i = 0; i + 8 <= view.byteLength; i += 8) out.push(Number(view.getBigInt64(i, true)));
  }
  return out;
}

// a varint as a BigInt (exact over 64 bits) and the offset after it
function varintBigAt(buf, pos) {
  let value = 0n, shift = 0n, b;
  do {
    if (pos >= buf.length) throw new Error("truncated ONNX protobuf (varint)");
    b = buf[pos++];
    value |= BigInt(b & 0x7f) << shift;
    shift += 7n;
  } while (b & 0x80);
  return [value, pos];
}
const varintBig = (buf, pos) => varintBigAt(buf, pos)[0];

// TensorProto header: name, element type, and whether its values are raw_data or external
function parseTensor(buf, f) {
  const t = { f, name: "", type: 0, raw: false, external: false };
  for (const g of fields(buf, f.vstart, f.end)) {
    if (g.field === 8) t.name = str(buf, g);
    else if (g.field === 2) t.type = g.value;
    else if (g.field === 9) t.raw = true;
    else if (g.field === 14) t.external = g.value === 1;
  }
  return t;
}

// ValueInfoProto -> [name, tensor element type]
function valueInfo(buf, f) {
  let name = "", type = 0;
  for (const g of fields(buf, f.vstart, f.end)) {
    if (g.field === 1) name = str(buf, g);
    else if (g.field === 2) {
      for (const t of fields(buf, g.vstart, g.end)) {
        if (t.field !== 1) continue;  // TypeProto.tensor_type
        for (const e of fields(buf, t.vstart, t.end)) if (e.field === 1) type = e.value;
      }
    }
  }
  return [name, type];
}

// OperatorSetIdProto -> {domain, version}
function opsetId(buf, f) {
  let domain = "", version = 0;
  for (const o of fields(buf, f.vstart, f.end)) {
    if (o.field === 1) domain = str(buf, o);
    else if (o.field === 2) version = o.value;
  }
  return { domain, version };
}

// ---- protobuf writing: a message as a list of byte parts (the model's own bytes are referenced, not copied)
class Writer {
  constructor() { this.parts = []; this.length = 0; }
  raw(bytes) { this.parts.push(bytes); this.length += bytes.length; }
  varint(v) {
    const out = [];
    let x = BigInt.asUintN(64, BigInt(v));
    do {
      let b = Number(x & 0x7fn);
      x >>= 7n;
      if (x) b |= 0x80;
      out.push(b);
    } while (x);
    this.raw(Uint8Array.from(out));
  }
  tag(field, wire) { this.varint(field * 8 + wire); }
  bytes(field, bytes) { this.tag(field, 2); this.varint(bytes.length); this.raw(bytes); }
  string(field, s) { this.bytes(field, utf8enc.encode(s)); }
  int(field, v) { this.tag(field, 0); this.varint(v); }
  message(field, w) { this.tag(field, 2); this.varint(w.length); for (const p of w.parts) this.raw(p); }
  finish() {
    const out = new Uint8Array(this.length);
    let pos = 0;
    for (const p of this.parts) { out.set(p, pos); pos += p.length; }
    return out;
  }
}

// NodeProto with attributes sorted by name (as onnx.helper.make_node): ints, int lists or strings
function encodeNode(kind, inputs, output, name, attrs, domain) {
  const w = new Writer();
  for (const i of inputs) w.string(1, i);
  w.string(2, output);
  w.string(3, name);
  w.string(4, kind);
  if (domain) w.string(7, domain);
  for (const k of Object.keys(attrs).sort()) {
    const v = attrs[k], a = new Writer();
    a.string(1, k);
    if (typeof v === "string") {
      a.string(4, v);
      a.int(20, 3);  // AttributeProto.STRING
    } else if (Array.isArray(v)) {
      for (const i of v) a.int(8, i);
      a.int(20, 7);  // AttributeProto.INTS
    } else {
      a.int(3, v);
      a.int(20, 2);  // AttributeProto.INT
    }
    w.message(5, a);
  }
  return w;
}

const ARRAYS = { [T.FLOAT]: Float32Array, [T.UINT8]: Uint8Array, [T.INT32]: Int32Array, [T.INT64]: BigInt64Array };

function encodeTensor(name, type, dims, raw) {
  const w = new Writer();
  for (const d of dims) w.int(1, d);
  w.int(2, type);
  w.string(8, name);
  w.bytes(9, raw);
  return w;
}

function typedBytes(type, values) {
  const arr = type === T.INT64 ? BigInt64Array.from(values, BigInt) : ARRAYS[type].from(values);
  return new Uint8Array(arr.buffer);
}

// an initializer with another element type and shape: the same value bytes, under `name`
function retypedTensor(buf, t, type, dims, name) {
  const w = new Writer();
  for (const d of dims) w.int(1, d);
  w.int(2, type);
  if (name !== t.name) w.string(8, name);
  for (const g of fields(buf, t.f.vstart, t.f.end)) {
    if (g.field === 1 || g.field === 2 || (g.field === 8 && name !== t.name)) continue;
    w.raw(buf.subarray(g.at, g.end));
  }
  return w;
}

// ---- the rewrite (node names, ops and constants as in exec_form.py)

// the nodes and initializers that replace one matmul, named under `prefix`, and the names its nodes read
class Builder {
  constructor(prefix) { this.p = prefix; this.nodes = []; this.inits = []; this.reads = []; }
  const(name, type, dims, values) { return this.packed(name, type, dims, typedBytes(type, values)); }
  i64(name, values) { return this.const(name, T.INT64, [values.length], values); }
  packed(name, type, dims, raw) {
    const full = `${this.p}/const/${name}`;
    this.inits.push(encodeTensor(full, type, dims, raw));
    return full;
  }
  // one node; its output is `out` (a name of the graph) or `prefix/name`
  op(kind, inputs, name, attrs = {}, out = null, domain = "") {
    const output = out || `${this.p}/${name}`;
    this.reads.push(...inputs);
    this.nodes.push(encodeNode(kind, inputs, output, `${this.p}/${name}`, attrs, domain));
    return output;
  }
}

class Graph {
  constructor(buf, graphField) {
    this.buf = buf;
    this.fields = [...fields(buf, graphField.vstart, graphField.end)];
    this.types = new Map();     // element types the graph states: initializers, graph inputs, Cast outputs
    this.inits = new Map();     // name -> initializer header
    this.uses = new Map();      // name -> how many node inputs read it (subgraphs' too; graph outputs count 2)
    this.retyped = new Map();   // initializer name -> its retyped encoding (one reader: changed in place)
    this.copies = new Map();    // copy name -> retyped copy of a shared initializer
    this.nodes = [];
    this.producer = new Map();  // name -> index of the main-graph node writing it
    this.readers = new Map();   // name -> indices of the main-graph nodes reading it
    const inputs = this.inputs = new Set();
    for (const f of this.fields) {
      if (f.field === 5) {
        const t = parseTensor(buf, f);
        this.inits.set(t.name, t);
        this.types.set(t.name, t.type);
      } else if (f.field === 11) {
        const [name, type] = valueInfo(buf, f);
        this.types.set(name, type);
        inputs.add(name);
      } else if (f.field === 12) {
        const [name] = valueInfo(buf, f);
        this.uses.set(name, (this.uses.get(name) || 0) + 2);
      } else if (f.field === 1) {
        const n = parseNode(buf, f);
        this.nodes.push(n);
        for (const i of n.input) this.uses.set(i, (this.uses.get(i) || 0) + 1);
        for (const sub of n.subgraphs) for (const i of subgraphInputs(buf, sub)) this.uses.set(i, (this.uses.get(i) || 0) + 1);
      }
    }
    // names whose values do not depend on the graph inputs: initializers (not overridable by an input) and
    // outputs of nodes (without subgraphs) reading only such names
    this.consts = new Set([...this.inits.keys()].filter((name) => !inputs.has(name)));
    this.nodes.forEach((n, idx) => {
      for (const o of n.output) this.producer.set(o, idx);
      for (const i of n.input) {
        if (!this.readers.has(i)) this.readers.set(i, []);
        this.readers.get(i).push(idx);
      }
      if (!n.subgraphs.length && n.input.every((i) => !i || this.consts.has(i))) for (const o of n.output) this.consts.add(o);
    });
    for (const n of this.nodes) {
      if (n.opType === "Cast" && n.domain === "" && !this.types.has(n.output[0])) this.types.set(n.output[0], n.attrs.to);
    }
  }

  // the values of an int64 initializer `name` (not overridable by an input), else null
  ints(name) {
    const t = this.inits.get(name);
    if (t === undefined || !this.consts.has(name) || t.type !== T.INT64) return null;
    return int64Values(this.buf, t.f);
  }

  // an initializer whose value bytes can be re-read with another type (raw_data or external data)
  bytesInit(name) {
    const t = this.inits.get(name);
    return t !== undefined && (t.raw || t.external);
  }

  // the initializer `name` (see bytesInit) read as `type` [dims]: changed in place when only one node reads
  // it, else a copy named `name/suffix` (made once, however many nodes read it)
  retype(name, type, dims, suffix) {
    const t = this.inits.get(name);
    if ((this.uses.get(name) || 0) > 1) {
      const copy = `${name}/${suffix}`;
      if (!this.copies.has(copy)) this.copies.set(copy, retypedTensor(this.buf, t, type, dims, copy));
      return copy;
    }
    this.retyped.set(name, retypedTensor(this.buf, t, type, dims, name));
    return name;
  }
}

// uint8 bytes [..., n] -> uint8 codes [..., n, 8/bits], lowest bits first (for small tensors: zero points)
function unpackSmall(b, packed, bits, name) {
  const axis = b.i64(`${name}_ax`, [-1]);
  if (bits === 8) return b.op("Unsqueeze", [packed, axis], `${name}_one`);
  const mask = b.const(`${name}_mask`, T.UINT8, [], [(1 << bits) - 1]);
  const parts = [];
  for (let j = 0; j < 8 / bits; j++) {
    let shifted = packed;
    if (j) shifted = b.op("BitShift", [packed, b.const(`${name}_sh${j}`, T.UINT8, [], [bits * j])], `${name}_s${j}`, { direction: "RIGHT" });
    parts.push(b.op("Unsqueeze", [b.op("BitwiseAnd", [shifted, mask], `${name}_p${j}`), axis], `${name}_u${j}`));
  }
  return b.op("Concat", parts, `${name}_codes`, { axis: -1 });
}

// Whether node `n` has an fp32 form: a MatMulNBits with 2/4/8-bit codes and no g_idx (act-order), or a
// MatMulBnb4 with NF4 codes (quant_type 1) in whole blocks, whose weight initializer has its bytes as raw or
// external data. The others stay as they are.
function rewritable(g, node) {
  if (node.domain !== MS || !KINDS.includes(node.opType) || !g.bytesInit(node.input[1])) return false;
  const { K: k, N: n, bits, block_size: block, quant_type: qtype = 1 } = node.attrs;
  if (node.opType === "MatMulNBits") return [2, 4, 8].includes(bits) && !node.input[4];
  return qtype === 1 && block % 2 === 0 && (n * k) % block === 0;
}

// W^T [N, K] (fp32) of a MatMulNBits node: DequantizeLinear over its codes re-typed as uint<bits> [N, K]
function decodeNbits(b, g, node) {
  const { K: k, N: n, bits, block_size: block } = node.attrs;
  const utype = UTYPE[bits], nb = Math.ceil(k / block);
  const codes = g.retype(node.input[1], utype, [n, nb * block], `u${bits}`);
  let scales = b.op("Cast", [node.input[2]], "s_f", { to: T.FLOAT });
  scales = b.op("Reshape", [scales, b.i64("s_shape", [n, nb])], "s");
  let zp = node.input[3] || null;
  const zpType = zp ? g.types.get(zp) : undefined;
  const wholeBytes = zp !== null && g.bytesInit(zp) && zpType === T.UINT8 && (nb * bits) % 8 === 0;
  let w;
  if (zp === null || wholeBytes) {
    if (zp === null) {  // the default zero point 2**(bits-1) in every block
      const mid = 1 << (bits - 1);
      let byte = 0;
      for (let j = 0; j < 8 / bits; j++) byte |= mid << (bits * j);
      zp = b.packed("zp", utype, [n, nb], new Uint8Array(Math.ceil((n * nb * bits) / 8)).fill(byte));
    } else {  // packed uint8 rows [N, nb*bits/8]: the bytes of a uint<bits> [N, nb] tensor
      zp = g.retype(zp, utype, [n, nb], `u${bits}`);
    }
    w = b.op("DequantizeLinear", [codes, scales, zp], "w_nk", { axis: 1, block_size: block });
  } else {  // float zero points, or packed rows that are not whole bytes: w = q*s - z*s
    let z;
    if (zpType === T.UINT8) {
      z = unpackSmall(b, zp, bits, "z");
      z = b.op("Reshape", [z, b.i64("z_rows", [n, -1])], "z_rows");
      z = b.op("Slice", [z, b.i64("z0", [0]), b.i64("z1", [nb]), b.i64("z_axis", [1])], "z_blocks");
    } else z = b.op("Reshape", [zp, b.i64("z_shape", [n, nb])], "z_blocks");
    z = b.op("Cast", [z], "z_f", { to: T.FLOAT });
    const offset = b.op("Unsqueeze", [b.op("Mul", [z, scales], "zs"), b.i64("zs_ax", [-1])], "zs3");
    w = b.op("DequantizeLinear", [codes, scales], "qs", { axis: 1, block_size: block });
    w = b.op("Reshape", [w, b.i64("w_blocks", [n, nb, block])], "qs_blocks");
    w = b.op("Sub", [w, offset], "w_blocks");
    w = b.op("Reshape", [w, b.i64("w_rows", [n, nb * block])], "w_nk");
  }
  if (nb * block !== k) w = b.op("Slice", [w, b.i64("k0", [0]), b.i64("k1", [k]), b.i64("k_axis", [1])], "w_nk_k");
  return w;
}

const isOnnxDomain = (domain) => domain === "" || domain === "ai.onnx";
const sameInts = (a, b) => a !== null && a.length === b.length && a.every((v, i) => v === b[i]);

// For a MatMulNBits `node` whose output is only added to a block-sum correction of its own input (see the top
// of this file): {y: the Add's output, c: C, blocks: nb, group: g, at: the Add's index, drop: the indices of
// the pattern's nodes}; else null.
function blockSumCorrection(g, node) {
  if (node.opType !== "MatMulNBits") return null;
  const k = node.attrs.K, x = node.input[0], main = node.output[0];
  // the node producing `name`, of type `op`, when one main-graph node reads `name`
  const only = (name, op) => {
    const idx = g.producer.get(name);
    if (idx === undefined || g.uses.get(name) !== 1 || (g.readers.get(name) || []).length !== 1) return [null, null];
    const n = g.nodes[idx];
    return n.opType === op && isOnnxDomain(n.domain) ? [idx, n] : [null, null];
  };
  const readers = g.readers.get(main) || [];
  if (g.uses.get(main) !== 2 || readers.length !== 2) return null;
  const add = readers.find((i) => g.nodes[i].opType === "Add");
  const shape = readers.find((i) => g.nodes[i].opType === "Shape");
  if (add === undefined || shape === undefined) return null;
  const addN = g.nodes[add], shapeN = g.nodes[shape];
  if (!isOnnxDomain(addN.domain) || !isOnnxDomain(shapeN.domain) || shapeN.attrNames.length) return null;
  if (addN.input.length !== 2 || addN.input[0] === addN.input[1]) return null;
  const other = addN.input[0] === main ? addN.input[1] : addN.input[0];
  const [rIdx, r] = only(other, "Reshape");
  if (r === null || r.input.length !== 2 || r.input[1] !== shapeN.output[0] || g.uses.get(r.input[1]) !== 1) return null;
  const [mmIdx, mm] = only(r.input[0], "MatMul");
  if (mm === null || !g.consts.has(mm.input[1])) return null;
  const [rsIdx, rs] = only(mm.input[0], "ReduceSum");
  if (rs === null || rs.input.length !== 2) return null;
  const axes = g.ints(rs.input[1]);
  if (!sameInts(axes, [-1]) && !sameInts(axes, [2])) return null;
  if (rs.attrNames.some((a) => a !== "keepdims" && a !== "noop_with_empty_axes") || (rs.attrs.keepdims ?? 1) !== 0) return null;
  const [xbIdx, xb] = only(rs.input[0], "Reshape");
  if (xb === null || xb.input.length !== 2 || xb.input[0] !== x) return null;
  const dims = g.ints(xb.input[1]);
  if (dims === null || dims.length !== 3 || dims[0] !== -1 || Math.min(dims[1], dims[2]) <= 0 || dims[1] * dims[2] !== k) return null;
  return { y: addN.output[0], c: mm.input[1], blocks: dims[1], group: dims[2], at: add,
           drop: [add, shape, rIdx, mmIdx, rsIdx, xbIdx] };
}

// W^T [N, K] plus the block-sum correction C [nb, N] repeated over each block of `group` inputs
function foldCorrection(b, g, w, n, k, corr) {
  const { blocks: nb, group } = corr;
  let c = corr.c;
  const ctype = g.types.get(c);
  if (ctype === undefined) c = b.op("CastLike", [c, w], "corr_f");
  else if (ctype !== T.FLOAT) c = b.op("Cast", [c], "corr_f", { to: T.FLOAT });
  c = b.op("Reshape", [c, b.i64("corr_shape", [nb, n])], "corr_bn");
  c = b.op("Transpose", [c], "corr_nb", { perm: [1, 0] });
  c = b.op("Unsqueeze", [c, b.i64("corr_ax", [-1])], "corr_nb1");
  w = b.op("Reshape", [w, b.i64("wc_shape", [n, nb, group])], "wc_blocks");
  w = b.op("Add", [w, c], "wc_sum");
  return b.op("Reshape", [w, b.i64("wc_rows", [n, k])], "w_corrected");
}

// W^T [N, K] (fp32) of a MatMulBnb4 (NF4) node: its bytes [N*K/block, block/2] index NF4_PAIRS
function decodeBnb4(b, g, node) {
  const { K: k, N: n, block_size: block } = node.attrs;
  const blocks = (n * k) / block;
  let codes = g.retype(node.input[1], T.UINT8, [blocks, block / 2], "blocks");
  codes = b.op("Cast", [codes], "codes_i32", { to: T.INT32 });
  const values = b.op("Gather", [b.const("nf4_pairs", T.FLOAT, [256, 2], NF4_PAIRS), codes], "values", { axis: 0 });
  let absmax = b.op("Cast", [node.input[2]], "absmax_f", { to: T.FLOAT });
  absmax = b.op("Reshape", [absmax, b.i64("absmax_shape", [blocks, 1, 1])], "absmax");
  const w = b.op("Mul", [values, absmax], "scaled");
  return b.op("Reshape", [w, b.i64("w_rows", [n, k])], "w_nk");
}

// the Builder holding node `idx`'s replacement: decode W^T (plus the block-sum correction `corr` when there is
// one, see blockSumCorrection), then FusedMatMul in fp32 (+ bias) writing the node's output (`corr`'s Add's
// output when there is one)
function rewriteNode(g, node, form, idx, corr) {
  const b = new Builder(`${node.name || `${node.opType}_${idx}`}/${form}`);
  let w = node.opType === "MatMulNBits" ? decodeNbits(b, g, node) : decodeBnb4(b, g, node);
  if (corr) w = foldCorrection(b, g, w, node.attrs.N, node.attrs.K, corr);
  const x = node.input[0], y = corr ? corr.y : node.output[0];
  const act = g.types.get(node.input[2]);  // the activations have the scales' type (T1 of both ops)
  let x32 = x;
  if (act === undefined) x32 = b.op("CastLike", [x, w], "x_f");
  else if (act !== T.FLOAT) x32 = b.op("Cast", [x], "x_f", { to: T.FLOAT });
  const bias = node.opType === "MatMulNBits" && node.input[5] ? node.input[5] : null;
  let out = bias === null && act === T.FLOAT ? y : `${b.p}/y_f`;
  b.op("FusedMatMul", [x32, w], "y_f", { transB: 1 }, out, MS);
  if (bias !== null) out = b.op("Add", [out, b.op("CastLike", [bias, w], "bias_f")], "y_bias", {}, act === T.FLOAT ? y : null);
  if (act === undefined) b.op("CastLike", [out, x], "out", {}, y);
  else if (act !== T.FLOAT) b.op("Cast", [out], "out", { to: act }, y);
  return b;
}

/**
 * The model `bytes` (a Uint8Array of an ONNX ModelProto) in execution `form`: "native" returns them as they
 * are; "fp32" rewrites every MatMulNBits / MatMulBnb4 of the main graph that has an fp32 form (rewritable; see
 * the top of this file).
 * Returns {bytes, changed: how many matmuls were rewritten, weights: how many weights those hold (sum of K*N)}.
 * 2-bit codes need uint2 tensors: the rewritten model then imports ONNX opset 25 and IR version 11.
 */
export function expandQuantizedMatmuls(bytes, form = "fp32") {
  if (!FORMS.includes(form)) throw new Error(`unknown execution form ${JSON.stringify(form)}; choose one of: ${FORMS.join(", ")}`);
  if (form === "native") return { bytes, changed: 0, weights: 0 };
  const model = [...fields(bytes)];
  const graphField = model.find((f) => f.field === 7);
  if (!graphField) throw new Error("not an ONNX model: no graph");
  const g = new Graph(bytes, graphField);
  const targets = [];
  let weights = 0;
  g.nodes.forEach((n, idx) => {
    if (!rewritable(g, n)) return;
    targets.push(idx);
    weights += n.attrs.K * n.attrs.N;
  });
  if (!targets.length) return { bytes, changed: 0, weights: 0 };
  const opsets = model.filter((f) => f.field === 8).map((f) => opsetId(bytes, f));
  if (!opsets.some((o) => isOnnxDomain(o.domain) && o.version >= 21)) {
    throw new Error("the fp32 form needs ONNX opset >= 21 (blocked DequantizeLinear); the model imports " +
                    opsets.map((o) => `${o.domain || "ai.onnx"}:${o.version}`).join(", "));
  }
  const replaced = [];
  const emit = new Map(), drop = new Set();  // node index -> the replacement emitted there; pattern nodes left out
  const patternReads = new Map();  // how many times the left-out correction nodes read each name
  let uint2 = false;
  for (const idx of targets) {
    const node = g.nodes[idx];
    const corr = blockSumCorrection(g, node);
    const b = rewriteNode(g, node, form, idx, corr);
    replaced.push(b);
    // with a correction, the replacement takes the place of its Add (after every node it reads)
    emit.set(corr ? corr.at : idx, b);
    drop.add(idx);
    if (corr) {
      for (const i of corr.drop) {
        drop.add(i);
        for (const name of g.nodes[i].input) patternReads.set(name, (patternReads.get(name) || 0) + 1);
      }
    }
    if (node.opType === "MatMulNBits" && node.attrs.bits === 2) uint2 = true;
  }
  // initializers only the left-out correction nodes read (block shapes, axes) go with them
  const keptReads = new Set();
  for (const b of replaced) for (const n of b.reads) keptReads.add(n);
  const dead = new Set([...patternReads].filter(([name, count]) => g.inits.has(name) && !g.inputs.has(name)
                                                  && !keptReads.has(name) && g.uses.get(name) === count).map(([name]) => name));
  const graph = new Writer();
  let nodeIdx = 0;
  for (const f of g.fields) {
    const name = f.field === 5 && (g.retyped.size || dead.size) ? parseTensor(bytes, f).name : undefined;
    if (name !== undefined && dead.has(name)) continue;
    const retyped = name !== undefined ? g.retyped.get(name) : undefined;
    if (f.field === 1) {
      const idx = nodeIdx++;
      const b = emit.get(idx);
      if (b) for (const n of b.nodes) graph.message(1, n);
      else if (!drop.has(idx)) graph.raw(bytes.subarray(f.at, f.end));
    } else if (retyped) graph.message(5, retyped);
    else graph.raw(bytes.subarray(f.at, f.end));
  }
  for (const t of g.copies.values()) graph.message(5, t);
  for (const b of replaced) for (const t of b.inits) graph.message(5, t);
  const m = new Writer();
  for (const f of model) {
    if (f === graphField) m.message(7, graph);
    else if (uint2 && f.field === 1) m.int(1, Math.max(f.value, 11));  // ir_version: uint2 needs IR 11
    else if (uint2 && f.field === 8 && isOnnxDomain(opsetId(bytes, f).domain)) {
      const w = new Writer();  // DequantizeLinear over uint2: opset 25
      for (const o of fields(bytes, f.vstart, f.end)) if (o.field !== 2) w.raw(bytes.subarray(o.at, o.end));
      w.int(2, Math.max(opsetId(bytes, f).version, 25));
      m.message(8, w);
    } else m.raw(bytes.subarray(f.at, f.end));
  }
  return { bytes: m.finish(), changed: targets.length, weights };
}
