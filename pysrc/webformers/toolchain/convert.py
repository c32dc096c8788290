"""``webformers convert SRC OUT``: a Hugging Face model dir or a GGUF file → a transformers.js-layout repo.

Everything is written into a temporary directory next to OUT and renamed at the end, so a failure
(unreadable input, unsupported architecture, a crash) never leaves a half-written OUT behind.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..dtypes import onnx_file
from ..store.manifest import write_manifest
from .lowbit.build import BUDGET_DTYPE, LOWBIT_DTYPES, LowbitOptions
from .quantize import SUPPORTED

#: the dtypes ``convert`` builds for a decoder, in build order (``qmix`` needs a ``budget``)
DECODER_DTYPES = SUPPORTED + ("q2f16", "q1", "q1f16")
#: how each non-low-bit variant is made (the report's ``method``; the low-bit ones: :mod:`.lowbit.build`)
METHODS = {"fp32": "-", "fp16": "-", "q8": "rtn", "int8": "rtn", "uint8": "rtn", "q4": "rtn", "q4f16": "rtn",
           "bnb4": "rtn"}

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


def write_repo_files(model, tok, gen, out: Path) -> None:
    """config.json, generation_config.json, tokenizer.json, tokenizer_config.json (with chat_template).
    ``record_external_data`` adds the external data files once the model files exist."""
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg.pop("_name_or_path", None)
    cfg.pop("_model_name_or_path", None)
    cfg.setdefault("transformers.js_config", {})
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


def record_external_data(repo: Path, modules=(MODULE,)) -> dict:
    """Set ``transformers.js_config.use_external_data_format`` in ``repo``'s config.json to ``{model file
    name: number of external data files}`` for every model file that has them (transformers.js fetches
    ``{file}_data``, ``{file}_data_1``, ... by that number); the key is dropped when none has. Returns it."""
    from ..store.layout import group_variants

    onnx_dir = Path(repo) / "onnx"
    paths = [f"onnx/{p.name}" for p in onnx_dir.iterdir() if p.is_file()] if onnx_dir.is_dir() else []
    counts = {fs[0].rsplit("/", 1)[-1]: len(fs) - 1 for v in group_variants(paths, list(modules)).values()
              for fs in v.values() if len(fs) > 1}
    cfg_path = Path(repo) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    tjs = cfg.setdefault("transformers.js_config", {})
    if counts:
        tjs["use_external_data_format"] = dict(sorted(counts.items()))
    else:
        tjs.pop("use_external_data_format", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    return counts


def _tokenizer_class(path: Path) -> str:
    """The class name transformers.js should use: byte-level BPE → GPT2Tokenizer, else the generic fast one."""
    tj = json.loads(path.read_text())
    model = (tj.get("model") or {}).get("type")
    pre = json.dumps(tj.get("pre_tokenizer"))
    if model == "BPE" and "ByteLevel" in pre:
        return "GPT2Tokenizer"
    return "PreTrainedTokenizerFast"


def check_dtypes(names, budget=None) -> list[str]:
    """``names`` without repeats, after checking each is a registry dtype ``convert`` builds (``qmix`` only
    with a ``budget``); a ``budget`` adds ``qmix`` when it is not named."""
    from ..dtypes import get_dtype

    out = []
    for n in names:
        get_dtype(n)  # unknown names: ValueError listing the registry
        if n not in DECODER_DTYPES + (BUDGET_DTYPE,):
            raise ValueError(f"the toolchain cannot build dtype {n!r}; it builds: {', '.join(DECODER_DTYPES)}, "
                             f"{BUDGET_DTYPE} (with --budget)")
        if n not in out:
            out.append(n)
    if BUDGET_DTYPE in out and budget is None:
        raise ValueError(f"dtype {BUDGET_DTYPE!r} is the per-layer bit budget: pass --budget F (bytes relative "
                         "to fp32, e.g. 0.12)")
    if budget is not None and BUDGET_DTYPE not in out:
        out.append(BUDGET_DTYPE)
    return out


def convert(src, out, *, dtypes=DECODER_DTYPES, external_data=False, report: bool = True,
            eval_budget: dict | None = None, calibrate: bool = True, qat_steps: int = 0,
            budget: float | None = None, lowbit: LowbitOptions | None = None, log=print) -> dict:
    """Convert ``src`` into the repo ``out``; returns a summary dict (files, timings, report).

    Low-bit variants (q2 / q2f16 / q1 / q1f16) are calibrated by GPTQ unless ``calibrate`` is False (plain
    rounding); ``qat_steps`` > 0 adds quantization-aware training; ``budget`` (bytes relative to fp32, e.g.
    0.12) adds the per-layer bit budget variant ``qmix``. ``lowbit`` sets every knob at once
    (:class:`.lowbit.build.LowbitOptions`; it overrides the three). ``external_data``: False, True / "auto"
    (files of at most 1 GiB) or a number of files per variant (:func:`.export.save_model`)."""
    import onnx

    from .export import check_external_data

    try:
        external_data = check_external_data(external_data)
    except ValueError as e:
        raise ConvertError(f"--external-data: {e}") from None

    if lowbit is None:
        lowbit = LowbitOptions(calibrate=calibrate, qat_steps=int(qat_steps), budget=budget)
    if lowbit.qat_steps < 0:
        raise ConvertError(f"--qat STEPS must be >= 0, got {lowbit.qat_steps}")
    if lowbit.budget is not None and not 0 < lowbit.budget < 1:
        raise ConvertError(f"--budget F is the bytes relative to fp32, in (0, 1) (e.g. 0.12); got {lowbit.budget}")
    dtypes = check_dtypes(list(dtypes), lowbit.budget)
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
    # QAT checkpoints live beside OUT until the conversion succeeds: an interrupted run resumes from them
    qat_ckpt = None
    if lowbit.qat_steps > 0 and lowbit.qat_checkpoint_dir is None:
        qat_ckpt = out.parent / f".{out.name}.qat"
        lowbit = dataclasses.replace(lowbit, qat_checkpoint_dir=str(qat_ckpt))
    try:
        write_repo_files(model, tok, gen, tmp)
        from .export import export_decoder, save_model
        from .quantize import make_variant

        t = time.monotonic()
        fp32_path = tmp / onnx_file(MODULE, "fp32")
        export_decoder(model, fp32_path, external_data=external_data)
        timings["export"] = time.monotonic() - t
        log(f"exported fp32 in {timings['export']:.1f} s")
        fp32 = onnx.load(str(fp32_path), load_external_data=True)
        from .lowbit.build import LowbitBuilder

        fp32_bytes = sum(f.stat().st_size for f in fp32_path.parent.glob(fp32_path.name + "*"))
        low = LowbitBuilder(model, tok, fp32, fp32_bytes, lowbit, log=log)
        for d in dtypes:
            if d == "fp32":
                continue
            t = time.monotonic()
            m = low.variant(d) if d in LOWBIT_DTYPES else make_variant(fp32, d)
            save_model(m, tmp / onnx_file(MODULE, d), external_data=external_data)
            del m
            timings[f"quantize_{d}"] = time.monotonic() - t
            log(f"built {d} in {timings[f'quantize_{d}']:.1f} s"
                + (f" ({low.info[d]['method']})" if d in low.info else ""))
        if "fp32" not in dtypes:
            for f in fp32_path.parent.glob(fp32_path.name + "*"):
                f.unlink()
        del fp32
        record_external_data(tmp)
        _check_loads(tmp, dtypes)
        write_manifest(tmp, [MODULE])
        rep = None
        if report:
            from .evaluate import evaluate_repo, write_chart

            t = time.monotonic()
            rep = evaluate_repo(tmp, dtypes, **(eval_budget or {}), log=log)
            timings["evaluate"] = time.monotonic() - t
            rep["timings"] = {k: round(v, 2) for k, v in timings.items()}
            for d, row in rep["modules"][MODULE].items():
                row["method"] = low.info[d]["method"] if d in low.info else METHODS.get(d, "-")
            rep["lowbit"] = {"options": lowbit.key(), "variants": low.info}
            (tmp / "quantization_report.json").write_text(json.dumps(rep, indent=1))
            write_chart(rep, tmp / "quantization_chart.png")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        if qat_ckpt is not None:
            shutil.rmtree(qat_ckpt, ignore_errors=True)
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
