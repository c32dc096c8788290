"""The bench's report path (buildtools/bench.py) on a small synthetic run, and wllama in bench.html on the GGUF.

The unit tests feed ``aggregate`` / ``markdown`` / ``update_readme`` rounds whose figures differ per round, so a
ratio taken of medians instead of pair by pair, a dropped wllama column or a lost long-context figure shows. The
browser test loads the SmolLM2 GGUF into wllama through the bench page and generates a few tokens.
"""
from __future__ import annotations

import statistics

import pytest

from buildtools import bench
from tests.helpers import PageSession, origin_violations


def _lib_run(decode, long_decode, load_ms, mem_mb, ort_runs=None):
    warm = {"ok": True, "load_ms": load_ms, "decode_tokens_per_s": decode, "prefill_tokens_per_s": decode * 4,
            "ttft_ms": 500.0, "memory": {"uasm_bytes": mem_mb * 1e6},
            "long": {"decode_tokens_per_s": long_decode, "prefill_tokens_per_s": decode * 3, "ttft_ms": 9000.0,
                     "ort_run_ms": ort_runs, "memory": {"uasm_bytes": (mem_mb + 40) * 1e6}}}
    cold = {"ok": True, "load_ms": load_ms * 2, "memory": {}}
    return {"cold": cold, "warm": warm, "figures": bench.run_figures(cold, warm)}


def _result(rounds):
    """Two configs (q4 native / fp32 form) at one thread; the second reuses the first's transformers.js and
    wllama runs, as the bench does."""
    cfgs = []
    for execution in ("native", "fp32"):
        cfgs.append({"model": bench.SMOLLM2, "dtype": "q4", "device": "wasm", "ratios_only": False,
                     "execution": execution, "threads": 1, "libs": list(bench.LIBS), "prompt_tokens": 42,
                     "encode_tokens": 2000, "long_prompt_tokens": 1001, "prompt_text_roundtrip": True, "rounds": []})
    for rnd, (wf, tj, wl) in enumerate(rounds):
        shared = {"transformers.js": _lib_run(*tj), "wllama": _lib_run(*wl)}
        for ci, c in enumerate(cfgs):
            e = {"round": rnd, "webformers": _lib_run(*wf[ci], ort_runs=[900.0, 100.0, 120.0])}
            for lib, run in shared.items():
                e[lib] = run if ci == 0 else {**run, "same_run_as_config": 0}
            e.update(greedy_outputs_equal=True, encode_ids_equal=True, wllama_prompt_tokens_equal=True,
                     wllama_common_prefix=5 + rnd)
            c["rounds"].append(e)
    return {"date": "2026-12-01T00:00:00", "seconds": 60.0,
            "machine": {"cpus": 2, "platform": "test", "loadavg_start": [3.0], "loadavg_end": [4.0]},
            "settings": {"threads": 1, "max_new_tokens": 32, "long_tokens": 1000, "prompt": bench.PROMPT,
                         "transformers_js_ort": "site", "wllama": {"gguf": {bench.SMOLLM2: {"file": "x.gguf"}}}},
            "configs": cfgs}


# (webformers per config (native, fp32), transformers.js, wllama): (decode, long decode, load ms, memory MB)
ROUNDS = [([(3.0, 2.0, 2000, 500), (24.0, 12.0, 4000, 700)], (3.0, 2.5, 5000, 550), (8.0, 6.0, 3500, 300)),
          ([(2.0, 1.5, 3000, 520), (20.0, 11.0, 4400, 720)], (2.5, 1.8, 5200, 560), (10.0, 7.0, 3700, 310))]


@pytest.mark.unit
def test_run_figures_long_context():
    r = _lib_run(20.0, 11.0, 4000, 700, ort_runs=[900.0, 100.0, 120.0])["figures"]
    assert r["long_decode_tokens_per_s"] == 11.0 and r["long_prefill_tokens_per_s"] == 60.0
    assert r["long_ort_run_ms"] == 110.0  # the decode runs only: the first run is the long prefill
    assert r["long_memory_mb"] == pytest.approx(740.0)


