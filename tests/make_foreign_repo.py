"""A model repo made the way onnx-community / transformers.js repos are made - with the field's own tools,
not with webformers' converter - for the tests of repos without ``onnx/manifest.json``.

``build(out_dir)`` writes, for a tiny random ``LlamaForCausalLM`` (2 layers, hidden 64, tied embeddings;
initialised with a large ``initializer_range`` so that greedy decoding does not repeat one token):

- ``config.json`` (``save_pretrained``) with a ``transformers.js_config`` (``use_external_data_format``:
  ``{"model.onnx": 2}``, ``kv_cache_dtype``), ``generation_config.json``;
- ``tokenizer.json`` / ``tokenizer_config.json``: a byte-level BPE trained here with ``tokenizers``, saved
  by ``transformers.PreTrainedTokenizerFast.save_pretrained``;
- ``onnx/model.onnx``: ``torch.onnx.export(dynamo=True)`` with a KV cache (inputs ``input_ids``,
  ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/value``; outputs ``logits``,
  ``present.{i}.key/value``), its weights in two external data files ``model.onnx_data`` and
  ``model.onnx_data_1``;
- ``onnx/model_quantized.onnx`` (q8): onnxruntime's ``quantize_dynamic`` (uint8 weights, MatMulInteger);
- ``onnx/model_q4.onnx`` (q4): onnxruntime's ``MatMulNBitsQuantizer`` (4 bits, block 32; the tied
  embedding stays a plain Gather).

``cached_build(cache_dir)`` builds once per content key (this file's bytes and the tools' versions).
``greedy(onnx_path, ids, n, eos)`` is an independent greedy loop on onnxruntime (the reference).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

LAYERS, HIDDEN, HEADS, KV_HEADS, INTERMEDIATE = 2, 64, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS
CORPUS = [
    "Once upon a time there was a tiny model that lived in a browser.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Models made elsewhere load here too: config, tokenizer and ONNX files.",
    "Numbers like 12, 345 and 6789 and punctuation; too! (yes)",
] * 8
TOOLS = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime")
TJS_CONFIG = {"use_external_data_format": {"model.onnx": 2}, "kv_cache_dtype": {"q4f16": "float16"}}


def content_key() -> str:
    import importlib

    h = hashlib.sha256(Path(__file__).read_bytes())
    for name in TOOLS:
        h.update(f"{name}={importlib.import_module(name).__version__}".encode())
    return h.hexdigest()[:20]


def _tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    return fast


def _export(model, path: Path) -> None:
    import torch
    from transformers import DynamicCache

    class WithCache(torch.nn.Module):
        """The causal LM with its KV cache as flat tensors (the transformers.js decoder interface)."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache(config=self.lm.config)
            for i in range(LAYERS):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=cache, use_cache=True)
            present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    batch, seq, past_len = 2, 3, 4
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq))
    mask = torch.ones((batch, past_len + seq), dtype=torch.int64)
    pos = torch.arange(past_len, past_len + seq).unsqueeze(0).repeat(batch, 1)
    past = [torch.randn(batch, KV_HEADS, past_len, HEAD_DIM) for _ in range(2 * LAYERS)]
    B = torch.export.Dim("batch_size", min=1, max=64)
    S = torch.export.Dim("sequence_length", min=1, max=4096)
    P = torch.export.Dim("past_sequence_length", min=0, max=4096)
    T = torch.export.Dim("total_sequence_length", min=1, max=8192)
    dyn = {"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: T}, "position_ids": {0: B, 1: S},
           "past": [{0: B, 2: P} for _ in past]}
    past_names = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    with torch.no_grad():
        prog = torch.onnx.export(WithCache(model).eval(), (ids, mask, pos, past), dynamic_shapes=dyn, dynamo=True,
                                 opset_version=21, input_names=["input_ids", "attention_mask", "position_ids",
                                                                *past_names],
                                 output_names=["logits", *present_names], optimize=True, report=False,
                                 verbose=False)
    prog.save(str(path))


def _save_in_chunks(src: Path, dst: Path, chunks: int) -> None:
    """Save the model ``src`` as ``dst`` with its large weights in ``chunks`` external data files
    (``dst.name + "_data"``, ``"_data_1"``, ...), filled in turn up to an equal share."""
    import onnx
    from onnx.external_data_helper import set_external_data

    m = onnx.load(str(src))
    big = [t for t in m.graph.initializer if len(t.raw_data) >= 1024]
    share = sum(len(t.raw_data) for t in big) / chunks
    names = [dst.name + "_data" + ("" if k == 0 else f"_{k}") for k in range(chunks)]
    bufs = [bytearray() for _ in range(chunks)]
    done = 0
    for t in big:
        k = min(int(done // share), chunks - 1)
        raw = t.raw_data
        set_external_data(t, location=names[k], offset=len(bufs[k]), length=len(raw))
        bufs[k] += raw
        done += len(raw)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
    for name, buf in zip(names, bufs):
        (dst.parent / name).write_bytes(bytes(buf))
    onnx.save_model(m, str(dst))


def build(out: Path) -> Path:
    """Write the repo into the new directory ``out`` (see the module docstring)."""
    import logging

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    (out / "onnx").mkdir(parents=True)
    tok = _tokenizer(out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.2,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.config.save_pretrained(out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["transformers.js_config"] = TJS_CONFIG
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    with tempfile.TemporaryDirectory() as td:
        fp32 = Path(td) / "model.onnx"
        _export(model, fp32)
        _save_in_chunks(fp32, out / "onnx" / "model.onnx", 2)
        quantize_dynamic(str(fp32), str(out / "onnx" / "model_quantized.onnx"), weight_type=QuantType.QUInt8)
        q4 = MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=32, is_symmetric=True)
        quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level, quiet.level = quiet.level, logging.WARNING
        try:
            q4.process()
        finally:
            quiet.setLevel(level)
        q4.model.save_model_to_file(str(out / "onnx" / "model_q4.onnx"), use_external_data_format=False)
    return out


def cached_build(cache_dir: Path) -> Path:
    """The repo built once per ``content_key()`` under ``cache_dir`` (assembled beside it, renamed into place)."""
    cache_dir = Path(cache_dir)
    final = cache_dir / f"foreign-llama-{content_key()}"
    if (final / "onnx" / "model_q4.onnx").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".foreign-build-", dir=cache_dir))
    try:
        build(tmp / "repo")
        try:
            os.replace(tmp / "repo", final)
        except OSError:  # another session finished first
            if not (final / "onnx" / "model_q4.onnx").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def greedy(onnx_path, ids: list[int], n: int, eos: int | None = None) -> list[int]:
    """``n`` greedy tokens after ``ids`` with onnxruntime and a KV cache (stops after ``eos``)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    past = {f"past_key_values.{i}.{kv}": np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32)
            for i in range(LAYERS) for kv in ("key", "value")}
    seq, new = list(ids), []
    feed_ids = list(ids)
    for _ in range(n):
        start = len(seq) - len(feed_ids)
        outs = sess.run(None, {"input_ids": np.array([feed_ids], np.int64),
                               "attention_mask": np.ones((1, len(seq)), np.int64),
                               "position_ids": np.arange(start, len(seq), dtype=np.int64)[None], **past})
        names = [o.name for o in sess.get_outputs()]
        res = dict(zip(names, outs))
        tok = int(np.argmax(res["logits"][0, -1]))
        new.append(tok)
        if tok == eos:
            break
        seq.append(tok)
        feed_ids = [tok]
        past = {f"past_key_values.{k[len('present.'):]}": v for k, v in res.items() if k.startswith("present.")}
    return new
