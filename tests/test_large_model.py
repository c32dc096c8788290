"""The large test model (toolchain.large: Llama-3.2-1B's widths, 8 layers, random weights, SmolLM2's
tokenizer): its fp32 form is over 2 GiB in several external data files (none over 1 GiB) and generates on
CPython like onnxruntime's greedy; its q4 form generates in the page on WASM like CPython onnxruntime, and
a second visit reads every chunk from the Cache API (no model byte from the network); the fp32 form in the
page is loaded or refused as the memory plan says for the page's limits, before any model byte is fetched.

``WEBFORMERS_LARGE_LAYERS=16`` (opt-in) runs the same tests on the full ~1B shape (Llama-3.2-1B's 16
layers: fp32 4.3 GB in 5 files, q4 ~0.65 GB); its artifacts are ``test-artifacts/large_model_16l_*.json``.

Built once per content hash (16 layers: 7-9 min cold and a 9.4 GiB peak; ``build_timings.json`` has the
build's stage times and peak RSS); one big process at a time."""
from __future__ import annotations

import json
import time

import pytest

from helpers import PageSession, dump_json, origin_violations, run_py

pytestmark = pytest.mark.slow

LAYERS_ENV = "WEBFORMERS_LARGE_LAYERS"
PROMPT = [1, 504, 3156, 1240, 253, 980]
N_NEW = 4  # tokens per generation: a few suffice to compare, each costs seconds on wasm
GiB = 2**30


def _layers() -> int:
    """The depth under test: ``$WEBFORMERS_LARGE_LAYERS`` when set, else the CI depth (``LARGE_LAYERS``)."""
    import os

    from webformers.toolchain.large import LARGE_LAYERS

    raw = os.environ.get(LAYERS_ENV, "").strip()
    if not raw:
        return LARGE_LAYERS
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"{LAYERS_ENV}={raw!r}: expected a layer count such as 16")
    return int(raw)


LAYERS = _layers()


def _model_id() -> str:
    from webformers.toolchain.large import large_id

    return large_id(LAYERS)


def _artifact(name: str) -> str:
    """``large_model_<name>.json``, or ``large_model_<N>l_<name>.json`` for a depth other than the CI one."""
    from webformers.toolchain.large import LARGE_LAYERS

    return f"large_model_{name}.json" if LAYERS == LARGE_LAYERS else f"large_model_{LAYERS}l_{name}.json"


