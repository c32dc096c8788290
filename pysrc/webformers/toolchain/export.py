"""PyTorch decoder-only (Llama family) → ONNX fp32 with a KV cache and a ``num_logits_to_keep`` input.

The graph's interface (the transformers.js / onnx-community decoder layout, plus one input):

inputs
    ``input_ids`` int64 [batch, seq], ``attention_mask`` int64 [batch, past+seq],
    ``position_ids`` int64 [batch, seq], ``past_key_values.{i}.key`` / ``.value`` float32
    [batch, kv_heads, past, head_dim], ``num_logits_to_keep`` int64 scalar (rank 0 or shape [1]:
    the input is declared without a shape so both are accepted). 0 = logits for every position,
    k = logits for the last k positions only.
outputs
    ``logits`` float32 [batch, kept, vocab], ``present.{i}.key`` / ``.value`` [batch, kv_heads, past+seq, head_dim].

transformers.js (>= the release with ``setNumLogitsToKeep``) feeds ``num_logits_to_keep`` as an int64
scalar when the session declares it (1 while generating, 0 for a plain forward), so the same repo works
there unchanged.

The torch graph stops at the final norm; the lm_head is appended here as ONNX nodes (Slice by
``num_logits_to_keep``, then a Gemm with ``transB=1`` that reads the *embedding* initializer) so a tied
embedding is stored once and prefill never computes vocab-sized logits for every prompt position.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

OPSET = 21


class _Decoder:
    """Built lazily so importing the toolchain does not import torch."""

    @staticmethod
    def make(model):
        import torch
        from transformers import DynamicCache

        class Decoder(torch.nn.Module):
            def __init__(self, causal_lm):
                super().__init__()
                self.base = causal_lm.model
                self.config = causal_lm.config

            def forward(self, input_ids, attention_mask, position_ids, past):
                cache = DynamicCache(config=self.config)
                for i in range(len(past) // 2):
                    cache.update(past[2 * i], past[2 * i + 1], i)
                out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                cache=cache, use_cache=True)
                presents = []
                for layer in cache.layers:
                    presents.extend([layer.keys, layer.values])
                return (out.last_hidden_state, *presents)

        return Decoder(model).eval()


def kv_shape(config) -> tuple[int, int, int]:
    """(num_layers, kv_heads, head_dim)"""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_key_value_heads, head_dim


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], present


def export_decoder(model, out_path, *, external_data=False) -> Path:
    """Export ``model`` (a ``LlamaForCausalLM`` in fp32) to ``out_path`` (fp32 ONNX). This function drops its
    references to the model and to the exported program before it loads the graph back, so a caller that
    holds no other reference (``export_decoder(box.pop(), ...)``) has the torch weights freed by then."""
    import gc

    import onnx
    import torch

    cfg = model.config
    n_layers, kv_heads, head_dim = kv_shape(cfg)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    lm_head = None if tied else model.lm_head.weight.detach().float().numpy().copy()
    wrapper = _Decoder.make(model)
    del model
    batch, seq, past_len = 2, 3, 4
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), dtype=torch.int64)
    mask = torch.ones((batch, past_len + seq), dtype=torch.int64)
    pos = torch.arange(past_len, past_len + seq, dtype=torch.int64).unsqueeze(0).repeat(batch, 1)
    past = [torch.randn(batch, kv_heads, past_len, head_dim) for _ in range(2 * n_layers)]
    B = torch.export.Dim("batch_size", min=1, max=1024)
    S = torch.export.Dim("sequence_length", min=1, max=1 << 16)
    P = torch.export.Dim("past_sequence_length", min=0, max=1 << 16)
    T = torch.export.Dim("total_sequence_length", min=1, max=1 << 17)
    dyn = {"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: T}, "position_ids": {0: B, 1: S},
           "past": [{0: B, 2: P} for _ in past]}
    in_names, present_names = io_names(n_layers)
    with tempfile.TemporaryDirectory() as td:
        tmp = os.path.join(td, "raw.onnx")
        with torch.no_grad():
            prog = torch.onnx.export(
                wrapper, (ids, mask, pos, past), dynamic_shapes=dyn, dynamo=True, opset_version=OPSET,
                input_names=in_names, output_names=["last_hidden_state", *present_names],
                optimize=True, verbose=False, report=False)
            prog.save(tmp, external_data=True)
        del prog, wrapper
        gc.collect()
        m = onnx.load(tmp, load_external_data=True)
    strip_metadata(m)
    _rename_dims(m, n_layers)
    append_lm_head(m, cfg, lm_head)
    return save_model(m, out_path, external_data=external_data)


def strip_metadata(m, *, keep_value_info: bool = False):
    """Drop the exporter's per-node stack traces / doc strings: megabytes on a 30-layer model, and they
    hold the source files' absolute paths, so without this the bytes depend on where the checkout is.
    ``value_info`` (intermediate shapes) goes too unless ``keep_value_info``."""
    for n in m.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    for coll in (m.graph.value_info, m.graph.input, m.graph.output, m.graph.initializer):
        for v in coll:
            del v.metadata_props[:]
            v.doc_string = ""
    del m.metadata_props[:]
    m.graph.doc_string = ""
    if not keep_value_info:
        del m.graph.value_info[:]


def _rename_dims(m, n_layers):
    """Readable symbolic dims (the exporter names them s0, s1, ...)."""
    def setdims(vi, names):
        dims = vi.type.tensor_type.shape.dim
        for d, name in zip(dims, names):
            if name is not None and not d.HasField("dim_value"):
                d.ClearField("dim_value")
                d.dim_param = name
    for vi in m.graph.input:
        if vi.name in ("input_ids", "position_ids"):
            setdims(vi, ["batch_size", "sequence_length"])
        elif vi.name == "attention_mask":
            setdims(vi, ["batch_size", "total_sequence_length"])
        elif vi.name.startswith("past_key_values."):
            setdims(vi, ["batch_size", None, "past_sequence_length", None])
    for vi in m.graph.output:
        if vi.name.startswith("present."):
            setdims(vi, ["batch_size", None, "total_sequence_length", None])


def _embedding_initializer(m, vocab: int, hidden: int) -> str:
    """Name of the [vocab, hidden] initializer the input_ids Gather reads."""
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == "input_ids":
            t = inits.get(node.input[0])
            if t is not None and list(t.dims) == [vocab, hidden]:
                return node.input[0]
    raise RuntimeError("exported graph has no [vocab, hidden] embedding Gather on input_ids")


def append_lm_head(m, cfg, lm_head_weight=None):
    """Add ``num_logits_to_keep`` and the lm_head (on the tied embedding, or a separate weight)."""
    from onnx import TensorProto, helper, numpy_helper

    g = m.graph
    vocab, hidden = cfg.vocab_size, cfg.hidden_size
    emb = _embedding_initializer(m, vocab, hidden)
    if lm_head_weight is not None:  # untied: its own [vocab, hidden] weight
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(lm_head_weight, np.float32),
                                                     "lm_head.weight"))
        weight = "lm_head.weight"
    else:
        weight = emb
    # drop the hidden-state output; logits replace it (same position: first)
    hs_out = g.output[0]
    assert hs_out.name == "last_hidden_state", hs_out.name
    g.input.append(helper.make_tensor_value_info("num_logits_to_keep", TensorProto.INT64, None))
    consts = [
        numpy_helper.from_array(np.array([1], np.int64), "lm_head/axes"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "lm_head/end"),
        numpy_helper.from_array(np.array([1], np.int64), "lm_head/one"),
        numpy_helper.from_array(np.array([-1, hidden], np.int64), "lm_head/flat_shape"),
        numpy_helper.from_array(np.array([vocab], np.int64), "lm_head/vocab"),
    ]
    g.initializer.extend(consts)
    nodes = [
        # k as a 1-element vector whatever the fed rank; start = -k (0 keeps everything)
        helper.make_node("Reshape", ["num_logits_to_keep", "lm_head/one"], ["lm_head/k"], name="lm_head/k"),
        helper.make_node("Neg", ["lm_head/k"], ["lm_head/start"], name="lm_head/start"),
        helper.make_node("Slice", ["last_hidden_state", "lm_head/start", "lm_head/end", "lm_head/axes"],
                         ["lm_head/kept"], name="lm_head/slice"),
        helper.make_node("Shape", ["lm_head/kept"], ["lm_head/kept_shape"], start=0, end=2,
                         name="lm_head/kept_shape"),
        helper.make_node("Concat", ["lm_head/kept_shape", "lm_head/vocab"], ["lm_head/out_shape"], axis=0,
                         name="lm_head/out_shape"),
        helper.make_node("Reshape", ["lm_head/kept", "lm_head/flat_shape"], ["lm_head/flat"], name="lm_head/flat"),
        helper.make_node("Gemm", ["lm_head/flat", weight], ["lm_head/logits_flat"], transB=1, name="lm_head/gemm"),
        helper.make_node("Reshape", ["lm_head/logits_flat", "lm_head/out_shape"], ["logits"], name="lm_head/logits"),
    ]
    g.node.extend(nodes)
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "num_logits", vocab])
    outs = [logits] + [o for o in g.output if o.name != "last_hidden_state"]
    del g.output[:]
    g.output.extend(outs)


TWO_GB = 2 * 1024 ** 3 - 64 * 1024 ** 2  # keep a margin under protobuf's 2 GiB limit
#: the most bytes ``external_data="auto"`` puts in one external data file. Each file becomes one ArrayBuffer
#: in the browser (Chromium refuses ~2 GiB and more) and is copied into the WebAssembly heap while that
#: buffer is alive, so 1 GiB keeps a file well under the limit and the transient copy small, for few files
#: (a 1B-parameter fp32 model: 5). A tensor is never split: a file holds at least one whole tensor.
DATA_CHUNK_BYTES = 1024 ** 3
#: tensors smaller than this stay inside the .onnx file
EXTERNAL_THRESHOLD = 1024
#: tensor offsets in an external data file are multiples of this
DATA_ALIGN = 64


def _tensor_bytes(m) -> int:
    return sum(len(t.raw_data) or 4 * len(t.float_data) for t in m.graph.initializer)


def check_external_data(value):
    """``external_data`` as ``save_model`` takes it: False, "auto" (True means "auto"), or a number of files
    >= 1; anything else is a ValueError naming the choices."""
    if value is True:
        return "auto"
    if value is False or value is None or value == "auto":
        return value or False
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"external data: expected 'auto' or a number of files >= 1, got {value!r}")


def _greedy_runs(sizes: list[int], limit: int) -> list[list[int]]:
    """Tensor indices in runs: a new run starts when the next tensor would take the current one over ``limit``."""
    runs: list[list[int]] = []
    used = 0
    for i, n in enumerate(sizes):
        if not runs or (used and used + n > limit):
            runs.append([])
            used = 0
        runs[-1].append(i)
        used += n
    return runs


def _plan_chunks(sizes: list[int], files) -> list[int]:
    """The file index of each tensor (in order, whole tensors): "auto" fills files up to
    :data:`DATA_CHUNK_BYTES`; a number N makes N files (fewer only when there are fewer tensors) whose
    largest is as small as runs of whole tensors allow."""
    if not sizes:
        return []
    if files == "auto":
        runs = _greedy_runs(sizes, DATA_CHUNK_BYTES)
    else:
        n = min(files, len(sizes))
        lo, hi = max(sizes), sum(sizes)  # the smallest largest-file size giving at most n runs
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if len(_greedy_runs(sizes, mid)) <= n else (mid + 1, hi)
        runs = _greedy_runs(sizes, lo)
        while len(runs) < n:  # split the largest run of several tensors where its bytes are halved
            k = max((r for r in runs if len(r) > 1), key=lambda r: sum(sizes[i] for i in r))
            half, acc, cut = sum(sizes[i] for i in k) / 2, 0, 1
            for j, i in enumerate(k[:-1], 1):
                acc += sizes[i]
                cut = j
                if acc >= half:
                    break
            at = runs.index(k)
            runs[at:at + 1] = [k[:cut], k[cut:]]
    out = [0] * len(sizes)
    for idx, run in enumerate(runs):
        for i in run:
            out[i] = idx
    return out


def data_file_names(name: str, count: int) -> list[str]:
    """``model.onnx_data``, ``model.onnx_data_1``, ... (the transformers.js names) of the model file ``name``."""
    return [f"{name}_data" + ("" if i == 0 else f"_{i}") for i in range(count)]


def _write_external(m, out_dir: Path, name: str, files) -> list[Path]:
    """Move every initializer of at least :data:`EXTERNAL_THRESHOLD` bytes of ``m`` into external data files
    next to the model (``m`` keeps references to them); returns the files written."""
    from onnx import external_data_helper, numpy_helper

    big = []
    for t in m.graph.initializer:
        if t.data_location == 1:  # onnx.TensorProto.EXTERNAL
            raise ValueError(f"tensor {t.name!r} still refers to external data: load the model with its data")
        if not t.HasField("raw_data"):
            if numpy_helper.to_array(t).nbytes < EXTERNAL_THRESHOLD:
                continue
            arr = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
        n = len(t.raw_data)
        if n >= EXTERNAL_THRESHOLD:
            big.append((t, n))
    where = _plan_chunks([n for _, n in big], files)
    names = data_file_names(name, (max(where) + 1) if where else 0)
    paths = [out_dir / f for f in names]
    handles = [open(p, "wb") for p in paths]
    try:
        for (t, n), i in zip(big, where):
            f = handles[i]
            f.write(b"\0" * ((-f.tell()) % DATA_ALIGN))
            offset = f.tell()
            f.write(t.raw_data)
            external_data_helper.set_external_data(t, names[i], offset, n)
            t.ClearField("raw_data")
            t.data_location = 1
    finally:
        for f in handles:
            f.close()
    for p in paths:
        if p.stat().st_size > TWO_GB:
            raise ValueError(f"{p.name}: {p.stat().st_size} bytes, over the 2 GB a browser ArrayBuffer holds; "
                             "ask for more external data files")
    return paths


def save_model(m, out_path, *, external_data=False) -> Path:
    """Save ``m``. ``external_data``: False (inline, unless the tensors need more than protobuf's 2 GB: then
    "auto"), "auto" / True (files of at most :data:`DATA_CHUNK_BYTES`) or a number of files: tensors go to
    ``{name}_data``, ``{name}_data_1``, ... (``model_q4.onnx_data``, the transformers.js names), and ``m``'s
    initializers then refer to those files (their bytes leave ``m``)."""
    import onnx

    external_data = check_external_data(external_data)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for old in out_path.parent.glob(out_path.name + "_data*"):
        old.unlink()
    if not external_data and _tensor_bytes(m) > TWO_GB:
        external_data = "auto"
    if external_data:
        _write_external(m, out_path.parent, out_path.name, external_data)
    onnx.save_model(m, str(out_path))
    return out_path
