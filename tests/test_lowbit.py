"""Low-bit weights (webformers.toolchain.lowbit) on a tiny Llama built here: calibrated (GPTQ) and QAT q2 beat
plain rounding when the produced ONNX files run in onnxruntime; the q1 file holds 1-bit weights; bit plans
respect their budgets."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from webformers.toolchain.evaluate import HELD_OUT_MODULES, held_out_text  # noqa: E402
from webformers.toolchain.lowbit import budget, corpus, gptq, grid, mapping, variant  # noqa: E402
from webformers.toolchain.lowbit.calibrate import collect_hessians, gptq_model  # noqa: E402
from webformers.toolchain.lowbit.graph import table_values  # noqa: E402
from webformers.toolchain.lowbit.measure import compare_onnx, onnx_logits  # noqa: E402
from webformers.toolchain.lowbit.qat import qat  # noqa: E402
from webformers.toolchain.quantize import make_variant  # noqa: E402


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocabulary 256)."""

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))


TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, fp32 ONNX ModelProto, ONNX path, held-out windows [8, 128], calibration windows [16, 128])."""
    import onnx
    from transformers import LlamaConfig, LlamaForCausalLM

    from webformers.toolchain.export import export_decoder

    torch.set_num_threads(1)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=512, initializer_range=0.1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("lowbit") / "model.onnx"
    export_decoder(model, path)
    held = np.array(TOK.encode(held_out_text())[:8 * 128], np.int64).reshape(8, 128)
    calib = corpus.calibration_ids(TOK, 16, 128)
    return model, onnx.load(str(path)), path, held, calib


def _save(m, path):
    from webformers.toolchain.export import save_model

    return save_model(m, path)


def _torch_logits(model, weights, table_bits, ids):
    """Logits of a copy of ``model`` holding ``weights`` ({Linear name: QuantizedWeight}) and the table at
    ``table_bits``: what the file should compute."""
    m = copy.deepcopy(model)
    mods = dict(m.named_modules())
    with torch.no_grad():
        for n, q in weights.items():
            mods[n].weight.copy_(torch.from_numpy(q.values()))
        emb = m.get_input_embeddings()
        emb.weight.copy_(torch.from_numpy(table_values(emb.weight.numpy(), table_bits)))
        return m(input_ids=torch.as_tensor(ids), use_cache=False).logits.numpy()


def test_calibration_text_is_disjoint_from_held_out_text():
    assert not set(corpus.CALIBRATION_MODULES) & set(HELD_OUT_MODULES)
    held = set(held_out_text(10 ** 9).split("\n\n"))
    text = corpus.calibration_text()
    assert len(text) > 100_000
    assert not [p for p in text.split("\n\n") if p in held]
    w = corpus.calibration_ids(TOK, 4, 64)
    assert w.shape == (4, 64) and w.dtype == np.int64
    with pytest.raises(ValueError, match="fewer than"):
        corpus.calibration_ids(TOK, 4, 64, text="short")


def test_linear_names_map_to_their_onnx_initializers(tiny):
    model, fp32, *_ = tiny
    mp = mapping.linear_initializers(model, fp32)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert sorted(mp) == sorted(linears) and len(set(mp.values())) == len(mp) == 14
    shapes = mapping.matmul_weights(fp32)
    mods = dict(model.named_modules())
    for n, init in mp.items():
        assert shapes[init] == (mods[n].in_features, mods[n].out_features)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.add_(1.0)
    with pytest.raises(ValueError, match="up_proj"):
        mapping.linear_initializers(other, fp32)


def test_gptq_has_less_output_error_than_rounding():
    rng = np.random.default_rng(0)
    k, n = 256, 96
    x = rng.standard_normal((2000, k)) @ (rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k))
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    h = x.T @ x
    err = lambda q: float(np.mean((x @ q.dequantize() - x @ w) ** 2))  # noqa: E731
    for bits in (1, 2, 4):
        plain = grid.rtn(w, bits, search=False)
        fitted = grid.rtn(w, bits, h=np.diag(h))
        q = gptq.gptq_quantize(w, h, bits)
        assert q.codes.shape == (n, k) and q.codes.max() <= (1 << bits) - 1
        assert err(q) < err(fitted) <= err(plain) * 1.01, bits
    with pytest.raises(ValueError, match="valid: 1, 2, 4, 8"):
        grid.rtn(w, 3)


def test_on_grid_detects_an_already_quantized_weight():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    assert not grid.on_grid(w, 4)
    from webformers.toolchain.quantize.nbits import quantize_blockwise

    deq = quantize_blockwise(np.ascontiguousarray(w.T), 4, float_zero_points=True)[3].T
    assert grid.on_grid(deq, 4) and not grid.on_grid(deq, 2)


def test_q2_layout_is_the_q2_variant_layout(tiny):
    _, fp32, *_ = tiny
    ours, theirs = variant.lowbit_variant(fp32, "q2"), make_variant(fp32, "q2")
    assert sorted(n.op_type for n in ours.graph.node) == sorted(n.op_type for n in theirs.graph.node)
    sig = lambda m: sorted((t.name, t.data_type, tuple(t.dims)) for t in m.graph.initializer)  # noqa: E731
    assert sig(ours) == sig(theirs)


def test_calibrated_q2_file_beats_plain_rounding(tiny, tmp_path):
    model, fp32, path, held, calib = tiny
    mp = mapping.linear_initializers(model, fp32)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    weights = gptq_model(model, 2, ids=calib)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # model left as it was
    rtn_file = _save(make_variant(fp32, "q2"), tmp_path / "model_q2_rtn.onnx")
    gptq_file = _save(variant.lowbit_variant(fp32, "q2", variant.by_initializer(weights, mp)),
                      tmp_path / "model_q2.onnx")
    rtn_q, gptq_q = compare_onnx(path, rtn_file, held), compare_onnx(path, gptq_file, held)
    assert gptq_q["kl"] < 0.6 * rtn_q["kl"] and gptq_q["top1"] > rtn_q["top1"]
    assert gptq_file.stat().st_size == rtn_file.stat().st_size
    # the file computes exactly the quantized weights
    ref = _torch_logits(model, weights, 4, held[:2])
    got = np.stack(onnx_logits(gptq_file, held[:2]))
    assert np.abs(ref - got).max() < 1e-3


def test_one_pass_hessians_cover_every_linear(tiny):
    model, fp32, path, held, calib = tiny
    hs = collect_hessians(model, ids=calib)
    assert len(hs) == 14
    h = hs["model.layers.1.mlp.down_proj"]
    assert h.shape == (128, 128) and np.allclose(h, h.T) and np.linalg.eigvalsh(h).min() > -1e-9
    # one-pass GPTQ on these Hessians: each Linear quantized alone against H, still better than rounding
    w = gptq_model(model, 2, hessians=hs)
    mods = dict(model.named_modules())
    n = "model.layers.1.mlp.down_proj"
    alone = gptq.gptq_quantize(mods[n].weight.detach().numpy().T, h, 2)
    assert np.array_equal(w[n].codes, alone.codes)
    mp = mapping.linear_initializers(model, fp32)
    one_pass = compare_onnx(path, variant.lowbit_variant(fp32, "q2", variant.by_initializer(w, mp)), held)
    assert one_pass["kl"] < compare_onnx(path, make_variant(fp32, "q2"), held)["kl"]
    with pytest.raises(ValueError, match="no calibration Hessian for model.layers.0"):
        gptq_model(model, 2, hessians={n: h})


def test_qat_q2_beats_rounding_deterministic_resumable(tiny, tmp_path):
    model, fp32, path, held, calib = tiny
    mp = mapping.linear_initializers(model, fp32)
    lines = []
    run = qat(copy.deepcopy(model), 2, 40, ids=calib, table_bits=4, lr=1e-3, grid_lr=1e-2, log=lines.append)
    assert len(run.losses) == 40 and len(lines) == 40 and "loss" in lines[-1]
    assert np.mean(run.losses[-5:]) < np.mean(run.losses[:5])
    qat_file = _save(variant.lowbit_variant(fp32, "q2", variant.by_initializer(run.weights, mp)),
                     tmp_path / "model_q2.onnx")
    rtn_q = compare_onnx(path, make_variant(fp32, "q2"), held)
    qat_q = compare_onnx(path, qat_file, held)
    assert qat_q["kl"] < 0.6 * rtn_q["kl"] and qat_q["top1"] > rtn_q["top1"]
    ref = _torch_logits(model, run.weights, 4, held[:2])
    assert np.abs(ref - np.stack(onnx_logits(qat_file, held[:2]))).max() < 1e-3

    # same seed, same curve; an interrupted run resumes from its checkpoint onto the same curve
    full = qat(copy.deepcopy(model), 2, 8, ids=calib, table_bits=4, lr=1e-3)
    assert full.losses == qat(copy.deepcopy(model), 2, 8, ids=calib, table_bits=4, lr=1e-3).losses
    ckpt = tmp_path / "qat.pt"

    def stop_after_5(line):
        if line.startswith("qat step 5/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qat(copy.deepcopy(model), 2, 8, ids=calib, table_bits=4, lr=1e-3, checkpoint=ckpt, checkpoint_every=4,
            log=stop_after_5)
    resumed = qat(copy.deepcopy(model), 2, 8, ids=calib, table_bits=4, lr=1e-3, checkpoint=ckpt,
                  checkpoint_every=4)
    assert resumed.resumed_from == 4 and resumed.losses == full.losses
    assert all(np.array_equal(resumed.weights[n].codes, full.weights[n].codes) for n in full.weights)
    with pytest.raises(ValueError, match="different run"):
        qat(copy.deepcopy(model), 2, 8, ids=calib, table_bits=4, lr=2e-3, checkpoint=ckpt)


def test_qat_from_gptq_improves_on_gptq(tiny):
    model, fp32, path, held, calib = tiny
    mp = mapping.linear_initializers(model, fp32)
    g = gptq_model(model, 2, ids=calib)
    run = qat(copy.deepcopy(model), 2, 40, ids=calib, init=g, table_bits=4, lr=1e-3, grid_lr=1e-2)
    kl = lambda w: compare_onnx(path, variant.lowbit_variant(fp32, "q2", variant.by_initializer(w, mp)), held)["kl"]  # noqa: E731
    assert kl(run.weights) < kl(g)


def _big_initializers(m, min_bytes=256):
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer
            if numpy_helper.to_array(t).nbytes >= min_bytes}


def test_q1_file_holds_one_bit_weights_and_runs(tiny, tmp_path):
    import onnx
    import onnxruntime as ort

    model, fp32, path, held, calib = tiny
    mp = mapping.linear_initializers(model, fp32)
    shapes = mapping.matmul_weights(fp32)
    weights = gptq_model(model, 1, ids=calib)
    # every weight at 1 bit, the tied table too (the Bonsai layout)
    q1 = variant.build_variant(fp32, variant.by_initializer(weights, mp), table_bits=1)
    f = _save(q1, tmp_path / "model_q1.onnx")
    big = _big_initializers(onnx.load(str(f)))
    for init, (k, n) in shapes.items():  # every layer weight: sign bits [N, K/8] on disk, nothing wider
        assert init not in big
        codes = big[init + "_Q1"]
        assert codes.dtype == np.uint8 and codes.shape == (n, k // 8)
    v, h = 256, 64
    table = big["base.embed_tokens.weight_q1"]
    assert table.dtype == np.uint8 and table.shape == (v, h // 8)
    one_bit = sum(k * n // 8 for k, n in shapes.values()) + v * h // 8
    assert sum(a.nbytes for a in big.values() if a.dtype == np.uint8) == one_bit + 256 * 2  # + the code table
    scales = sum(a.nbytes for a in big.values() if a.dtype == np.float16)
    rest = sum(a.nbytes for name, a in big.items() if a.dtype not in (np.uint8, np.float16) and name != "lowbit/q1_signs")
    assert scales <= one_bit / 4 and rest < 2048  # no float weights left (norm gains, shapes, indices only)
    assert f.stat().st_size < one_bit + scales + 256 * 2 + 256 * 8 * 4 + rest + 40_000

    # what onnxruntime runs: the 1-bit expansion folded into constant 2-bit MatMulNBits codes
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "optimized.onnx"))
    inits = {t.name: t for t in opt.graph.initializer}
    mm = [n for n in opt.graph.node if n.op_type == "MatMulNBits"]
    assert len(mm) == len(shapes) + 1  # the layers and the lm_head
    for node in mm:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 2 and attrs["block_size"] == 128
        b = inits[node.input[1]]
        assert list(b.dims) == [attrs["N"], -(-attrs["K"] // 128), 32]
    assert not [n for n in opt.graph.node if n.op_type == "Gather" and n.input[0] == "lowbit/q1_codes2"]

    ref = _torch_logits(model, weights, 1, held[:2])
    assert np.abs(ref - np.stack(onnx_logits(f, held[:2]))).max() < 1e-3
    rtn_q1 = compare_onnx(path, variant.build_variant(fp32, variant.rtn_weights(fp32, 1), table_bits=1), held)
    assert compare_onnx(path, f, held)["kl"] < rtn_q1["kl"]

    # the q1 recipe: 1-bit layers, the table at 4 bits (GatherBlockQuantized, rewritten in standard ops)
    recipe = variant.lowbit_variant(fp32, "q1", variant.by_initializer(weights, mp))
    assert not [n for n in recipe.graph.node if n.op_type == "GatherBlockQuantized"]
    table4 = _big_initializers(recipe)["base.embed_tokens.weight_q4/B"]
    assert table4.dtype == np.uint8 and table4.size == v * h // 2
    ref4 = _torch_logits(model, weights, 4, held[:2])
    assert np.abs(ref4 - np.stack(onnx_logits(recipe, held[:2]))).max() < 1e-3


def test_fp16_forms_match_their_fp32_forms(tiny):
    _, fp32, _, held, _ = tiny
    for f16, f32 in (("q2f16", "q2"), ("q1f16", "q1")):
        w = variant.rtn_weights(fp32, variant.RECIPES[f32][0])
        a = variant.lowbit_variant(fp32, f32, w)
        b = variant.lowbit_variant(fp32, f16, w)
        floats = {t.data_type for t in b.graph.initializer if t.data_type in (1, 10) and np.prod(t.dims) >= 64}
        assert floats == {10}  # fp16 norms, scales and tables: the graph computes in fp16
        assert compare_onnx(a, b, held[:2])["kl"] < 1e-3
    with pytest.raises(ValueError, match="recipes: q2, q2f16, q1, q1f16"):
        variant.lowbit_variant(fp32, "q3")


def test_choose_bits_is_optimal_and_within_budget():
    rng = np.random.default_rng(2)
    names = [f"w{i}" for i in range(6)]
    widths = (1, 2, 4, 8)
    sens = {n: {b: float(rng.random() * 2.0 ** -b) for b in widths} for n in names}
    sizes = {n: {b: int(1000 * (i + 1) * b / 8 + 37 * i) for b in widths} for i, n in enumerate(names)}
    for budget_bytes in (3500, 6000, 12000, 30000):
        plan = budget.choose_bits(sens, sizes, budget_bytes)
        assert sum(sizes[n][b] for n, b in plan.items()) <= budget_bytes
        best = min((sum(sens[n][b] for n, b in zip(names, combo)), combo)
                   for combo in itertools.product(widths, repeat=len(names))
                   if sum(sizes[n][b] for n, b in zip(names, combo)) <= budget_bytes)
        assert sum(sens[n][plan[n]] for n in names) == pytest.approx(best[0], rel=1e-9)
    with pytest.raises(ValueError, match="below the smallest plan"):
        budget.choose_bits(sens, sizes, 100)


def test_budget_plan_on_the_tiny_model_fits_its_bytes(tiny, tmp_path):
    import onnx

    model, fp32, path, held, calib = tiny
    mp = mapping.linear_initializers(model, fp32)
    inv = {v: k for k, v in mp.items()}
    sens = budget.measure_sensitivity(model, (1, 2, 4, 8), ids=calib[:4], table=True)
    assert len(sens) == 15 and all(set(s) == {1, 2, 4, 8} for s in sens.values())
    assert np.mean([s[1] for s in sens.values()]) > np.mean([s[8] for s in sens.values()])
    shapes = {inv[i]: s for i, s in mapping.matmul_weights(fp32).items()}
    sizes = budget.plan_sizes(shapes, table_shape=(256, 64))
    fp32_bytes = sum(4 * k * n for k, n in shapes.values()) + 4 * 256 * 64
    limit = int(0.12 * fp32_bytes)
    plan = budget.choose_bits(sens, sizes, limit)
    assert sum(sizes[n][b] for n, b in plan.items()) <= limit
    assert len(set(plan.values())) > 1  # a mixed plan
    table_bits = plan.pop(budget.TABLE)
    weights = gptq_model(model, plan, ids=calib)
    m = variant.build_variant(fp32, variant.by_initializer(weights, mp), table_bits=table_bits)
    f = _save(m, tmp_path / "model_plan.onnx")
    loaded = {t.name: t for t in onnx.load(str(f)).graph.initializer}
    from onnx import numpy_helper

    written = sum(numpy_helper.to_array(t).nbytes for name, t in loaded.items()
                  if any(name.startswith(mp[n] + "_Q") for n in plan)
                  or name.startswith("base.embed_tokens.weight_q"))
    assert written <= limit
    assert compare_onnx(path, f, held[:2])["kl"] < compare_onnx(path, make_variant(fp32, "q2"), held[:2])["kl"]


def test_per_layer_sensitivity_lowers_a_layer_at_once_and_plans_one_width_per_layer(tiny):
    from webformers.toolchain.lowbit.build import LowbitBuilder, LowbitOptions
    from webformers.toolchain.lowbit.layers import decoder_layers, linear_modules

    model, fp32, path, held, calib = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = calib[:2, :64]
    sens = budget.measure_sensitivity(model, (1, 8), ids=ids, per_layer=True)
    assert set(sens) == {"model.layers.0", "model.layers.1"} and all(set(s) == {1, 8} for s in sens.values())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # layer 0 at 1 bit: the KL of the whole model with all of layer 0's Linears rounded, computed directly
    m = copy.deepcopy(model)
    with torch.no_grad():
        for _, lin in linear_modules(decoder_layers(m)[0], "model.layers.0."):
            lin.weight.copy_(torch.from_numpy(grid.rtn(lin.weight.detach().numpy().T, 1).values()))
        ref = torch.log_softmax(model(input_ids=torch.as_tensor(ids), use_cache=False).logits.double(), -1)
        low = torch.log_softmax(m(input_ids=torch.as_tensor(ids), use_cache=False).logits.double(), -1)
    direct = float((ref.exp() * (ref - low)).sum(-1).mean())
    assert sens["model.layers.0"][1] == pytest.approx(direct, rel=1e-4)
    assert sens["model.layers.0"][1] > sens["model.layers.0"][8]

    sizes = {"model.layers.0.a": {1: 10, 2: 20}, "model.layers.0.b": {1: 5, 2: 7}, "lm_head": {1: 3, 2: 4}}
    assert budget.layer_sizes(sizes) == {"model.layers.0": {1: 15, 2: 27}, "lm_head": {1: 3, 2: 4}}
    assert budget.expand_plan({"model.layers.0": 2, "lm_head": 1}, sizes) == {
        "model.layers.0.a": 2, "model.layers.0.b": 2, "lm_head": 1}

    # the builder's qmix with per-layer sensitivity: every Linear of a layer at its layer's width, within budget
    fp32_bytes = path.stat().st_size
    opts = LowbitOptions(budget=0.3, calib_sequential=False, calib_windows=2, calib_window=64,
                         sensitivity_windows=2, sensitivity_window=64, sensitivity_per_layer=True)
    low = LowbitBuilder(model, TOK, fp32, fp32_bytes, opts, log=lambda *_: None)
    low.variant("qmix")
    info = low.info["qmix"]
    assert info["sensitivity"]["unit"] == "layer"
    widths = {}
    for n, b in info["plan"].items():
        widths.setdefault(budget.layer_key(n), set()).add(b)
    assert set(widths) == {"model.layers.0", "model.layers.1"} and all(len(w) == 1 for w in widths.values())
    assert info["plan_bytes"] <= low.budget_bytes()[0]
    assert opts.key()["sensitivity_per_layer"] is True
    assert "sensitivity_per_layer" not in LowbitOptions().key()  # builds without it keep their cache keys
