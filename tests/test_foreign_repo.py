"""Repos we did not make: an onnx-community-style export without ``onnx/manifest.json`` (built with
torch.onnx.export, onnxruntime's quantizers and transformers' tokenizer: ``make_foreign_repo.py``) loads on
CPython and in the page, generates the tokens onnxruntime's greedy loop gives on the same file, records the
sha256 of each first download and catches a damaged cached copy on a later read; ``webformers manifest``
gives such a repo a full manifest; ``dtype="auto"`` without a quality report follows transformers.js'
defaults and ``max_bytes`` works on the sizes the host reported.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pysrc"))
sys.path.insert(0, str(ROOT / "tests"))

from buildtools.server import Handler, SiteServer  # noqa: E402
from helpers import run_async, run_py  # noqa: E402
from make_foreign_repo import cached_build, greedy  # noqa: E402
from webformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from webformers.cli import main as cli_main  # noqa: E402
from webformers.runtime import load as loading  # noqa: E402
from webformers.runtime.load import load_sessions  # noqa: E402
from webformers.runtime.plan import select_dtypes  # noqa: E402
from webformers.store import IntegrityError, ModelRepo  # noqa: E402
from webformers.store.cache import open_cache  # noqa: E402

MODEL = "org/foreign"
PROMPT = "Once upon a time"
N_NEW = 12
FILES = {"fp32": "onnx/model.onnx", "q8": "onnx/model_quantized.onnx", "q4": "onnx/model_q4.onnx"}
NO_GPU = {"webgpu": False, "features": []}
NO_F16 = {"webgpu": True, "features": [], "isFallbackAdapter": True}


def run(coro):
    return run_async(coro)


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def foreign_repo(pytestconfig) -> Path:
    """The repo, built once per content key of its builder (kept in pytest's cache directory)."""
    return cached_build(pytestconfig.cache.mkdir("webformers-foreign"))


@pytest.fixture(scope="session")
def prompt_ids(foreign_repo) -> list[int]:
    from transformers import AutoTokenizer as HFTokenizer
    return HFTokenizer.from_pretrained(foreign_repo)(PROMPT)["input_ids"]


@pytest.fixture(scope="session")
def eos(foreign_repo) -> int:
    return json.loads((foreign_repo / "generation_config.json").read_text())["eos_token_id"]


@pytest.fixture(autouse=True)
def _cpython_cache(request, tmp_path, monkeypatch):
    if request.node.get_closest_marker("browser"):
        return
    monkeypatch.setenv("WEBFORMERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WEBFORMERS_HOST", raising=False)
    monkeypatch.setattr(loading, "ADAPTER_OVERRIDE", None)


class _Logged(Handler):
    """The site's handler, logging every request; paths in ``server.html`` answer an HTML page (HTTP 200)
    - to a full GET only when ``server.html_on_download`` holds them instead."""

    def do_GET(self):
        srv = self.server
        path = self.path.split("?", 1)[0]
        srv.seen.append((self.command, path, self.headers.get("Range")))
        rel = path[len(f"/{MODEL}/"):] if path.startswith(f"/{MODEL}/") else None
        if rel in srv.html or (rel in srv.html_on_download and self.headers.get("Range") is None):
            body = b"<!DOCTYPE html><html><body>Sign in</body></html>"
            self._headers(200, len(body), "text/html; charset=utf-8")
            self.wfile.write(body)
            return
        super().do_GET()


class LoggingServer(SiteServer):
    def __init__(self, root):
        super().__init__(root)
        self.RequestHandlerClass = _Logged
        #: every request: (method, URL path, Range header or None)
        self.seen: list[tuple] = []
        self.html: set[str] = set()
        self.html_on_download: set[str] = set()

    def downloads(self, rel: str) -> int:
        """Full GETs (no Range header) of the repo file ``rel``."""
        return sum(1 for c, p, r in self.seen if c == "GET" and p == f"/{MODEL}/{rel}" and r is None)

    def downloaded(self) -> set[str]:
        return {p[len(f"/{MODEL}/"):] for c, p, r in self.seen if c == "GET" and r is None}


@pytest.fixture
def site_copy(tmp_path, foreign_repo):
    """A served copy of the repo (tests may change its files): (server, repo directory)."""
    root = tmp_path / "site"
    repo = root / MODEL
    shutil.copytree(foreign_repo, repo)
    s = LoggingServer(root).start()
    yield s, repo
    s.stop()


async def _generate(repo, ids, dtype, **kw):
    lm = await AutoModelForCausalLM.from_pretrained(repo, dtype=dtype, device="wasm", **kw)
    out = await lm.generate(ids, max_new_tokens=N_NEW, do_sample=False)
    return lm, [int(t) for t in out[0, len(ids):]]


# ------------------------------------------------------------------------------------------- CPython

@pytest.mark.parametrize("dtype", ["q8", "q4", "fp32"])
def test_loads_without_a_manifest_and_generates_like_onnxruntime(site_copy, foreign_repo, prompt_ids, eos, dtype):
    server, repo_dir = site_copy

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.url)
        man = repo.manifest
        assert man.discovered == "probe" and man.modules == {"model": ["fp32", "q8", "q4"]}
        assert man.variant("model", "fp32")["files"] == [
            "onnx/model.onnx", "onnx/model.onnx_data", "onnx/model.onnx_data_1"]  # use_external_data_format: 2
        for d in FILES:
            files = man.variant("model", d)["files"]
            assert man.variant("model", d)["bytes"] == sum((repo_dir / f).stat().st_size for f in files)
        tok = await AutoTokenizer.from_pretrained(repo)
        assert tok.encode(PROMPT) == prompt_ids  # transformers' tokenizer files, read by ours
        lm, new = await _generate(repo, prompt_ids, dtype)
        assert lm.dtype == dtype and lm.device == "wasm"
        return new
    new = run(go())
    assert new == greedy(foreign_repo / FILES[dtype], prompt_ids, N_NEW, eos)
    onnx = {p for p in server.downloaded() if p.startswith("onnx/") and p != "onnx/manifest.json"}
    chosen = {FILES[dtype]} | ({"onnx/model.onnx_data", "onnx/model.onnx_data_1"} if dtype == "fp32" else set())
    assert onnx == chosen and all(server.downloads(f) == 1 for f in chosen)


