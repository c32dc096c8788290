"""Measured quality of every dtype variant against fp32, with CPython onnxruntime.

Held-out text: the docstrings (``inspect.getdoc``) of a fixed list of standard-library modules and of
their public callables, in sorted order — real prose every CPython install has, identical everywhere.

Per variant: file bytes, ratio to fp32, effective bits per weight (bytes * 8 / fp32 parameter count),
mean KL(fp32 || variant) of the next-token distributions over the held-out windows, top-1 agreement,
perplexity of the held-out text, and greedy-continuation agreement (fraction of positions where the
variant's greedy tokens equal fp32's, over a fixed prompt set).

:class:`Decoder` has its own KV-cache loop on a plain onnxruntime session, deliberately independent of
the runtime's (``webformers.generation``): ``reference_greedy`` is the reference the runtime's output is
tested against, so it must not share the code under test.
"""
from __future__ import annotations

import importlib
import inspect
import json
import time
from pathlib import Path

import numpy as np

from ..dtypes import onnx_file

FORMAT = "webformers-quantization-report/1"
MODULE = "model"
HELD_OUT_MODULES = ("argparse", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses",
                    "difflib", "fractions", "functools", "heapq", "itertools", "json", "pathlib", "shutil",
                    "statistics", "string", "textwrap")
PROMPTS = (
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "To make a cup of tea, first",
    "The three primary colors are",
)


def held_out_text(max_chars: int = 200_000) -> str:
    """Standard-library docstrings in a fixed order (module doc, then public callables by name)."""
    parts = []
    for name in sorted(HELD_OUT_MODULES):
        mod = importlib.import_module(name)
        doc = inspect.getdoc(mod)
        if doc:
            parts.append(doc)
        for attr in sorted(getattr(mod, "__all__", None) or [a for a in dir(mod) if not a.startswith("_")]):
            obj = getattr(mod, attr, None)
            if obj is None or not callable(obj) or getattr(obj, "__module__", None) != name:
                continue
            d = inspect.getdoc(obj)
            if d:
                parts.append(d)
        if sum(map(len, parts)) > max_chars:
            break
    return "\n\n".join(parts)[:max_chars]


#: the largest fp32 variant whose quantized siblings the report evaluates in the fp32 form (below 2 GiB, the
#: most one serialized ONNX model holds)
FP32_FORM_MAX_BYTES = 1 << 30


