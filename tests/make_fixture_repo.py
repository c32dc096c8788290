"""Build small multi-module model repos for the runtime tests (CPython and browser).

``make_repo(out_dir)`` writes a transformers.js-layout repo with two tiny ONNX modules:

- ``encoder_model``: ``input_ids`` [B, S] int64 -> ``last_hidden_state`` = Gather(embedding) @ W_enc
- ``decoder_model_merged``: ``encoder_hidden_states`` [B, S, H] float32 -> ``logits`` = h @ W_dec,
  plus ``present.0.key`` = h @ W_k (a KV-style output, for ``keep_on_device``)

each in the dtypes fp32, fp16, q4 (MatMulNBits), q4f16 and q8 (MatMulInteger), made with onnxruntime's
own converters/quantizers. The fp32 decoder keeps its weights in an external ``.onnx_data`` file, so the
external-data path is exercised too. ``config.json``, ``onnx/manifest.json``
(``webformers.store.manifest.write_manifest``) and ``quantization_report.json`` are written; the report holds
the KL divergence and top-1 agreement of each variant against fp32, *measured* here with onnxruntime.

``reference(repo_dir, module, dtype, feeds)`` runs a variant with CPython onnxruntime (for comparisons).

Run as a script to build one: ``python tests/make_fixture_repo.py OUT_DIR [--modules a,b]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "pysrc") not in sys.path:
    sys.path.insert(0, str(ROOT / "pysrc"))

from webformers.dtypes import onnx_file  # noqa: E402
from webformers.store.manifest import write_manifest  # noqa: E402

VOCAB = 48
HIDDEN = 64
OUT = 64
MODULES = ("encoder_model", "decoder_model_merged")
DTYPES = ("fp32", "fp16", "q4", "q4f16", "q8")


def _encoder(rng):
    from onnx import TensorProto, helper, numpy_helper

    emb = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    w = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embed.weight", "input_ids"], ["h0"], name="embed"),
        helper.make_node("MatMul", ["h0", "enc.weight"], ["h1"], name="enc_matmul"),
        helper.make_node("Tanh", ["h1"], ["last_hidden_state"], name="act"),
    ]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [numpy_helper.from_array(emb, "embed.weight"), numpy_helper.from_array(w, "enc.weight")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _decoder(rng):
    from onnx import TensorProto, helper, numpy_helper

    w = (rng.standard_normal((HIDDEN, OUT)) * 3 / np.sqrt(HIDDEN)).astype(np.float32)
    wk = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["encoder_hidden_states", "lm_head.weight"], ["logits"], name="lm_head"),
        helper.make_node("MatMul", ["encoder_hidden_states", "k_proj.weight"], ["present.0.key"], name="k_proj"),
    ]
    graph = helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", OUT]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [numpy_helper.from_array(w, "lm_head.weight"), numpy_helper.from_array(wk, "k_proj.weight")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _fp16(model):
    from onnxruntime.transformers.float16 import convert_float_to_float16
    return convert_float_to_float16(model, keep_io_types=True)


def _q4(model):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    q = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True)
    q.process()
    return q.model.model


def _q8(model, tmp: Path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, dst = tmp / "q8_src.onnx", tmp / "q8_dst.onnx"
    onnx.save(model, str(src))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"])
    return onnx.load(str(dst))


def _save(model, path: Path, external: bool = False):
    import onnx
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        data = path.name + "_data"
        model = onnx.ModelProto.FromString(model.SerializeToString())  # onnx.save mutates it
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data, size_threshold=0)
    else:
        onnx.save(model, str(path))


def _feeds(module: str, rng) -> dict:
    if module == "encoder_model":
        return {"input_ids": rng.integers(0, VOCAB, size=(2, 7)).astype(np.int64)}
    return {"encoder_hidden_states": np.tanh(rng.standard_normal((2, 7, HIDDEN))).astype(np.float32)}


def reference(repo_dir, module: str, dtype: str, feeds: dict) -> dict:
    """Outputs of ``module`` in ``dtype`` on CPython onnxruntime (a path, so external data resolves)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(Path(repo_dir) / onnx_file(module, dtype)), opts,
                             providers=["CPUExecutionProvider"])
    outs = s.run(None, feeds)
    return {o.name: v for o, v in zip(s.get_outputs(), outs)}


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _measure(repo: Path, modules, dtypes) -> dict:
    rng = np.random.default_rng(7)
    report: dict = {"reference": "fp32", "modules": {}}
    for module in modules:
        feeds = _feeds(module, rng)
        key = "last_hidden_state" if module == "encoder_model" else "logits"
        ref = reference(repo, module, "fp32", feeds)[key]
        lp_ref = _log_softmax(ref)
        entry = {}
        for dt in dtypes:
            out = reference(repo, module, dt, feeds)[key]
            lp = _log_softmax(out)
            kl = float((np.exp(lp_ref) * (lp_ref - lp)).sum(-1).mean())
            top1 = float((out.argmax(-1) == ref.argmax(-1)).mean())
            size = sum(p.stat().st_size for p in (repo / "onnx").glob(Path(onnx_file(module, dt)).name + "*"))
            entry[dt] = {"bytes": size, "kl": max(kl, 0.0), "top1": top1}
        report["modules"][module] = entry
    return report


def _quiet():
    import logging

    # importing the quantizers configures logging: import first, then quieten
    from onnxruntime.quantization import matmul_nbits_quantizer, quantize_dynamic  # noqa: F401
    for name in ("onnxruntime", "onnxruntime.quantization", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)


def make_repo(out_dir, modules=MODULES, dtypes=DTYPES, seed: int = 0, report: bool = True) -> Path:
    """Write the fixture repo to ``out_dir`` (created) and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    builders = {"encoder_model": _encoder, "decoder_model_merged": _decoder}
    unknown = [m for m in modules if m not in builders]
    if unknown:
        raise ValueError(f"unknown fixture modules {unknown}; valid: {', '.join(builders)}")
    import onnx

    _quiet()
    with tempfile.TemporaryDirectory() as tmp:
        for module in modules:
            proto = builders[module](rng).SerializeToString()
            for dt in dtypes:
                base = onnx.ModelProto.FromString(proto)  # the quantizers mutate their input
                if dt == "fp32":
                    m = base
                elif dt == "fp16":
                    m = _fp16(base)
                elif dt == "q4":
                    m = _q4(base)
                elif dt == "q4f16":
                    m = _fp16(_q4(base))
                elif dt == "q8":
                    m = _q8(base, Path(tmp))
                else:
                    raise ValueError(f"the fixture cannot build dtype {dt!r}; valid: {', '.join(DTYPES)}")
                _save(m, out / onnx_file(module, dt),
                      external=(dt == "fp32" and module == "decoder_model_merged"))
    (out / "config.json").write_text(json.dumps(
        {"model_type": "webformers-fixture", "vocab_size": VOCAB, "hidden_size": HIDDEN,
         "modules": list(modules)}, indent=1))
    write_manifest(out, list(modules))
    if report and "fp32" in dtypes:
        (out / "quantization_report.json").write_text(json.dumps(_measure(out, modules, dtypes), indent=1))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--modules", default=",".join(MODULES))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    a = ap.parse_args(argv)
    repo = make_repo(a.out, a.modules.split(","), a.dtypes.split(","))
    for p in sorted(repo.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>8}  {p.relative_to(repo)}")


if __name__ == "__main__":
    main()