def test_local_directory_without_a_manifest(foreign_repo, prompt_ids, eos, tmp_path):
    async def go():
        repo = await ModelRepo.open(str(foreign_repo))
        assert repo.manifest.discovered == "directory" and repo.manifest.modules == {"model": ["fp32", "q8", "q4"]}
        _, new = await _generate(repo, prompt_ids, "q4")
        assert new == greedy(foreign_repo / FILES["q4"], prompt_ids, N_NEW, eos)
        # a local file is checked against its first read for the life of the repo object
        bad = shutil.copytree(foreign_repo, tmp_path / "bad")
        repo = await ModelRepo.open(str(bad))
        await repo.file(FILES["q8"])
        p = bad / FILES["q8"]
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match="first read"):
            await repo.file(FILES["q8"])
    run(go())


def test_auto_follows_transformers_js_defaults_and_max_bytes(site_copy, tmp_path):
    server, repo_dir = site_copy

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.url)
        man = repo.manifest
        b = {d: man.variant("model", d)["bytes"] for d in FILES}
        # no quality report: auto gives the device default, like transformers.js (q8 on wasm, fp32 on WebGPU)
        assert await repo.optional_json("quantization_report.json") is None
        loaded = await load_sessions(repo, dtype="auto", device="auto", adapter=NO_GPU)
        assert loaded.dtypes == {"model": "q8"} and loaded.device == "wasm"
        assert select_dtypes(man, dtype=None, device="wasm", adapter=NO_GPU).dtypes == {"model": "q8"}
        assert select_dtypes(man, dtype="auto", device="auto", adapter=NO_F16).dtypes == {"model": "fp32"}
        # max_bytes on the sizes the host reported: WebGPU's fp32 does not fit, q4 does
        p = select_dtypes(man, dtype="auto", device="webgpu", adapter=NO_F16, max_bytes=b["q4"])
        assert p.dtypes == {"model": "q4"} and p.bytes == b["q4"]
        with pytest.raises(ValueError, match=f"no dtype choice fits max_bytes={b['q8'] - 1}"):
            select_dtypes(man, dtype="auto", device="wasm", adapter=NO_GPU, max_bytes=b["q8"] - 1)
        assert select_dtypes(man, dtype="auto", device="wasm", adapter=NO_GPU,
                             max_bytes=b["q8"]).dtypes == {"model": "q8"}

        # transformers.js_config's dtype and device are the repo's defaults
        cfg = json.loads((repo_dir / "config.json").read_text())
        cfg["transformers.js_config"].update(dtype="q4", device="wasm")
        (repo_dir / "config.json").write_text(json.dumps(cfg))
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert repo.manifest.defaults == {"dtype": "q4", "device": "wasm"}
        for dtype in ("auto", None):
            p = select_dtypes(repo.manifest, dtype=dtype, device="auto", adapter=NO_F16)
            assert p.dtypes == {"model": "q4"} and p.device == "wasm"
        assert select_dtypes(repo.manifest, dtype="q8", device="auto", adapter=NO_F16).dtypes == {"model": "q8"}
        # a per-module mapping; a value webformers does not know is ignored with a warning
        cfg["transformers.js_config"].update(dtype={"model": "q5"}, device={"model": "webnn"})
        (repo_dir / "config.json").write_text(json.dumps(cfg))
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert repo.manifest.defaults == {}
        assert any("q5" in w and "unknown dtype" in w for w in repo.warnings)
        assert any("'webnn' ignored" in w for w in repo.warnings)
        assert select_dtypes(repo.manifest, dtype="auto", device="auto", adapter=NO_GPU).dtypes == {"model": "q8"}
    run(go())