class Decoder:
    """A CPython onnxruntime session of one variant with its own KV-cache loop (see the module docstring).

    ``form="fp32"``: the quantized matmuls are decoded to fp32 when the session is created
    (:mod:`webformers.runtime.exec_form`): the same products as the native kernels' fp32 path, without
    their per-call dequantization of the whole weight (onnxruntime's unpacked path for 8-bit codes, an
    lm_head whose scales are cast at run time, 2-bit and NF4 codes)."""

    def __init__(self, path, threads: int | None = None, form: str = "native"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        model = str(path)
        self.form = "native"
        if form == "fp32":
            import onnx

            from ..runtime import exec_form

            proto = onnx.load(model)
            if exec_form.expand_quantized_matmuls(proto, "fp32")["changed"]:
                model, self.form = proto.SerializeToString(), "fp32"
                for k, v in exec_form.SESSION_CONFIG.items():
                    opts.add_session_config_entry(k, v)
            del proto
        elif form != "native":
            raise ValueError(f"unknown execution form {form!r}; choose one of: native, fp32")
        self.s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.s.get_inputs()}
        self.outputs = [o.name for o in self.s.get_outputs()]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        shape = self.inputs[self.past_names[0]].shape
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.kv_dtype = np.float16 if "float16" in self.inputs[self.past_names[0]].type else np.float32

    def empty_past(self, batch=1):
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), self.kv_dtype) for n in self.past_names}

    def forward(self, ids, past=None, keep: int = 0):
        """(logits [B, kept, V] float32, present dict) for ``ids`` [B, S] after ``past``."""
        ids = np.asarray(ids, np.int64)
        past = past or self.empty_past(ids.shape[0])
        plen = next(iter(past.values())).shape[2]
        feeds = {"input_ids": ids, "attention_mask": np.ones((ids.shape[0], plen + ids.shape[1]), np.int64),
                 "position_ids": np.arange(plen, plen + ids.shape[1], dtype=np.int64)[None].repeat(ids.shape[0], 0),
                 **past}
        if "num_logits_to_keep" in self.inputs:
            feeds["num_logits_to_keep"] = np.array(keep, np.int64)
        outs = dict(zip(self.outputs, self.s.run(None, feeds)))
        present = {n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")}
        logits = outs["logits"].astype(np.float32)
        if keep and logits.shape[1] > keep:
            logits = logits[:, -keep:]
        return logits, present

    def greedy(self, prompt_ids, n: int, eos_token_id=None) -> list[int]:
        logits, past = self.forward(np.asarray(prompt_ids, np.int64)[None], keep=1)
        out = []
        for _ in range(n):
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            if eos_token_id is not None and tok in _as_set(eos_token_id):
                break
            logits, past = self.forward(np.array([[tok]], np.int64), past, keep=1)
        return out


def _as_set(x):
    return set(x) if isinstance(x, (list, tuple, set)) else {x}


def reference_greedy(repo_dir, dtype: str, prompt_ids, n: int, eos_token_id=None) -> list[int]:
    """Greedy token ids (``n`` new tokens, fewer if ``eos_token_id`` is given and produced) of the
    ``dtype`` variant of ``repo_dir`` with CPython onnxruntime and its KV cache: prefill with
    ``num_logits_to_keep=1``, then one token per step. The reference the browser tests compare to."""
    path = Path(repo_dir) / onnx_file(MODULE, dtype)
    if not path.is_file():
        have = sorted(p.name for p in (Path(repo_dir) / "onnx").glob("*.onnx"))
        raise ValueError(f"{repo_dir} has no {dtype!r} variant ({path.name}); it has: {', '.join(have)}")
    return Decoder(path).greedy([int(t) for t in prompt_ids], n, eos_token_id)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def evaluate_repo(repo, dtypes, *, windows: int = 6, window_tokens: int = 128,
                  prompts=PROMPTS, new_tokens: int = 32, log=print) -> dict:
    """Measure every variant in ``dtypes`` against fp32; returns the report dict."""
    from tokenizers import Tokenizer

    repo = Path(repo)
    t_start = time.monotonic()
    tok = Tokenizer.from_file(str(repo / "tokenizer.json"))
    text = held_out_text()
    ids = tok.encode(text, add_special_tokens=False).ids
    need = windows * window_tokens
    if len(ids) < need:
        raise RuntimeError(f"held-out text has {len(ids)} tokens, fewer than {need}")
    chunks = np.array(ids[:need], np.int64).reshape(windows, window_tokens)
    prompt_ids = [tok.encode(p, add_special_tokens=False).ids for p in prompts]
    fp32_bytes = _variant_bytes(repo, "fp32")
    n_params = fp32_bytes / 4.0  # fp32: 4 bytes per weight (graph constants are negligible)

    # quantized variants run in the fp32 form when it fits one serialized model (the same products, faster)
    form = "fp32" if fp32_bytes <= FP32_FORM_MAX_BYTES else "native"
    ref_lp, ref_greedy, results, forms = [], [], {}, {}
    for d in ["fp32"] + [d for d in dtypes if d != "fp32"]:
        t = time.monotonic()
        dec = Decoder(repo / onnx_file(MODULE, d), form=form if d != "fp32" else "native")
        forms[d] = dec.form
        kl_sum = nll_sum = agree = count = 0.0
        for w, chunk in enumerate(chunks):
            logits, _ = dec.forward(chunk[None], keep=0)
            lp = _log_softmax(logits[0, :-1].astype(np.float64))
            if d == "fp32":
                ref_lp.append(lp)
            r = ref_lp[w]
            kl_sum += float((np.exp(r) * (r - lp)).sum(-1).sum())
            agree += float((lp.argmax(-1) == r.argmax(-1)).sum())
            nll_sum += float(-lp[np.arange(len(lp)), chunk[1:]].sum())
            count += len(lp)
        gens = [dec.greedy(p, new_tokens) for p in prompt_ids]
        if d == "fp32":
            ref_greedy = gens
        same = sum(int(a == b) for g, r in zip(gens, ref_greedy) for a, b in zip(g, r))
        total = sum(len(r) for r in ref_greedy)
        b = _variant_bytes(repo, d)
        results[d] = {
            "bytes": b, "ratio": round(b / fp32_bytes, 4), "bits_per_weight": round(b * 8 / n_params, 3),
            "kl": max(kl_sum / count, 0.0), "top1": agree / count, "perplexity": float(np.exp(nll_sum / count)),
            "greedy_agreement": same / total, "eval_seconds": round(time.monotonic() - t, 2),
        }
        log(f"evaluated {d}: kl {results[d]['kl']:.4g} top1 {results[d]['top1']:.3f} "
            f"ppl {results[d]['perplexity']:.2f} greedy {results[d]['greedy_agreement']:.3f} "
            f"({results[d]['eval_seconds']} s{', fp32 form' if dec.form == 'fp32' else ''})")
    order = [d for d in dtypes if d in results]
    return {
        "format": FORMAT, "reference": "fp32",
        "eval": {"backend": "onnxruntime (CPython)",
                 "execution_forms": {d: forms[d] for d in order},
                 "held_out": "inspect.getdoc of stdlib modules "
                 + ", ".join(sorted(HELD_OUT_MODULES)) + " and their public callables",
                 "windows": windows, "window_tokens": window_tokens, "positions": int(windows * (window_tokens - 1)),
                 "prompts": list(prompts), "new_tokens": new_tokens,
                 "fp32_greedy": ref_greedy, "seconds": round(time.monotonic() - t_start, 2)},
        "modules": {MODULE: {d: results[d] for d in order}},
    }


def _variant_bytes(repo: Path, dtype: str) -> int:
    p = repo / onnx_file(MODULE, dtype)
    return sum(f.stat().st_size for f in p.parent.glob(p.name + "*"))


def write_chart(report: dict, path) -> Path:
    """Size vs quality (KL and top-1) per dtype, one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {d: v["qat"]["losses"] for d, v in ((report.get("lowbit") or {}).get("variants") or {}).items()
              if (v.get("qat") or {}).get("losses")}
    curves = {d: c for d, c in curves.items() if not d.endswith("f16")}  # an f16 form shares its width's run
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(16 if curves else 11, 4.2))
    ax1, ax2 = axes[0], axes[1]
    if curves:
        for d, c in curves.items():
            axes[2].plot(range(1, len(c) + 1), c, label=d)
        axes[2].set_yscale("log")
        axes[2].set_xlabel("QAT step")
        axes[2].set_ylabel("KL(fp32 || student), training batch")
        axes[2].legend(fontsize=8)
    for module, variants in report["modules"].items():
        for d, r in variants.items():
            mb = r["bytes"] / 1e6
            ax1.scatter(mb, max(r["kl"], 1e-7), color="C0")
            ax1.annotate(d, (mb, max(r["kl"], 1e-7)), textcoords="offset points", xytext=(4, 3), fontsize=8)
            ax2.scatter(mb, r["top1"], color="C1")
            ax2.annotate(d, (mb, r["top1"]), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("file size (MB)")
    ax1.set_ylabel("mean KL(fp32 || variant)")
    ax2.set_xscale("log")
    ax2.set_xlabel("file size (MB)")
    ax2.set_ylabel("top-1 agreement with fp32")
    e = report.get("eval", {})
    fig.suptitle(f"size vs quality ({e.get('positions', '?')} held-out positions, CPython onnxruntime)")
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
    plt.close(fig)
    return Path(path)