def _renderer_memory() -> dict:
    """RSS and peak RSS (``VmHWM``) of the largest Chromium renderer started by this test process (the page
    and its onnxruntime worker run there), or {} when none is found."""
    import psutil

    best = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if "--type=renderer" not in " ".join(proc.cmdline()):
                continue
            with open(f"/proc/{proc.pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            rss, hwm = (int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))
        except (psutil.Error, OSError, KeyError, ValueError):
            continue
        if hwm > best.get("renderer_peak_rss_bytes", -1):
            best = {"renderer_rss_bytes": rss, "renderer_peak_rss_bytes": hwm}
    return best


@pytest.fixture(scope="module")
def large_repo(tmp_path_factory):
    from webformers.toolchain.large import build_large_model

    return build_large_model(tmp_path_factory.mktemp("large"), LAYERS, log=lambda *_: None)


@pytest.fixture(scope="module")
def references(large_repo):
    """CPython onnxruntime's greedy tokens of each variant (one session at a time)."""
    from webformers.toolchain import reference_greedy

    return {d: [int(t) for t in reference_greedy(large_repo, d, PROMPT, N_NEW)] for d in ("q4", "fp32")}


def _manifest(repo):
    from webformers.store.manifest import Manifest

    return Manifest.from_json((repo / "onnx" / "manifest.json").read_text())


def test_fp32_is_over_2gib_in_external_data_files_of_at_most_1gib(large_repo):
    from webformers.toolchain.export import DATA_CHUNK_BYTES, data_file_names

    man = _manifest(large_repo)
    fp32 = man.variant("model", "fp32")
    data = fp32["files"][1:]
    assert fp32["files"][0] == "onnx/model.onnx"
    assert data == [f"onnx/{f}" for f in data_file_names("model.onnx", len(data))] and len(data) >= 3, data
    assert fp32["bytes"] > 2 * GiB, fp32["bytes"]
    for f in data:
        e = man.entry(f)
        assert 0 < e["size"] <= DATA_CHUNK_BYTES and e["size"] == (large_repo / f).stat().st_size
        assert len(e["sha256"]) == 64
    tjs = json.loads((large_repo / "config.json").read_text())["transformers.js_config"]
    q4 = man.variant("model", "q4")
    assert tjs["use_external_data_format"] == {"model.onnx": len(data), "model_q4.onnx": len(q4["files"]) - 1}
    cfg = json.loads((large_repo / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (2048, 8192, 32, 8, 64, LAYERS, 49152)
    # q4: 4.5-bit layers and an 8-bit shared table, well under a third of fp32
    assert q4["bytes"] < fp32["bytes"] / 4
    build = json.loads((large_repo / "build_timings.json").read_text())
    dump_json(_artifact("build"), {"layers": LAYERS, "build_s": build, "fp32_bytes": fp32["bytes"],
                                   "q4_bytes": q4["bytes"],
                                   "fp32_files": {f: man.entry(f)["size"] for f in fp32["files"]},
                                   "q4_files": {f: man.entry(f)["size"] for f in q4["files"]}})


def test_fp32_generates_on_cpython_like_onnxruntime(large_repo, references):
    """The webformers runtime on CPython loads all of fp32's files (the memory plan allows it: the
    physical memory) and generates onnxruntime's greedy tokens."""
    from webformers import AutoModelForCausalLM
    from webformers.platform import run_sync

    figures = {}

    async def go():
        t0 = time.perf_counter()
        model = await AutoModelForCausalLM.from_pretrained(str(large_repo), dtype="fp32", device="wasm")
        figures["load_s"] = round(time.perf_counter() - t0, 2)
        try:
            t0 = time.perf_counter()
            out = await model.generate(PROMPT, max_new_tokens=N_NEW, eos_token_id=None)
            figures["generate_s"] = round(time.perf_counter() - t0, 2)
            figures["stats"] = model.last_generation_stats
            return [int(t) for t in out[0].tolist()[len(PROMPT):]]
        finally:
            model.dispose()

    from webformers import platform
    from webformers.runtime import memory

    shape = memory.ModelShape.from_config(json.loads((large_repo / "config.json").read_text()))
    limits = memory.memory_limits(backend="onnxruntime", device="wasm", device_memory=platform.device_memory())
    weights = _manifest(large_repo).variant("model", "fp32")["bytes"]
    assert weights > 2 * GiB and memory.plan_memory(weights, shape, limits).fits
    assert run_sync(go()) == references["fp32"]
    assert len(set(references["fp32"])) > 1  # not a constant stream: the comparison can fail
    dump_json(_artifact("cpython_fp32"), {"layers": LAYERS, "fp32_bytes": weights, "tokens": references["fp32"],
                                          "new_tokens": N_NEW, "prompt_tokens": len(PROMPT), **figures})


def _load_code(model: str, dtype: str) -> str:
    return f"""
import json, time
from webformers import AutoModelForCausalLM, platform
events = []
t0 = time.perf_counter()
model = await AutoModelForCausalLM.from_pretrained({model!r}, dtype={dtype!r}, device="wasm",
                                                   progress_callback=events.append)
load_s = time.perf_counter() - t0
t0 = time.perf_counter()
out = await model.generate({PROMPT!r}, max_new_tokens={N_NEW}, eos_token_id=None)
gen_s = time.perf_counter() - t0
done = [e for e in events if e.get("status") == "done" and str(e.get("file", "")).startswith("onnx/")]
res = {{"tokens": out[0].tolist()[{len(PROMPT)}:], "dtype": model.dtype, "warnings": list(model.warnings),
       "device_memory": platform.device_memory(),
       "from_network": sum(e.get("from_network") or 0 for e in done),
       "from_cache": sum(e.get("from_cache") or 0 for e in done), "files": sorted(e["file"] for e in done),
       "load_s": round(load_s, 2), "generate_s": round(gen_s, 2), "stats": model.last_generation_stats,
       "load_timings": model.load_timings}}
model.dispose()
json.dumps(res, default=str)
"""


def _model_requests(server, prefix: str, since: int) -> list[dict]:
    return [r for r in server.log[since:] if r["path"].startswith(prefix + "onnx/")
            and not r["path"].endswith("manifest.json")]


def test_q4_in_page_equals_cpython_and_second_visit_reads_the_cache(browser, server, large_repo, references):
    from webformers.runtime import memory
    from webformers.runtime.forms import format_bytes
    LARGE_ID = _model_id()
    prefix = f"/models/{LARGE_ID}/"
    server.add_root(prefix, large_repo)
    man = _manifest(large_repo)
    q4_files = man.variant("model", "q4")["files"]
    s = PageSession(browser, server)
    try:
        n0 = len(server.log)
        first = json.loads(run_py(s, _load_code(LARGE_ID, "q4"), timeout_ms=900_000))
        assert first["tokens"] == references["q4"], (first["tokens"], references["q4"])
        assert first["files"] == sorted(q4_files) and first["from_network"] >= man.variant("model", "q4")["bytes"]
        assert {r["path"] for r in _model_requests(server, prefix, n0)} == {prefix + f for f in q4_files}
        first["renderer"] = _renderer_memory()

        # the fp32 form in this page: what the memory plan says for its limits, before any model byte
        shape = memory.ModelShape.from_config(json.loads((large_repo / "config.json").read_text()))
        limits = memory.memory_limits(backend="onnxruntime-web", device="wasm", device_memory=first["device_memory"])
        plan = memory.plan_memory(man.variant("model", "fp32")["bytes"], shape, limits)
        n1 = len(server.log)
        if plan.fits:
            fp32 = json.loads(run_py(s, _load_code(LARGE_ID, "fp32"), timeout_ms=1_800_000))
            assert fp32["tokens"] == references["fp32"]
        else:
            err = s.page.evaluate("code => window.wf.runPython(code).then(() => 'no error', e => String(e.message || e))",
                                  _load_code(LARGE_ID, "fp32"))
            lim = plan.over
            assert "MemoryPlanError" in err and format_bytes(getattr(plan.estimate, lim.part)) in err, err
            assert f"over {lim.describe()}" in err and "dtypes that would fit: q4" in err, err
            assert _model_requests(server, prefix, n1) == []  # refused before fetching a model file

        # second visit (same origin storage, a new page): every chunk from the Cache API; dtype="auto" picks
        # q4 itself when the plan refuses fp32
        s2 = PageSession(browser, server, context=s.context)
        n2 = len(server.log)
        again = json.loads(run_py(s2, _load_code(LARGE_ID, "q4" if plan.fits else "auto"), timeout_ms=900_000))
        assert again["tokens"] == references["q4"] and again["dtype"] == "q4"
        if not plan.fits:
            assert any("dtype auto: model fp32 -> q4" in w for w in again["warnings"]), again["warnings"]
        assert _model_requests(server, prefix, n2) == [], _model_requests(server, prefix, n2)
        assert again["from_network"] == 0 and again["from_cache"] == man.variant("model", "q4")["bytes"], again
        again["renderer"] = _renderer_memory()
        assert not origin_violations(s) and not origin_violations(s2)
        dump_json(_artifact("page"), {"layers": LAYERS, "q4_first": first, "q4_second": again,
                                      "fp32_plan": {**plan.as_dict(), "over": plan.over and plan.over.name},
                                      "fp32_refusal": None if plan.fits else err})
    finally:
        s.close()


def test_transformers_js_loads_the_q4_repo(browser, server, large_repo, references):
    """transformers.js (bench.html's worker, the site's onnxruntime-web) reads ``use_external_data_format``
    from our config.json, fetches model_q4.onnx_data and generates CPython onnxruntime's greedy tokens."""
    LARGE_ID = _model_id()
    server.add_root(f"/models/{LARGE_ID}/", large_repo)
    s = PageSession(browser, server, path="/bench.html", boot=False)
    try:
        s.page.wait_for_function("!!(window.runBench && window.BenchTjsWorker)", timeout=60_000)
        s.page.set_default_timeout(900_000)
        cfg = {"lib": "transformers.js", "model": LARGE_ID, "dtype": "q4", "device": "wasm", "threads": 1,
               "max_new_tokens": N_NEW, "ids": PROMPT, "tjs_ort": "site", "agent_memory": False}
        got = s.page.evaluate("cfg => runBench(cfg)", cfg)
        assert got.get("ids") == references["q4"], got
        assert not origin_violations(s)
    finally:
        s.close()