def test_first_download_is_trusted_and_a_damaged_cached_copy_is_caught(site_copy, foreign_repo, prompt_ids, eos):
    server, repo_dir = site_copy
    path = FILES["q4"]

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert repo.manifest.entry(path)["sha256"] is None  # nothing downloaded yet
        await _generate(repo, prompt_ids, "q4")
        await AutoTokenizer.from_pretrained(repo)
        store, _ = await open_cache()
        metas = {m["file"]: m for m in await store.entries() if m.get("model") == MODEL}
        # the sha256 of the first download is kept beside the cached entry
        assert metas[path]["sha256"] == sha256(repo_dir / path)
        assert metas["tokenizer.json"]["sha256"] == sha256(repo_dir / "tokenizer.json")
        # damage both cached copies (same size, other bytes)
        for rel in (path, "tokenizer.json"):
            url = repo.url(rel)
            good = bytes(await store.get(url))
            bad = bytearray(good)
            bad[len(bad) // 2] ^= 0xFF
            await store.put(url, bytes(bad), {k: v for k, v in metas[rel].items() if k not in ("url", "size")})
        n = server.downloads(path)
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert repo.manifest.entry(path)["sha256"] == metas[path]["sha256"]  # trusted from the store
        events = []
        lm, new = await _generate(repo, prompt_ids, "q4", progress_callback=events.append)
        warn = [e["message"] for e in events if e["status"] == "warning"]
        assert any("corrupted" in w and "sha256" in w and path in w for w in warn)
        assert server.downloads(path) == n + 1
        assert hashlib.sha256(bytes(await store.get(repo.url(path)))).hexdigest() == metas[path]["sha256"]
        # the tokenizer now loads from its compact form (kept beside tokenizer.json, checked on its own); a
        # read of tokenizer.json catches the damaged copy and downloads it again
        t = server.downloads("tokenizer.json")
        tok = await AutoTokenizer.from_pretrained(repo)
        assert tok.encode(PROMPT) == prompt_ids and server.downloads("tokenizer.json") == t
        text = await repo.text("tokenizer.json")
        assert any("corrupted" in w and "tokenizer.json" in w for w in repo.warnings)
        assert server.downloads("tokenizer.json") == t + 1 and text == (repo_dir / "tokenizer.json").read_text()
        # a third open reads everything from the cache, checked
        repo = await ModelRepo.open(MODEL, host=server.url)
        m = server.downloads(path)
        _, again = await _generate(repo, prompt_ids, "q4")
        assert server.downloads(path) == m and again == new
        return new
    assert run(go()) == greedy(foreign_repo / path, prompt_ids, N_NEW, eos)


def test_changed_on_the_server_html_and_wrong_size_are_not_cached(site_copy):
    server, repo_dir = site_copy

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.url)
        await repo.file(FILES["q8"])
        # the file changed on the server (another size): the cached copy is not trusted, downloaded again
        shutil.copy(repo_dir / FILES["q4"], repo_dir / FILES["q8"])
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert any(f"{FILES['q8']} changed on the server" in w for w in repo.warnings)
        data = await repo.file(FILES["q8"])
        assert bytes(data) == (repo_dir / FILES["q4"]).read_bytes() and server.downloads(FILES["q8"]) == 2
        # an HTML page where a probe finds a file: that dtype does not exist
        server.html.add("onnx/model_fp16.onnx")
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert "fp16" not in repo.manifest.modules["model"]
        # an HTML page instead of the file on download: a clear error, nothing cached
        server.html_on_download.add(FILES["q4"])
        with pytest.raises(IntegrityError, match="HTML") as e:
            await repo.file(FILES["q4"])
        assert "not cached" in str(e.value)
        store, _ = await open_cache()
        assert await store.get(repo.url(FILES["q4"])) is None
        # not the size the host reported when probed: a clear error, nothing cached
        server.html_on_download.clear()
        repo = await ModelRepo.open(MODEL, host=server.url)
        (repo_dir / FILES["q4"]).write_bytes(b"\x08" * 100)
        with pytest.raises(IntegrityError, match="not the file the host reported: 100 bytes instead of"):
            await repo.file(FILES["q4"])
        assert await store.get(repo.url(FILES["q4"])) is None
        # no manifest and no config.json: a clear error
        with pytest.raises(FileNotFoundError, match="neither onnx/manifest.json nor config.json.*HTTP 404"):
            await ModelRepo.open("org/missing", host=server.url)
    run(go())


