"""The memory plan (runtime.memory): the arithmetic of the estimate, the limits of each place, and the
choices (refuse with MemoryPlanError, or a smaller dtype for dtype="auto"); load_sessions applies it
before any model file is read."""
from __future__ import annotations

import pytest

from webformers.runtime import memory
from webformers.runtime.memory import (CREATE_FACTOR, DEVICE_MEMORY_SHARE, RUNTIME_OVERHEAD, WASM_HEAP_LIMIT,
                                       Limit, MemoryPlanError, ModelShape, check_plan, estimate, memory_limits,
                                       weights_budget)
from webformers.runtime.plan import select_dtypes
from webformers.store.manifest import Manifest

pytestmark = pytest.mark.unit

#: Llama-3.2-1B's widths with 16 layers and SmolLM2's vocabulary (the large test model's config.json)
LLAMA_1B = {"num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
            "hidden_size": 2048, "intermediate_size": 8192, "vocab_size": 49152, "max_position_embeddings": 8192}
GiB = 2**30


def test_shape_from_llama_and_whisper_configs():
    s = ModelShape.from_config(LLAMA_1B)
    assert (s.layers, s.kv_heads, s.head_dim, s.heads, s.hidden, s.intermediate, s.vocab) == \
        (16, 8, 64, 32, 2048, 8192, 49152)
    # no num_key_value_heads / head_dim: MHA, hidden / heads
    w = ModelShape.from_config({"decoder_layers": 4, "decoder_attention_heads": 6, "d_model": 384,
                                "decoder_ffn_dim": 1536, "max_target_positions": 448})
    assert (w.layers, w.kv_heads, w.head_dim, w.max_positions) == (4, 6, 64, 448)
    assert ModelShape.from_config(None) == ModelShape()


def test_estimate_arithmetic():
    s = ModelShape.from_config(LLAMA_1B)
    e = estimate(1_000_000_000, s, context=4096, prefill=256)
    # K and V, 16 layers x 8 heads x 64 x 4096 tokens x 4 bytes = 256 MiB
    assert e.kv == 2 * 16 * 8 * 64 * 4096 * 4 == 256 * 2**20
    assert e.activations == 4 * (256 * (4 * 2048 + 3 * 8192) + 32 * 256 * 256 + 49152)
    assert e.overhead == RUNTIME_OVERHEAD
    # creating the session (2 x weights) is the runtime's peak here, not running it
    assert e.runtime == CREATE_FACTOR * 1_000_000_000 + RUNTIME_OVERHEAD
    assert e.total == 1_000_000_000 + e.runtime
    # a small model with a long context: running it is the peak
    e2 = estimate(10_000_000, s, context=8192)
    assert e2.runtime == 10_000_000 + e2.kv + e2.activations + RUNTIME_OVERHEAD
    # fp16 KV halves it; the context is capped at the model's positions; prefill at the context
    assert estimate(0, s, kv_element_bytes=2, context=4096).kv == e.kv // 2
    capped = estimate(0, s, context=100_000)
    assert capped.context == 8192 and capped.kv == 2 * estimate(0, s, context=4096).kv
    assert estimate(0, s, context=64).prefill == 64
    with pytest.raises(ValueError, match="context must be a positive number of tokens"):
        estimate(0, s, context=0)


def test_limits_of_each_place():
    wasm = memory_limits(backend="onnxruntime-web", device="wasm", device_memory=8 * GiB)
    assert [(lim.name, lim.bytes, lim.part) for lim in wasm] == [
        ("the WebAssembly heap limit (wasm)", WASM_HEAP_LIMIT, "runtime"),
        ("0.5 x navigator.deviceMemory (8 GiB)", int(8 * GiB * DEVICE_MEMORY_SHARE), "total")]
    # WebGPU: no heap cap; no deviceMemory: no device limit; max_memory first when given
    gpu = memory_limits(backend="onnxruntime-web", device="webgpu", max_memory=3 * 10**9)
    assert [(lim.name, lim.bytes) for lim in gpu] == [("max_memory", 3 * 10**9)]
    cpy = memory_limits(backend="onnxruntime", device="wasm", device_memory=24 * GiB)
    assert [(lim.name, lim.bytes) for lim in cpy] == [("the physical memory", 24 * GiB)]


def test_weights_budget_is_the_largest_fitting_size():
    s = ModelShape.from_config(LLAMA_1B)
    limits = [Limit("heap", WASM_HEAP_LIMIT, "runtime")]
    b = weights_budget(s, limits)
    assert memory.plan_memory(b, s, limits).fits and not memory.plan_memory(b + 1, s, limits).fits
    # the heap takes 2 x weights while creating: the budget is (4 GiB - overhead) / 2
    assert b == (WASM_HEAP_LIMIT - RUNTIME_OVERHEAD) // CREATE_FACTOR
    assert weights_budget(s, [Limit("tiny", 1000)]) == 0
    assert weights_budget(s, []) == 1 << 40


