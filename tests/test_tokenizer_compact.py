"""The tokenizer's compact form (``text/tokenizer/compact.py``), kept in the model store beside
tokenizer.json: it tokenizes exactly like the parsed JSON, a later load reads it instead of tokenizer.json,
and a damaged or outdated one is evicted and rebuilt.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tokenizer_fixtures as fx  # noqa: E402
from helpers import SITE, PageSession, dump_json, origin_violations, run_async, run_py  # noqa: E402

from webformers.text.tokenizer import Tokenizer, TokenizerError, compact  # noqa: E402

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEXTS = fx.CORPUS + ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"]


def _kinds():
    return {
        "smollm2": fx.load_json_files(fx.smollm2_tokenizer_dir())[0],
        "sentencepiece_bpe": fx.train_sentencepiece_bpe(),
        "llama3_split_bpe": fx.train_bytelevel_split_bpe(fx.LLAMA3_PATTERN),
        "wordpiece": fx.train_wordpiece(),
    }


@pytest.mark.unit
def test_compact_form_tokenizes_like_the_json():
    for name, tj in _kinds().items():
        tok = Tokenizer(json.loads(json.dumps(tj)))
        data = compact.dumps(tj, tok)
        again = Tokenizer(compact.loads(data))
        if tj["model"].get("type", "BPE") == "BPE":
            assert "merges" not in compact.loads(data)["model"], name
            assert again.model.merges == tok.model.merges, name
        for text in TEXTS:
            ids = tok.encode(text)
            assert again.encode(text) == ids, (name, text)
            assert again.decode(ids) == tok.decode(ids), (name, text)
    with pytest.raises(TokenizerError, match="not a compact tokenizer"):
        compact.loads(b"not marshal at all")


@pytest.fixture
def served(tmp_path, monkeypatch):
    """SmolLM2's repo files (without its onnx weights) behind the site server, a fresh cache directory."""
    from buildtools.server import SiteServer

    src, repo = SITE / "models" / SMOL, tmp_path / "site" / "models" / SMOL
    repo.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, repo / f.name)
    shutil.copytree(src / "onnx", repo / "onnx", ignore=lambda d, names: [n for n in names if n.endswith(".onnx")])
    monkeypatch.setenv("WEBFORMERS_CACHE", str(tmp_path / "cache"))
    server = SiteServer(tmp_path / "site").start()
    yield server, repo, tmp_path / "cache"
    server.stop()


def _load(server):
    from webformers import AutoTokenizer
    return run_async(AutoTokenizer.from_pretrained(SMOL, host=server.url + "/models"))


def _entries(cache: Path, file: str) -> list[tuple[Path, Path]]:
    """(data, metadata) paths of the cache directory's entries whose metadata ``file`` is ``file``."""
    out = []
    for meta in sorted(cache.rglob("meta/*.json")):
        if json.loads(meta.read_text()).get("file") == file:
            out.append((meta.parent.parent / "data" / meta.stem, meta))
    return out


@pytest.mark.unit
def test_second_load_reads_the_compact_form_and_a_bad_one_is_rebuilt(served):
    server, repo_dir, cache = served
    want = Tokenizer.from_directory(repo_dir)
    want_ids = [want.encode(t) for t in TEXTS]
    assert [t for t in map(_load(server).encode, TEXTS)] == want_ids
    kept = _entries(cache, f"tokenizer.json#{compact.KIND}")
    assert len(kept) == 1, sorted(p.name for p in cache.rglob("*"))
    data_p, meta_p = kept[0]
    assert Tokenizer(compact.loads(data_p.read_bytes())).encode(TEXTS[0]) == want_ids[0]

    # the second load does not need tokenizer.json: gone from the server and from the cache, it still loads
    (repo_dir / "tokenizer.json").rename(repo_dir / "tokenizer.json.away")
    for d, m in _entries(cache, "tokenizer.json"):
        d.unlink()
        m.unlink()
    assert [t for t in map(_load(server).encode, TEXTS)] == want_ids
    (repo_dir / "tokenizer.json.away").rename(repo_dir / "tokenizer.json")

    # a damaged compact form is evicted: the load parses tokenizer.json again and keeps a good one
    data = bytearray(data_p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data_p.write_bytes(bytes(data))
    assert [t for t in map(_load(server).encode, TEXTS)] == want_ids
    assert compact.loads(data_p.read_bytes()) == compact.loads(
        compact.dumps(json.loads((repo_dir / "tokenizer.json").read_text()), want))

    # a compact form of another tokenizer.json (its sha256 in the manifest changed) is not used
    meta = json.loads(meta_p.read_text())
    meta_p.write_text(json.dumps({**meta, "derived_from": "0" * 64}))
    assert [t for t in map(_load(server).encode, TEXTS)] == want_ids
    assert json.loads(meta_p.read_text())["derived_from"] == meta["derived_from"]


@pytest.mark.browser
def test_page_keeps_the_compact_form_in_the_cache_api(browser, server):
    """In the page: the first visit parses tokenizer.json and keeps the compact form in the Cache API; the
    second reads that instead (tokenizer.json, evicted from the cache meanwhile, is not requested) and
    tokenizes the same."""
    code = f"""
import asyncio, json, time
from webformers import AutoTokenizer
from webformers.text.tokenizer import compact
t0 = time.perf_counter()
tok = await AutoTokenizer.from_pretrained("{SMOL}")
ms = (time.perf_counter() - t0) * 1000
await asyncio.sleep(0.5)  # the compact form is stored in the background
json.dumps({{"ms": ms, "kind": compact.KIND, "ids": [tok.encode(t) for t in {TEXTS!r}]}})
"""
    cached = """async (what) => {
        const c = await caches.open("webformers-hub-v1");
        const urls = (await c.keys()).map(r => r.url);
        if (what === "evict") for (const u of urls) if (u.endsWith("/tokenizer.json")) await c.delete(u);
        return urls.filter(u => u.includes("webformers-derived="));
    }"""
    want = [Tokenizer.from_directory(SITE / "models" / SMOL).encode(t) for t in TEXTS]
    ctx = browser.new_context()
    try:
        runs = []
        for visit in range(2):
            s = PageSession(browser, server, context=ctx)
            run = json.loads(run_py(s, code))
            run["kept"] = s.page.evaluate(cached, "evict")
            run["tokenizer_requests"] = [u for u in s.requests if u.endswith("/tokenizer.json")]
            assert not origin_violations(s)
            s.page.close()
            runs.append(run)
        for r in runs:
            assert r["ids"] == want
            assert [u.rsplit("webformers-derived=", 1)[1] for u in r["kept"]] == [r["kind"]]
        assert runs[0]["tokenizer_requests"] and not runs[1]["tokenizer_requests"]
        dump_json("tokenizer_compact.json", {"parsed_ms": runs[0]["ms"], "compact_ms": runs[1]["ms"]})
    finally:
        ctx.close()


@pytest.mark.unit
def test_prewarm_compiles_the_patterns_of_the_common_families():
    from webformers.text.tokenizer import prewarm, regex
    from webformers.text.tokenizer.pre_tokenizers import GPT2_PATTERN

    assert set(prewarm.COMMON_PATTERNS) >= {GPT2_PATTERN, fx.LLAMA3_PATTERN, fx.QWEN2_PATTERN}
    assert regex.category_ranges.cache_info().currsize == 1