def test_offline_after_first_load_uses_the_cached_variants(site_copy, prompt_ids):
    server, _ = site_copy

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.url)
        _, first = await _generate(repo, prompt_ids, "q4")
        await AutoTokenizer.from_pretrained(repo)
        server.stop()
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert repo.manifest.discovered == "cache" and repo.manifest.modules == {"model": ["q4"]}
        assert any("using the cached copy" in w for w in repo.warnings)
        tok = await AutoTokenizer.from_pretrained(repo)
        _, new = await _generate(repo, tok.encode(PROMPT), "q4")
        assert new == first
    try:
        run(go())
    finally:
        server.stop = lambda: None


def test_a_files_listing_names_the_files_their_sizes_and_sha256(site_copy):
    server, repo_dir = site_copy
    files = sorted(p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file())
    # the Hugging Face hub's tree answer: sizes, and the sha256 of large (LFS) files as lfs.oid
    tree = [{"type": "directory", "path": "onnx"}] + [
        {"type": "file", "path": f, "size": (repo_dir / f).stat().st_size,
         **({"lfs": {"oid": sha256(repo_dir / f)}} if f.startswith("onnx/") else {})} for f in files]
    (repo_dir / "files.json").write_text(json.dumps(tree))

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert repo.manifest.discovered == "listing" and repo.manifest.modules == {"model": ["fp32", "q8", "q4"]}
        assert repo.manifest.entry(FILES["q4"])["sha256"] == sha256(repo_dir / FILES["q4"])
        assert not [(c, u, r) for c, u, r in server.seen if r is not None]  # nothing probed
        assert bytes(await repo.file(FILES["q4"])) == (repo_dir / FILES["q4"]).read_bytes()
        # the listing's sha256 is checked from the first download
        tree[[t.get("path") for t in tree].index(FILES["q8"])]["lfs"]["oid"] = "0" * 64
        (repo_dir / "files.json").write_text(json.dumps(tree))
        repo = await ModelRepo.open(MODEL, host=server.url)
        with pytest.raises(IntegrityError, match="sha256"):
            await repo.file(FILES["q8"])
        # a plain list of paths: the model files' sizes are probed
        (repo_dir / "files.json").write_text(json.dumps(files))
        repo = await ModelRepo.open(MODEL, host=server.url)
        assert repo.manifest.discovered == "listing"
        assert repo.manifest.variant("model", "q8")["bytes"] == (repo_dir / FILES["q8"]).stat().st_size
        (repo_dir / "files.json").write_text(json.dumps({"files": 3}))
        with pytest.raises(ValueError, match="files.json must be a JSON list"):
            await ModelRepo.open(MODEL, host=server.url)
    run(go())


