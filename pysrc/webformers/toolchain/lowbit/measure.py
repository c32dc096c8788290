"""Quality of a variant against fp32: mean KL(fp32 || variant) of the next-token distributions and top-1
agreement, over token windows — with onnxruntime on ONNX files (the report's measure) or in torch."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_top1(ref_logits, logits) -> tuple[float, float, int]:
    """(sum of KL(ref || other), number of top-1 agreements, positions) over [..., V] logits."""
    r = _log_softmax(np.asarray(ref_logits, np.float64).reshape(-1, ref_logits.shape[-1]))
    q = _log_softmax(np.asarray(logits, np.float64).reshape(-1, logits.shape[-1]))
    kl = float((np.exp(r) * (r - q)).sum())
    return kl, float((r.argmax(-1) == q.argmax(-1)).sum()), len(r)


def onnx_logits(model, windows) -> list[np.ndarray]:
    """Logits [T, V] of each window (no KV cache: one forward per window) of an ONNX decoder: a path or a
    ModelProto."""
    from ..evaluate import Decoder

    with tempfile.TemporaryDirectory() as td:
        path = model
        if not isinstance(model, (str, Path)):
            from ..export import save_model

            path = save_model(model, Path(td) / "model.onnx")
        dec = Decoder(path, threads=1)
        return [dec.forward(np.asarray(w, np.int64)[None], keep=0)[0][0] for w in windows]


def compare_onnx(reference, variant, windows) -> dict:
    """{"kl": mean KL(reference || variant), "top1": agreement} over ``windows`` [W, T] (positions 0..T-2)."""
    ref = onnx_logits(reference, windows)
    var = onnx_logits(variant, windows)
    kl = agree = n = 0.0
    for r, v in zip(ref, var):
        a, b, c = kl_top1(r[:-1], v[:-1])
        kl, agree, n = kl + a, agree + b, n + c
    return {"kl": max(kl / n, 0.0), "top1": agree / n}