@pytest.mark.unit
def test_ratios_pair_by_pair_with_wllama():
    res = _result(ROUNDS)
    bench.aggregate(res)
    for ci, c in enumerate(res["configs"]):
        for key, idx in (("decode_tokens_per_s", 0), ("long_decode_tokens_per_s", 1), ("warm_load_ms", 2)):
            want_tjs = statistics.median(r[0][ci][idx] / r[1][idx] for r in ROUNDS)
            want_wl = statistics.median(r[0][ci][idx] / r[2][idx] for r in ROUNDS)
            assert c["ratios"][key]["median"] == pytest.approx(want_tjs), key
            assert c["ratios"]["vs_wllama:" + key]["median"] == pytest.approx(want_wl), key
        assert c["summary"]["wllama"]["decode_tokens_per_s"]["median"] == statistics.median(r[2][0] for r in ROUNDS)
        assert c["wllama_common_prefix"] == 5 and c["wllama_prompt_tokens_equal"] is True
    goal = next(g for g in res["goals"] if g["goal"].startswith("SmolLM2 q4 (fp32 form) decode ≥ 2 × wllama"))
    fp32_cfg = res["configs"][1]
    assert goal["value"] == fp32_cfg["ratios"]["vs_wllama:decode_tokens_per_s"]["median"]
    assert goal["met"] is (goal["value"] >= 2.0)


@pytest.mark.unit
def test_shared_run_failure_counted_once():
    res = _result(ROUNDS[:1])
    res["configs"][0]["rounds"][0]["wllama"]["warm"]["ok"] = False
    res["configs"][0]["rounds"][0]["wllama"]["warm"]["error"] = "RuntimeError: wllama broke"
    bench.aggregate(res)
    fails = [f for c in res["configs"] for f in c["failures"]]
    assert [(f["lib"], f["run"]) for f in fails] == [("wllama", "warm")], fails


@pytest.mark.unit
def test_markdown_and_readme_tables(tmp_path):
    res = _result(ROUNDS)
    bench.aggregate(res)
    md = bench.markdown(res)
    fp32 = res["configs"][1]
    ratio = bench._fmt_ratio(fp32["ratios"]["vs_wllama:long_decode_tokens_per_s"])
    row = next(ln for ln in md.splitlines() if ln.startswith("| decode at the long context")
               and ratio in ln)
    assert row.count("|") == 7, row  # figure, three libraries, two ratios
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n\n{bench.README_START}\nold table\n{bench.README_END}\n\n## after\nkept\n")
    assert bench.update_readme(res, "2026-12-01.json", readme)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# intro") and text.endswith("## after\nkept\n")
    assert "results/2026-12-01.json" in text and "shared" in text
    header = next(ln for ln in text.splitlines() if ln.startswith("| figure |"))
    # webformers per execution form, transformers.js and wllama once (their runs serve both configs)
    assert header.count("webformers") == 2 and header.count("transformers.js") == 1 and header.count("wllama") == 1
    assert bench._fmt_median(fp32["ratios"]["vs_wllama:long_decode_tokens_per_s"], "×") in text
    (tmp_path / "plain.md").write_text("no markers\n")
    assert not bench.update_readme(res, "x.json", tmp_path / "plain.md")


@pytest.mark.browser
def test_wllama_in_bench_page(browser, server):
    """bench.html?lib=wllama's path: the vendored wllama loads the GGUF from the origin, counts the prompt's
    tokens like our tokenizer and streams the asked-for number of tokens (1 thread, a 10-token prompt, 4 new tokens)."""
    gguf = bench.gguf_file(bench.SMOLLM2)
    url = server.add_root("/fixtures/bench-gguf/", gguf.parent) + gguf.name
    from tokenizers import Tokenizer

    # a few plain tokens (no chat template): the prefill stays short
    tok = Tokenizer.from_file(str(bench.repo_dir(bench.SMOLLM2) / "tokenizer.json"))
    ids = tok.encode("Once upon a time, in a small village,", add_special_tokens=False).ids
    text, roundtrip = bench.prompt_text(bench.SMOLLM2, ids)
    assert roundtrip
    s = PageSession(browser, server, path="/bench.html", boot=False)
    try:
        s.page.wait_for_function("!!window.runBench", timeout=60_000)
        cfg = {"lib": "wllama", "model": bench.SMOLLM2, "dtype": "q4", "device": "wasm", "threads": 1,
               "max_new_tokens": 4, "ids": ids, "text": text, "gguf_url": url}
        r = s.page.evaluate("cfg => runBench(cfg)", cfg)
        assert r["prompt_tokens_equal"] and r["wllama_prompt_tokens"] == len(ids), r
        assert r["new_tokens"] == len(r["ids"]) == 4, r
        assert r["decode_tokens_per_s"] > 0 and r["loaded"]["num_threads"] == 1
        assert origin_violations(s) == []
    finally:
        s.close()
