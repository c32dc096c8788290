"""``webformers convert SRC OUT``: a Hugging Face model dir or a GGUF file → a transformers.js-layout repo.

Everything is written into a temporary directory next to OUT and renamed at the end, so a failure
(unreadable input, unsupported architecture, a crash) never leaves a half-written OUT behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..dtypes import onnx_file
from ..store.manifest import write_manifest
from .quantize import SUPPORTED, check_dtypes

#: model_type (config.json) → the transformers class the exporter handles.
SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM"}
GGUF_MAGIC = b"GGUF"
MODULE = "model"


class ConvertError(Exception):
    """Bad input for ``convert``: the message is one line naming the problem and the valid choices."""


def _arch_error(what: str, arch) -> ConvertError:
    return ConvertError(f"{what}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


def load_source(src):
    """(model: LlamaForCausalLM fp32 eval, tokenizer, generation_config) from an HF dir or a GGUF file."""
    p = Path(src)
    if not p.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if p.is_dir():
        return _load_hf_dir(p)
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ConvertError(f"{src}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}) and not a "
                           "Hugging Face model directory (config.json + *.safetensors)")
    return _load_gguf(p)


def _load_hf_dir(p: Path):
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{p}: not a Hugging Face model directory (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{cfg_path}: not valid JSON ({e})") from None
    arch = cfg.get("model_type") if isinstance(cfg, dict) else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise _arch_error(str(p), arch)
    if not list(p.glob("*.safetensors")):
        raise ConvertError(f"{p}: no *.safetensors weights")
    if not (p / "tokenizer.json").is_file():
        raise ConvertError(f"{p}: no tokenizer.json")
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    try:
        model = LlamaForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # corrupt weights etc.
        raise ConvertError(f"{p}: cannot load the model ({type(e).__name__}: {_one_line(e)})") from None
    try:
        gen = GenerationConfig.from_pretrained(str(p))
    except OSError:
        gen = GenerationConfig.from_model_config(model.config)
    return model, tok, gen


def _one_line(e) -> str:
    return " ".join(str(e).split())[:300]


def _load_gguf(p: Path):
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(p))
        field = reader.fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    except Exception as e:
        raise ConvertError(f"{p}: not a readable GGUF file ({type(e).__name__}: {_one_line(e)})") from None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise _arch_error(str(p), arch)
    del reader
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    except Exception as e:
        raise ConvertError(f"{p}: cannot load the GGUF model ({type(e).__name__}: {_one_line(e)})") from None
    # a GGUF-loaded model refuses save_pretrained: copy its weights into a fresh model
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    gen = GenerationConfig.from_model_config(config)
    gen.eos_token_id = tok.eos_token_id if tok.eos_token_id is not None else config.eos_token_id
    gen.bos_token_id = tok.bos_token_id if tok.bos_token_id is not None else config.bos_token_id
    del loaded
    return model, tok, gen


def write_repo_files(model, tok, gen, out: Path, *, external_data: bool) -> None:
    """config.json, generation_config.json, tokenizer.json, tokenizer_config.json (with chat_template)."""
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg.pop("_name_or_path", None)
    cfg.pop("_model_name_or_path", None)
    tjs = cfg.setdefault("transformers.js_config", {})
    if external_data:
        tjs["use_external_data_format"] = True
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    gen.save_pretrained(str(out))
    with tempfile.TemporaryDirectory() as td:
        tok.save_pretrained(td)
        tdp = Path(td)
        if not (tdp / "tokenizer.json").is_file():
            raise ConvertError("the tokenizer has no fast (tokenizer.json) form")
        shutil.copy(tdp / "tokenizer.json", out / "tokenizer.json")
        tc = json.loads((tdp / "tokenizer_config.json").read_text()) if (tdp / "tokenizer_config.json").is_file() else {}
    template = getattr(tok, "chat_template", None)
    if template and not tc.get("chat_template"):
        tc["chat_template"] = template
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        val = getattr(tok, key, None)
        if isinstance(val, str) and key not in tc:
            tc[key] = val
    for junk in ("is_local", "local_files_only", "backend", "name_or_path", "auto_map"):
        tc.pop(junk, None)
    tc["tokenizer_class"] = _tokenizer_class(out / "tokenizer.json")
    tc.setdefault("model_max_length", int(getattr(model.config, "max_position_embeddings", 2048)))
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, sort_keys=True, default=str))


def _tokenizer_class(path: Path) -> str:
    """The class name transformers.js should use: byte-level BPE → GPT2Tokenizer, else the generic fast one."""
    tj = json.loads(path.read_text())
    model = (tj.get("model") or {}).get("type")
    pre = json.dumps(tj.get("pre_tokenizer"))
    if model == "BPE" and "ByteLevel" in pre:
        return "GPT2Tokenizer"
    return "PreTrainedTokenizerFast"


def convert(src, out, *, dtypes=SUPPORTED, external_data: bool = False, report: bool = True,
            eval_budget: dict | None = None, log=print) -> dict:
    """Convert ``src`` into the repo ``out``; returns a summary dict (files, timings, report)."""
    import onnx

    dtypes = check_dtypes(list(dtypes))
    if "fp32" not in dtypes and report:
        raise ConvertError("the quality report compares against fp32: include fp32 in --dtypes or use --no-report")
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(f"{out}: already exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    model, tok, gen = load_source(src)
    timings["load"] = time.monotonic() - t0
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_repo_files(model, tok, gen, tmp, external_data=external_data)
        from .export import export_decoder, save_model
        from .quantize import make_variant

        t = time.monotonic()
        fp32_path = tmp / onnx_file(MODULE, "fp32")
        export_decoder(model, fp32_path, external_data=external_data)
        timings["export"] = time.monotonic() - t
        log(f"exported fp32 in {timings['export']:.1f} s")
        fp32 = onnx.load(str(fp32_path), load_external_data=True)
        for d in dtypes:
            if d == "fp32":
                continue
            t = time.monotonic()
            save_model(make_variant(fp32, d), tmp / onnx_file(MODULE, d), external_data=external_data)
            timings[f"quantize_{d}"] = time.monotonic() - t
            log(f"built {d} in {timings[f'quantize_{d}']:.1f} s")
        if "fp32" not in dtypes:
            for f in fp32_path.parent.glob(fp32_path.name + "*"):
                f.unlink()
        del fp32
        _check_loads(tmp, dtypes)
        write_manifest(tmp, [MODULE])
        rep = None
        if report:
            from .evaluate import evaluate_repo, write_chart

            t = time.monotonic()
            rep = evaluate_repo(tmp, dtypes, **(eval_budget or {}), log=log)
            timings["evaluate"] = time.monotonic() - t
            rep["timings"] = {k: round(v, 2) for k, v in timings.items()}
            (tmp / "quantization_report.json").write_text(json.dumps(rep, indent=1))
            write_chart(rep, tmp / "quantization_chart.png")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["total"] = time.monotonic() - t0
    return {"out": str(out), "dtypes": dtypes, "timings": timings, "report": rep}


def _check_loads(repo: Path, dtypes) -> None:
    """Every variant must load in CPython onnxruntime (a broken graph never reaches the manifest)."""
    import onnxruntime as ort

    for d in dtypes:
        path = repo / onnx_file(MODULE, d)
        try:
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RuntimeError(f"{path.name} ({d}) does not load in onnxruntime: {_one_line(e)}") from None