def test_layout_of_encoder_decoder_repos_and_external_data(tmp_path):
    from webformers.store.layout import config_defaults, data_chunks, data_files, repo_modules

    assert repo_modules({"model_type": "llama"}) == ["model"]
    assert repo_modules({"is_encoder_decoder": True}) == ["encoder_model", "decoder_model_merged"]
    tjs = {"transformers.js_config": {"use_external_data_format": {"model_q4.onnx": 3, "decoder_model_merged": True}}}
    assert data_chunks(tjs, "onnx/model_q4.onnx", "model") == 3
    assert data_chunks(tjs, "onnx/model.onnx", "model") is None
    assert data_chunks(tjs, "onnx/decoder_model_merged_fp16.onnx", "decoder_model_merged") == 1
    assert data_chunks({"transformers.js_config": {"use_external_data_format": 2}}, "onnx/x.onnx", "x") == 2
    with pytest.raises(ValueError, match="bool or a number"):
        data_chunks({"transformers.js_config": {"use_external_data_format": "yes"}}, "onnx/x.onnx", "x")
    assert data_files("onnx/model_q4.onnx", 3) == [
        "onnx/model_q4.onnx_data", "onnx/model_q4.onnx_data_1", "onnx/model_q4.onnx_data_2"]
    assert config_defaults({"transformers.js_config": {"dtype": {"encoder_model": "fp32", "decoder_model_merged": "q4"},
                                                       "device": "gpu"}}) == (
        {"dtype": {"encoder_model": "fp32", "decoder_model_merged": "q4"}, "device": "webgpu"}, [])
    _, notes = config_defaults({"transformers.js_config": {"device": {"encoder_model": "webgpu",
                                                                      "decoder_model_merged": "wasm"}}})
    assert notes and "one device" in notes[0]

    # a Whisper-like local repo (encoder + merged decoder; the unmerged decoder files are not a module)
    repo = tmp_path / "whisper"
    (repo / "onnx").mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps({"is_encoder_decoder": True, "transformers.js_config": {
        "dtype": {"encoder_model": "fp32", "decoder_model_merged": "q4"}}}))
    for f in ("encoder_model.onnx", "encoder_model_q4.onnx", "decoder_model_merged.onnx",
              "decoder_model_merged.onnx_data", "decoder_model_merged_q4.onnx", "decoder_model.onnx"):
        (repo / "onnx" / f).write_bytes(b"\x08\x07" * 10)

    async def go():
        r = await ModelRepo.open(str(repo))
        assert r.manifest.modules == {"encoder_model": ["fp32", "q4"], "decoder_model_merged": ["fp32", "q4"]}
        assert r.manifest.variant("decoder_model_merged", "fp32")["files"] == [
            "onnx/decoder_model_merged.onnx", "onnx/decoder_model_merged.onnx_data"]
        p = select_dtypes(r.manifest, dtype=None, device="wasm", adapter=NO_GPU)
        assert p.dtypes == {"encoder_model": "fp32", "decoder_model_merged": "q4"}
    run(go())