def _manifest(sizes: dict[str, int]) -> Manifest:
    """A one-module manifest whose variants weigh ``sizes`` bytes."""
    from webformers.dtypes import onnx_file

    files, variants = {}, {}
    for d, n in sizes.items():
        f = onnx_file("model", d)
        files[f] = {"size": n, "sha256": "0" * 64, "module": "model", "dtype": d}
        variants[d] = {"files": [f], "bytes": n, "ops": [], "cpu_matmul_on_webgpu": False}
    return Manifest({"format": "webformers-manifest/1", "modules": {"model": variants}, "files": files},
                    repo="big/model")


SIZES = {"fp32": 4_700_000_000, "fp16": 2_350_000_000, "q8": 1_200_000_000, "q4": 700_000_000}


def _check(dtype, limits, auto):
    man = _manifest(SIZES)
    plan = select_dtypes(man, dtype=dtype, device="wasm")
    return check_plan(man, plan, ModelShape.from_config(LLAMA_1B), limits, auto=auto,
                      reselect=lambda budget: select_dtypes(man, dtype=dtype, device="wasm", max_bytes=budget))


def test_a_load_over_the_limit_is_refused_with_estimate_limit_and_fitting_dtypes():
    limits = memory_limits(backend="onnxruntime-web", device="wasm", device_memory=8 * GiB)
    with pytest.raises(MemoryPlanError) as ei:
        _check("fp16", limits, auto=False)
    e = ei.value
    assert e.limit == WASM_HEAP_LIMIT and e.limit_name == "the WebAssembly heap limit (wasm)"
    assert e.estimate == CREATE_FACTOR * SIZES["fp16"] + RUNTIME_OVERHEAD
    # 0.5 x 8 GiB total: q8 (1.2 GB: 3 x 1.2 + overhead = 3.9 GB) fits, fp16 / fp32 do not
    assert e.fitting == ["q8", "q4"]
    msg = str(e)
    assert "big/model: loading model fp16" in msg and "4.97 GB" in msg and "4.29 GB" in msg, msg
    assert "dtypes that would fit: q8, q4" in msg, msg
    # the same request under a device limit the heap does not reach
    with pytest.raises(MemoryPlanError, match=r"over 0.5 x navigator.deviceMemory \(4 GiB\) 2.15 GB"):
        _check("q8", memory_limits(backend="onnxruntime-web", device="wasm", device_memory=4 * GiB), auto=False)


def test_auto_picks_the_largest_dtype_that_fits_and_says_why():
    limits = memory_limits(backend="onnxruntime-web", device="wasm", device_memory=8 * GiB)
    plan, mp = _check("auto", limits, auto=True)
    assert plan.dtypes == {"model": "q8"} and mp.fits
    assert any("dtype auto: model fp32 -> q8" in w and "WebAssembly heap limit" in w for w in plan.warnings)
    # nothing fits: the error says so
    with pytest.raises(MemoryPlanError, match="no dtype of this repo fits"):
        _check("auto", [Limit("max_memory", 500_000_000)], auto=True)
    # a load that fits is left as it is
    plan, mp = _check("q4", limits, auto=False)
    assert plan.dtypes == {"model": "q4"} and mp.fits and not plan.warnings


def test_load_sessions_refuses_before_reading_a_model_file(tmp_path, monkeypatch):
    """On CPython with a small max_memory: MemoryPlanError, and no .onnx file was read."""
    import json

    from webformers.platform import run_sync
    from webformers.runtime.load import load_sessions
    from webformers.store import ModelRepo

    man = _manifest({"fp32": 300_000_000, "q4": 60_000_000})
    repo_dir = tmp_path / "big" / "model"
    (repo_dir / "onnx").mkdir(parents=True)
    (repo_dir / "onnx" / "manifest.json").write_text(json.dumps(man.data))
    (repo_dir / "config.json").write_text(json.dumps(LLAMA_1B))
    read = []

    async def go(**kw):
        repo = await ModelRepo.open("big/model", host=str(tmp_path), use_cache=False)
        monkeypatch.setattr(repo, "file", lambda path, **_: read.append(path))
        return await load_sessions(repo, **kw)

    with pytest.raises(MemoryPlanError) as ei:
        run_sync(go(dtype="fp32", max_memory="800MB", device="wasm"))
    assert ei.value.limit == 800_000_000 and ei.value.fitting == ["q4"], str(ei.value)
    assert not [p for p in read if p.startswith("onnx/")], read