def test_manifest_command_gives_the_repo_full_verification(foreign_repo, prompt_ids, eos, tmp_path, capsys):
    repo_dir = shutil.copytree(foreign_repo, tmp_path / "repo")
    assert cli_main(["manifest", str(repo_dir)]) == 0
    assert "onnx/manifest.json" in capsys.readouterr().out
    man = json.loads((repo_dir / "onnx" / "manifest.json").read_text())
    assert {f: e["sha256"] for f, e in man["files"].items()} == {
        p.relative_to(repo_dir).as_posix(): sha256(p) for p in repo_dir.rglob("*")
        if p.is_file() and p.name != "manifest.json"}
    assert man["defaults"] == {}
    assert man["modules"]["model"]["fp32"]["files"] == [
        "onnx/model.onnx", "onnx/model.onnx_data", "onnx/model.onnx_data_1"]
    assert "MatMulNBits" in man["modules"]["model"]["q4"]["ops"]

    async def go():
        repo = await ModelRepo.open(str(repo_dir))
        assert repo.manifest.discovered is None
        discovered = await ModelRepo.open(str(foreign_repo))
        for d in FILES:
            assert repo.manifest.variant("model", d)["bytes"] == discovered.manifest.variant("model", d)["bytes"]
        # the same defaults as the discovered repo: auto without a report is q8 on wasm
        assert (await load_sessions(repo, dtype="auto", device="wasm", adapter=NO_GPU)).dtypes == {"model": "q8"}
        _, new = await _generate(repo, prompt_ids, "q4")
        assert new == greedy(foreign_repo / FILES["q4"], prompt_ids, N_NEW, eos)
        # verified from the first read: a damaged file fails at once
        p = repo_dir / FILES["q8"]
        data = bytearray(p.read_bytes())
        data[100] ^= 0xFF
        p.write_bytes(bytes(data))
        repo = await ModelRepo.open(str(repo_dir))
        with pytest.raises(IntegrityError, match="the file the manifest describes"):
            await repo.file(FILES["q8"])
    run(go())
    # a repo without config.json needs --modules; a module without files is an error naming what was looked for
    (repo_dir / "config.json").unlink()
    assert cli_main(["manifest", str(repo_dir)]) == 2
    assert "--modules" in capsys.readouterr().err
    assert cli_main(["manifest", str(repo_dir), "--modules", "encoder_model"]) == 2
    assert "onnx/{module}{suffix}.onnx" in capsys.readouterr().err
    assert cli_main(["manifest", str(repo_dir), "--modules", "model"]) == 0


# ------------------------------------------------------------------------------------------- browser

@pytest.fixture
def foreign_page(server, wf_page, foreign_repo):
    server.add_root(f"/foreign/{MODEL}/", foreign_repo)
    host = server.url + "/foreign"
    run_py(wf_page, f"""
import json
from webformers import AutoModelForCausalLM, AutoTokenizer
from webformers.store import ModelRepo
from webformers.store.cache import open_cache
from webformers.platform import sha256_hex
HOST = {host!r}
MODEL = {MODEL!r}

async def generate(dtype, ids, **kw):
    repo = await ModelRepo.open(MODEL, host=HOST)
    lm = await AutoModelForCausalLM.from_pretrained(repo, dtype=dtype, device="wasm", **kw)
    out = await lm.generate(ids, max_new_tokens={N_NEW}, do_sample=False)
    return repo, lm, [int(t) for t in out[0, len(ids):]]
"done"
""")
    wf_page.repo_url = f"{host}/{MODEL}/"
    return wf_page


@pytest.mark.browser
def test_browser_loads_q8_and_q4_like_onnxruntime(foreign_page, foreign_repo, prompt_ids, eos):
    res = json.loads(run_py(foreign_page, f"""
out = {{}}
for dtype in ("q8", "q4"):
    repo, lm, new = await generate(dtype, {prompt_ids!r})
    out[dtype] = {{"new": new, "dtype": lm.dtype, "discovered": repo.manifest.discovered,
                  "modules": repo.manifest.modules}}
tok = await AutoTokenizer.from_pretrained(MODEL, host=HOST)
out["ids"] = tok.encode({PROMPT!r})
json.dumps(out)
"""))
    assert res["ids"] == prompt_ids
    for dtype in ("q8", "q4"):
        assert res[dtype]["discovered"] == "probe" and res[dtype]["modules"] == {"model": ["fp32", "q8", "q4"]}
        assert res[dtype]["dtype"] == dtype
        assert res[dtype]["new"] == greedy(foreign_repo / FILES[dtype], prompt_ids, N_NEW, eos), dtype
    downloaded = {u[len(foreign_page.repo_url):] for u in foreign_page.requests if u.startswith(foreign_page.repo_url)}
    assert "onnx/model.onnx" in downloaded  # probed (a one-byte range request), never downloaded whole
    assert "onnx/model.onnx_data" in downloaded


@pytest.mark.browser
def test_browser_damaged_cached_file_is_caught_on_a_later_read(foreign_page, foreign_repo, prompt_ids, eos):
    path = FILES["q4"]
    res = json.loads(run_py(foreign_page, f"""
repo, lm, first = await generate("q4", {prompt_ids!r})
store, _ = await open_cache()
url = repo.url({path!r})
meta = [m for m in await store.entries() if m.get("url") == url][0]
recorded = meta["sha256"]
good = await store.get(url)
bad = bytearray(good.to_bytes())
bad[len(bad) // 2] ^= 0xFF
await store.put(url, bytes(bad), {{k: v for k, v in meta.items() if k not in ("url", "size")}})
events = []
repo, lm, new = await generate("q4", {prompt_ids!r}, progress_callback=events.append)
json.dumps({{"first": first, "new": new, "recorded": recorded, "trusted": repo.manifest.entry({path!r})["sha256"],
            "warnings": [e["message"] for e in events if e["status"] == "warning"],
            "sha": await sha256_hex(await store.get(url))}})
"""))
    want = sha256(foreign_repo / path)
    assert res["recorded"] == want and res["trusted"] == want and res["sha"] == want
    assert any("corrupted" in w and "sha256" in w and path in w for w in res["warnings"])
    ref = greedy(foreign_repo / path, prompt_ids, N_NEW, eos)
    assert res["first"] == ref and res["new"] == ref
    full = [u for u in foreign_page.requests if u == foreign_page.repo_url + path]
    assert len(full) == 4  # probe + first download, probe + download after the eviction


@pytest.mark.browser
def test_browser_warm_start_from_the_first_download(browser, server, foreign_repo, prompt_ids, eos):
    """The sessions of a repo without a manifest are named by the sha256 their first download recorded,
    so the next page warm-starts them."""
    server.add_root(f"/models/{MODEL}/", foreign_repo)
    context = browser.new_context()
    try:
        results = []
        for _ in range(2):
            page = context.new_page()
            page.goto(server.url + "/site.json")
            boot = page.evaluate("""async (warm) => {
                const { WebformersClient } = await import("/wf-client.js");
                window.wf = new WebformersClient({ warmStart: warm });
                return await window.wf.ready; }""", MODEL)
            res = page.evaluate("code => window.wf.runPython(code)", f"""
from webformers import AutoModelForCausalLM
m = await AutoModelForCausalLM.from_pretrained({MODEL!r}, dtype="q4", device="wasm")
out = await m.generate({prompt_ids!r}, max_new_tokens={N_NEW}, do_sample=False)
r = {{"new": [int(x) for x in out[0, {len(prompt_ids)}:]], "timings": dict(m.load_timings)}}
m.dispose()
r
""")
            results.append((boot, res))
            page.close()
    finally:
        context.close()
    (boot1, first), (boot2, again) = results
    assert boot1["warm_start_modules"] == 0 and "warm_started" not in first["timings"]
    assert boot2["warm_start_modules"] == 1 and again["timings"].get("warm_started") == ["model"], again
    assert first["new"] == again["new"] == greedy(foreign_repo / FILES["q4"], prompt_ids, N_NEW, eos)
