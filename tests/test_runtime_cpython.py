"""The model store and session loading on CPython: selection, errors, fallback, auto, cache integrity,
HTML-with-200, retries, shared downloads, quota, offline, management API.

Model files are served by a local ``http.server`` in a thread that logs every request, so tests can
count downloads. The cache directory is a fresh tmp dir per test (``WEBFORMERS_CACHE``).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pysrc"))
sys.path.insert(0, str(ROOT / "tests"))

from make_fixture_repo import make_repo, reference  # noqa: E402
from helpers import run_async
from webformers import store as hub
from webformers.runtime import load as loading# noqa: E402
from webformers.dtypes import DTYPES, onnx_file  # noqa: E402
from webformers.platform import DirStore, QuotaError  # noqa: E402
from webformers.store.fetch import in_flight  # noqa: E402
from webformers.store import IntegrityError, ModelRepo  # noqa: E402
from webformers.runtime.load import load_sessions  # noqa: E402
from webformers.runtime.onnx_info import onnx_output_names  # noqa: E402
from webformers.runtime.plan import quality_key, select_dtypes  # noqa: E402

MODEL = "test-org/tiny2"
NO_F16 = {"webgpu": True, "features": ["timestamp-query"], "isFallbackAdapter": True}
WITH_F16 = {"webgpu": True, "features": ["shader-f16"]}
NO_GPU = {"webgpu": False, "features": []}


def run(coro):
    return run_async(coro)  # not asyncio.run: a Playwright fixture may own this thread's loop


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("repo") / "tiny2")


@pytest.fixture(scope="module")
def small_repo_dir(tmp_path_factory):
    """A repo with fewer variants (no report): encoder fp32+q4, decoder fp32+q8+q4f16."""
    d = tmp_path_factory.mktemp("small")
    enc = make_repo(d / "a", modules=["encoder_model"], dtypes=["fp32", "q4"], report=False)
    dec = make_repo(d / "b", modules=["decoder_model_merged"], dtypes=["fp32", "q8", "q4f16"], report=False)
    out = d / "small"
    shutil.copytree(enc, out)
    shutil.copytree(dec / "onnx", out / "onnx", dirs_exist_ok=True)
    from webformers.store.manifest import write_manifest
    write_manifest(out, ["encoder_model", "decoder_model_merged"])
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WEBFORMERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WEBFORMERS_HOST", raising=False)
    monkeypatch.setattr(loading, "ADAPTER_OVERRIDE", None)
    yield tmp_path / "cache"


class _Server:
    def __init__(self, roots: dict):
        self.roots = roots  # model name -> directory
        self.log: list[str] = []
        self.hooks = {}  # file path -> callable(handler, data) -> True when it answered
        self.delay = 0.0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                srv.log.append(self.path)
                path = self._resolve(self.path)
                if path is None or not path.is_file():
                    self._send(404, b"not found", "text/plain")
                    return
                data = path.read_bytes()
                rel = self._rel
                if srv.delay:
                    time.sleep(srv.delay)
                hook = srv.hooks.get(rel)
                if hook is not None and hook(self, data):
                    return
                self._send(200, data, "application/octet-stream")

            def _send(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _resolve(self, url_path):
                # /plain/<org>/<name>/<file>  or  /hf/<org>/<name>/resolve/<rev>/<file>
                parts = url_path.split("?")[0].lstrip("/").split("/")
                kind, model = parts[0], "/".join(parts[1:3])
                rest = parts[3:]
                if kind == "hf":
                    if len(rest) < 3 or rest[0] != "resolve":
                        return None
                    rest = rest[2:]
                root = srv.roots.get(model)
                if root is None:
                    return None
                self._rel = "/".join(rest)
                return Path(root) / self._rel

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def plain(self):
        return self.url + "/plain"

    def files(self) -> Counter:
        """How many times each repo file was requested."""
        c = Counter()
        for p in self.log:
            parts = p.split("?")[0].lstrip("/").split("/")
            rest = parts[3:]
            if parts[0] == "hf":
                rest = rest[2:]
            c["/".join(rest)] += 1
        return c

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(repo_dir, small_repo_dir):
    s = _Server({MODEL: repo_dir, "test-org/small": small_repo_dir})
    yield s
    s.stop()


def model_files(man, module, dtype):
    return man.variant(module, dtype)["files"]


# ---------------------------------------------------------------------------------------- selection

def test_device_auto_and_defaults(repo_dir):
    from webformers.store.manifest import Manifest
    man = Manifest.from_json((repo_dir / "onnx/manifest.json").read_text(), MODEL)
    p = select_dtypes(man, dtype={"encoder_model": "q4"}, device="auto", adapter=NO_GPU)
    # wasm: unnamed modules get q8 when the repo has it
    assert p.device == "wasm" and p.dtypes == {"encoder_model": "q4", "decoder_model_merged": "q8"}
    p = select_dtypes(man, dtype={"encoder_model": "q4"}, device="auto", adapter=NO_F16)
    assert p.device == "webgpu" and p.dtypes == {"encoder_model": "q4", "decoder_model_merged": "fp32"}
    p = select_dtypes(man, dtype=None, device="auto", adapter=NO_GPU)
    assert p.device == "wasm" and p.dtypes == {"encoder_model": "q8", "decoder_model_merged": "q8"}
    p = select_dtypes(man, dtype=None, device="auto", adapter=WITH_F16)
    assert p.device == "webgpu" and p.dtypes == {"encoder_model": "fp32", "decoder_model_merged": "fp32"}
    p = select_dtypes(man, dtype="q4", device="wasm", adapter=WITH_F16)
    assert p.device == "wasm" and set(p.dtypes.values()) == {"q4"}
    # webgpu asked for without an adapter: wasm + warning; strict raises
    p = select_dtypes(man, dtype="q4", device="webgpu", adapter=NO_GPU)
    assert p.device == "wasm" and any("no WebGPU adapter" in w for w in p.warnings)
    with pytest.raises(ValueError, match="no WebGPU adapter"):
        select_dtypes(man, dtype="q4", device="webgpu", adapter=NO_GPU, strict=True)


def test_default_without_q8_is_fp32(small_repo_dir):
    from webformers.store.manifest import Manifest
    man = Manifest.from_json((small_repo_dir / "onnx/manifest.json").read_text(), "small")
    p = select_dtypes(man, dtype={}, device="wasm", adapter=NO_GPU)
    assert p.dtypes == {"encoder_model": "fp32", "decoder_model_merged": "q8"}


def test_unknown_dtype_device_module_and_missing_variant(server):
    async def go():
        repo = await ModelRepo.open("test-org/small", host=server.plain)
        with pytest.raises(ValueError) as e:
            await load_sessions(repo, dtype="q5", adapter=NO_GPU)
        assert "'q5'" in str(e.value) and all(d in str(e.value) for d in DTYPES)
        with pytest.raises(ValueError) as e:
            await load_sessions(repo, dtype={"encoder_model": "fp64"}, adapter=NO_GPU)
        assert "'fp64'" in str(e.value) and "encoder_model" in str(e.value) and "q4f16" in str(e.value)
        with pytest.raises(ValueError) as e:
            await load_sessions(repo, dtype="q4", device="cuda", adapter=NO_GPU)
        assert "'cuda'" in str(e.value) and "webgpu" in str(e.value) and "wasm" in str(e.value)
        with pytest.raises(ValueError) as e:
            await load_sessions(repo, ["vision_encoder"], dtype="q4", adapter=NO_GPU)
        assert "'vision_encoder'" in str(e.value) and "decoder_model_merged" in str(e.value)
        with pytest.raises(ValueError) as e:
            await load_sessions(repo, dtype={"encoder_modell": "q4"}, adapter=NO_GPU)
        assert "'encoder_modell'" in str(e.value)
        with pytest.raises(ValueError) as e:  # missing variant: per-module list of what exists
            await load_sessions(repo, dtype="fp16", adapter=NO_GPU)
        msg = str(e.value)
        assert "'fp16'" in msg and "encoder_model: fp32, q4" in msg and "decoder_model_merged: fp32, q8, q4f16" in msg
        assert server.files()["onnx/encoder_model.onnx"] == 0  # nothing downloaded for a bad request
    run(go())


def test_fallback_without_shader_f16_and_strict(server, repo_dir):
    events = []

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain, progress_callback=events.append)
        loaded = await load_sessions(repo, dtype={"encoder_model": "fp16", "decoder_model_merged": "q4f16"},
                                     device="webgpu", adapter=NO_F16, progress_callback=events.append)
        assert loaded.dtypes == {"encoder_model": "fp32", "decoder_model_merged": "q4"}
        assert loaded.device == "webgpu"
        warn = [e["message"] for e in events if e["status"] == "warning"]
        assert any("encoder_model: fp16 replaced by fp32" in w and "shader-f16" in w for w in warn)
        assert any("decoder_model_merged: q4f16 replaced by q4" in w and "shader-f16" in w for w in warn)
        assert loaded.warnings == warn  # each event once, though the callback was given twice
        # the fallback files were loaded, not the fp16 ones
        got = server.files()
        assert got["onnx/encoder_model.onnx"] == 1 and got["onnx/decoder_model_merged_q4.onnx"] == 1
        assert got["onnx/encoder_model_fp16.onnx"] == 0 and got["onnx/decoder_model_merged_q4f16.onnx"] == 0
        # outputs are those of the fallback dtype
        ids = np.array([[3, 1, 4, 1, 5]], dtype=np.int64)
        out = await loaded["encoder_model"].run({"input_ids": ids})
        ref = reference(repo_dir, "encoder_model", "fp32", {"input_ids": ids})
        np.testing.assert_allclose(out["last_hidden_state"], ref["last_hidden_state"], atol=1e-6)
        with pytest.raises(ValueError, match="shader-f16.*strict=True"):
            await load_sessions(repo, dtype="q4f16", device="webgpu", adapter=NO_F16, strict=True)
        # an adapter with shader-f16 keeps fp16
        loaded = await load_sessions(repo, dtype="q4f16", device="webgpu", adapter=WITH_F16)
        assert loaded.dtypes == {"encoder_model": "q4f16", "decoder_model_merged": "q4f16"} and not loaded.warnings
        # wasm runs fp16 as is
        loaded = await load_sessions(repo, dtype="fp16", device="wasm", adapter=NO_F16)
        assert set(loaded.dtypes.values()) == {"fp16"} and not loaded.warnings
    run(go())


def test_q8_on_webgpu_warns(server):
    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        loaded = await load_sessions(repo, ["decoder_model_merged"], dtype="q8", device="webgpu", adapter=NO_F16)
        assert loaded.dtypes == {"decoder_model_merged": "q8"}
        assert len(loaded.warnings) == 1 and "run on the CPU" in loaded.warnings[0]
    run(go())


# ---------------------------------------------------------------------------------------------- auto

def _with_report(src: Path, dst: Path, report: dict | None) -> Path:
    shutil.copytree(src, dst)
    rp = dst / "quantization_report.json"
    if report is None:
        rp.unlink(missing_ok=True)
    else:
        rp.write_text(json.dumps(report))
    return dst


REPORT = {"modules": {
    "encoder_model": {"fp32": {"kl": 0.0, "top1": 1.0}, "fp16": {"kl": 0.002, "top1": 0.99},
                      "q8": {"kl": 0.02, "top1": 0.95}, "q4": {"kl": 0.05, "top1": 0.9},
                      "q4f16": {"kl": 0.06, "top1": 0.89}},
    "decoder_model_merged": {"fp32": {"kl": 0.0, "top1": 1.0}, "fp16": {"kl": 0.001, "top1": 0.995},
                             "q8": {"kl": 0.01, "top1": 0.97}, "q4": {"kl": 0.04, "top1": 0.92},
                             "q4f16": {"kl": 0.05, "top1": 0.91}}}}


def test_auto_with_budgets(repo_dir, tmp_path):
    from webformers.store.manifest import Manifest
    d = _with_report(repo_dir, tmp_path / "r", REPORT)
    man = Manifest.from_json((d / "onnx/manifest.json").read_text(), "r")
    b = {(m, dt): man.variant(m, dt)["bytes"] for m in man.modules for dt in man.modules[m]}
    enc, dec = "encoder_model", "decoder_model_merged"

    def sel(**kw):
        return select_dtypes(man, dtype="auto", report=REPORT, **kw)

    assert sel(device="wasm", adapter=NO_GPU).dtypes == {enc: "fp32", dec: "fp32"}
    full = b[enc, "fp32"] + b[dec, "fp32"]
    assert sel(device="wasm", adapter=NO_GPU, max_bytes=full).dtypes == {enc: "fp32", dec: "fp32"}
    # one byte less: the cheapest loss of quality is the decoder's fp16 (KL 0.001 < encoder fp16's 0.002)
    p = sel(device="wasm", adapter=NO_GPU, max_bytes=full - 1)
    assert p.dtypes == {enc: "fp32", dec: "fp16"} and p.bytes == b[enc, "fp32"] + b[dec, "fp16"] < full
    # room for fp16 + fp16 only
    p = sel(device="wasm", adapter=NO_GPU, max_bytes=b[enc, "fp16"] + b[dec, "fp16"])
    assert p.dtypes == {enc: "fp16", dec: "fp16"}
    # WebGPU without shader-f16: fp16 and q8 (CPU matmuls) are not candidates
    p = sel(device="webgpu", adapter=NO_F16, max_bytes=b[enc, "fp32"] + b[dec, "fp32"] - 1)
    assert p.dtypes[enc] in ("fp32", "q4") and p.dtypes[dec] in ("fp32", "q4") and "fp32" in p.dtypes.values()
    assert p.dtypes == {enc: "fp32", dec: "q4"}  # dec q4 (KL 0.04) beats enc q4 (0.05)
    # smallest possible
    smallest = min(b[enc, x] for x in man.modules[enc]) + min(b[dec, x] for x in man.modules[dec])
    p = sel(device="wasm", adapter=NO_GPU, max_bytes=smallest)
    assert p.bytes == smallest
    with pytest.raises(ValueError, match=f"no dtype choice fits max_bytes={smallest - 1}.*smallest is {smallest}"):
        sel(device="wasm", adapter=NO_GPU, max_bytes=smallest - 1)
    # explicit module + auto for the rest, within one budget
    p = select_dtypes(man, dtype={enc: "q4", dec: "auto"}, report=REPORT, device="wasm", adapter=NO_GPU,
                      max_bytes=b[enc, "q4"] + b[dec, "fp16"])
    assert p.dtypes == {enc: "q4", dec: "fp16"}
    with pytest.raises(ValueError, match="max_bytes"):
        select_dtypes(man, dtype={enc: "fp32", dec: "auto"}, report=REPORT, device="wasm", adapter=NO_GPU,
                      max_bytes=b[enc, "fp32"] - 1)


def test_auto_follows_the_report_not_bits(repo_dir, tmp_path, server):
    # a report in which q4 measured better than everything: auto must take it
    rep = json.loads(json.dumps(REPORT))
    rep["modules"]["encoder_model"]["q4"] = {"kl": 0.0, "top1": 1.0}
    rep["modules"]["encoder_model"]["fp32"] = {"kl": 1e-4, "top1": 1.0}
    server.roots["test-org/rep"] = _with_report(repo_dir, tmp_path / "rep", rep)
    server.roots["test-org/norep"] = _with_report(repo_dir, tmp_path / "norep", None)

    async def go():
        repo = await ModelRepo.open("test-org/rep", host=server.plain)
        loaded = await load_sessions(repo, dtype="auto", device="wasm", adapter=NO_GPU)
        assert loaded.dtypes == {"encoder_model": "q4", "decoder_model_merged": "fp32"}
        # no report: by bits (fp32 first); with a budget, the next-most bits that fit
        repo = await ModelRepo.open("test-org/norep", host=server.plain)
        loaded = await load_sessions(repo, dtype="auto", device="wasm", adapter=NO_GPU)
        assert loaded.dtypes == {"encoder_model": "fp32", "decoder_model_merged": "fp32"}
        man = repo.manifest

        def size(c):
            return sum(man.variant(m, d)["bytes"] for m, d in c.items())
        # one module must drop to fp16 (16 bits): both choices rank equal by bits, the smaller download wins
        a = {"encoder_model": "fp16", "decoder_model_merged": "fp32"}
        b = {"encoder_model": "fp32", "decoder_model_merged": "fp16"}
        budget = max(size(a), size(b))
        assert budget < size({"encoder_model": "fp32", "decoder_model_merged": "fp32"})
        loaded = await load_sessions(repo, dtype="auto", device="wasm", adapter=NO_GPU, max_bytes=budget)
        assert loaded.dtypes == min(a, b, key=size)
    run(go())


# ------------------------------------------------------------------------------------- files + cache

def test_mapping_loads_exactly_the_expected_files_and_outputs_match(server, repo_dir):
    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        loaded = await load_sessions(repo, dtype={"encoder_model": "q4", "decoder_model_merged": "fp32"},
                                     device="wasm", adapter=NO_GPU)
        expected = set(model_files(repo.manifest, "encoder_model", "q4")) | set(
            model_files(repo.manifest, "decoder_model_merged", "fp32"))
        assert "onnx/decoder_model_merged.onnx_data" in expected  # external data is part of the variant
        got = server.files()
        onnx_requested = {f for f in got if f.startswith("onnx/") and f != "onnx/manifest.json"}
        assert onnx_requested == expected and all(got[f] == 1 for f in expected)
        assert set(loaded.files) == expected
        feeds = {"encoder_hidden_states": np.tanh(np.random.default_rng(1).standard_normal((1, 4, 64))).astype(np.float32)}
        out = await loaded["decoder_model_merged"].run(feeds)
        ref = reference(repo_dir, "decoder_model_merged", "fp32", feeds)
        for k in ("logits", "present.0.key"):
            np.testing.assert_allclose(out[k], ref[k], atol=1e-5)
        ids = np.array([[7, 8, 9]], dtype=np.int64)
        out = await loaded["encoder_model"].run({"input_ids": ids})
        np.testing.assert_allclose(out["last_hidden_state"],
                                   reference(repo_dir, "encoder_model", "q4", {"input_ids": ids})["last_hidden_state"],
                                   atol=1e-5)
        # second load: everything from the cache
        server.log.clear()
        events = []

        async def on_event(e):  # async callbacks are awaited
            await asyncio.sleep(0)
            events.append(e)
        repo = await ModelRepo.open(MODEL, host=server.plain)
        await load_sessions(repo, dtype={"encoder_model": "q4", "decoder_model_merged": "fp32"}, device="wasm",
                            adapter=NO_GPU, progress_callback=on_event)
        assert [f for f in server.files() if f.startswith("onnx/") and f != "onnx/manifest.json"] == []
        done = [e for e in events if e["status"] == "done"]
        assert len(done) == 3 and all(e["cached"] for e in done)
        ready = [e for e in events if e["status"] == "ready"]
        assert ready and ready[0]["overall"]["loaded"] == ready[0]["overall"]["total"] == loaded.bytes
    run(go())


def test_url_template_and_revision_in_cache_key(server):
    async def go():
        tpl = server.url + "/hf/{model}/resolve/{revision}/{file}"
        repo = await ModelRepo.open(MODEL, host=tpl, revision="v1")
        assert repo.url("config.json") == f"{server.url}/hf/{MODEL}/resolve/v1/config.json"
        cfg = await repo.json("config.json")
        assert cfg["model_type"] == "webformers-fixture"
        await load_sessions(repo, ["encoder_model"], dtype="q4", device="wasm", adapter=NO_GPU)
        assert any("/resolve/v1/onnx/encoder_model_q4.onnx" in p for p in server.log)
        # another revision is another cache key: downloaded again
        n = server.files()["onnx/encoder_model_q4.onnx"]
        repo2 = await ModelRepo.open(MODEL, host=tpl, revision="v2")
        await load_sessions(repo2, ["encoder_model"], dtype="q4", device="wasm", adapter=NO_GPU)
        assert server.files()["onnx/encoder_model_q4.onnx"] == n + 1
        models = {(m["model"], m["revision"]) for m in await hub.cached_models()}
        assert {(MODEL, "v1"), (MODEL, "v2")} <= models
        with pytest.raises(ValueError, match="unknown placeholder"):
            hub.resolve_url(server.url + "/{org}/{file}", MODEL, "main", "config.json")
    run(go())


def test_corrupted_cache_entry_is_evicted_and_refetched(server, repo_dir, _cache):
    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        await load_sessions(repo, ["encoder_model"], dtype="q4", device="wasm", adapter=NO_GPU)
        url = repo.url("onnx/encoder_model_q4.onnx")
        data_p, _ = DirStore(_cache).paths(url)
        good = data_p.read_bytes()
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF  # same size, different sha256
        data_p.write_bytes(bytes(bad))
        events = []
        repo = await ModelRepo.open(MODEL, host=server.plain)
        loaded = await load_sessions(repo, ["encoder_model"], dtype="q4", device="wasm", adapter=NO_GPU,
                                     progress_callback=events.append)
        assert server.files()["onnx/encoder_model_q4.onnx"] == 2
        assert any(e["status"] == "warning" and "corrupted" in e["message"] and "sha256" in e["message"]
                   for e in events)
        assert data_p.read_bytes() == good  # re-cached, correct
        ids = np.array([[1, 2]], dtype=np.int64)
        out = await loaded["encoder_model"].run({"input_ids": ids})
        np.testing.assert_allclose(out["last_hidden_state"], reference(repo_dir, "encoder_model", "q4",
                                   {"input_ids": ids})["last_hidden_state"], atol=1e-5)
        # a truncated cache file too
        data_p.write_bytes(good[:100])
        repo = await ModelRepo.open(MODEL, host=server.plain)
        await repo.file("onnx/encoder_model_q4.onnx")
        assert server.files()["onnx/encoder_model_q4.onnx"] == 3 and data_p.read_bytes() == good
    run(go())


def test_html_with_200_is_a_clear_error_and_not_cached(server, _cache):
    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"

    def html(handler, data):
        handler._send(200, page, "text/html; charset=utf-8")
        return True
    server.hooks["onnx/encoder_model_q4.onnx"] = html

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        with pytest.raises(IntegrityError) as e:
            await load_sessions(repo, ["encoder_model"], dtype="q4", device="wasm", adapter=NO_GPU)
        msg = str(e.value)
        assert "onnx/encoder_model_q4.onnx" in msg and "HTML" in msg and "not cached" in msg
        assert server.files()["onnx/encoder_model_q4.onnx"] == 1  # a complete wrong body is not retried
        assert not (await DirStore(_cache).get(repo.url("onnx/encoder_model_q4.onnx")))
        # an HTML page for the manifest: a clear error too
        server.hooks["onnx/manifest.json"] = html
        with pytest.raises(ValueError, match="HTML page"):
            await ModelRepo.open("test-org/small", host=server.plain)
    run(go())


def test_concurrent_loads_share_one_download(server):
    server.delay = 0.3

    async def go():
        r1 = await ModelRepo.open(MODEL, host=server.plain, use_cache=False)
        r2 = await ModelRepo.open(MODEL, host=server.plain, use_cache=False)
        server.log.clear()
        a, b = await asyncio.gather(
            load_sessions(r1, dtype="q4", device="wasm", adapter=NO_GPU),
            load_sessions(r2, dtype="q4", device="wasm", adapter=NO_GPU))
        got = server.files()
        for m in ("encoder_model", "decoder_model_merged"):
            assert got[onnx_file(m, "q4")] == 1
        assert a.dtypes == b.dtypes
        # nothing was cached with use_cache=False
        assert await hub.cached_models() == []
    run(go())


def test_download_broken_midway_is_retried_and_nothing_partial_cached(server, _cache):
    state = {"n": 0}

    def break_first(handler, data):
        state["n"] += 1
        if state["n"] > 1:
            return False
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 3])
        handler.wfile.flush()
        handler.close_connection = True
        import socket
        handler.connection.shutdown(socket.SHUT_RDWR)
        return True
    server.hooks["onnx/decoder_model_merged.onnx_data"] = break_first
    events = []

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        loaded = await load_sessions(repo, ["decoder_model_merged"], dtype="fp32", device="wasm", adapter=NO_GPU,
                                     progress_callback=events.append)
        assert server.files()["onnx/decoder_model_merged.onnx_data"] == 2
        assert any(e["status"] == "warning" and "retrying" in e["message"] for e in events)
        data = await DirStore(_cache).get(repo.url("onnx/decoder_model_merged.onnx_data"))
        assert hashlib.sha256(data).hexdigest() == repo.manifest.entry("onnx/decoder_model_merged.onnx_data")["sha256"]
        assert loaded.dtypes == {"decoder_model_merged": "fp32"}
        # a file that always breaks: bounded retries, clear error, nothing cached
        state["n"] = -100
        server.hooks["onnx/encoder_model_q4.onnx"] = break_first
        with pytest.raises(ConnectionError, match=f"failed {hub.RETRIES} times"):
            await repo.file("onnx/encoder_model_q4.onnx")
        assert server.files()["onnx/encoder_model_q4.onnx"] == hub.RETRIES
        assert await DirStore(_cache).get(repo.url("onnx/encoder_model_q4.onnx")) is None
        # 404: not retried
        (Path(server.roots[MODEL]) / "onnx").exists()
        with pytest.raises(FileNotFoundError, match="HTTP 404"):
            await ModelRepo.open("test-org/nonexistent", host=server.plain)
    run(go())


def test_quota_error_warns_and_continues_uncached(server, monkeypatch, repo_dir):
    async def full(self, url, data, meta):
        raise QuotaError("QuotaExceededError: the quota has been exceeded")
    monkeypatch.setattr(DirStore, "put", full)
    events = []

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        loaded = await load_sessions(repo, ["encoder_model"], dtype="fp32", device="wasm", adapter=NO_GPU,
                                     progress_callback=events.append)
        warn = [e for e in events if e["status"] == "warning"]
        assert any("QuotaExceededError" in e["message"] and e.get("file") == "onnx/encoder_model.onnx" for e in warn)
        assert any("QuotaExceededError" in w for w in loaded.warnings)
        ids = np.array([[5]], dtype=np.int64)
        out = await loaded["encoder_model"].run({"input_ids": ids})
        np.testing.assert_allclose(out["last_hidden_state"], reference(repo_dir, "encoder_model", "fp32",
                                   {"input_ids": ids})["last_hidden_state"], atol=1e-6)
        assert await hub.cached_models() == []
    run(go())


def test_offline_after_first_load(server):
    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        await load_sessions(repo, dtype="auto", device="wasm", adapter=NO_GPU)
        server.stop()
        events = []
        repo = await ModelRepo.open(MODEL, host=server.plain, progress_callback=events.append)
        assert any("using the cached copy" in e["message"] for e in events if e["status"] == "warning")
        loaded = await load_sessions(repo, dtype="auto", device="wasm", adapter=NO_GPU)
        assert loaded.dtypes == {"encoder_model": "fp32", "decoder_model_merged": "fp32"}
        # no cache at all and offline: a clear error
        with pytest.raises(ConnectionError, match="no cached copy"):
            await ModelRepo.open(MODEL, host=server.plain, use_cache=False)
    try:
        run(go())
    finally:
        server.stop = lambda: None


def test_management_api(server, _cache):
    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        await load_sessions(repo, dtype="q4", device="wasm", adapter=NO_GPU)
        await load_sessions(repo, dtype="fp32", device="wasm", adapter=NO_GPU)
        man = repo.manifest
        (entry,) = await hub.cached_models()
        assert entry["model"] == MODEL and entry["revision"] == "main"
        variants = {(v["module"], v["dtype"]): v["bytes"] for v in entry["variants"]}
        expect = {(m, d): man.variant(m, d)["bytes"] for m in man.modules for d in ("q4", "fp32")}
        assert variants == expect
        assert entry["bytes"] == sum(expect.values()) + entry["other_bytes"] and entry["other_bytes"] > 0
        est = await hub.storage_estimate()
        assert est["usage"] >= entry["bytes"] and est["quota"] > est["usage"] and est["persisted"] is True
        freed = await hub.delete_cached(MODEL, dtype="q4", module="encoder_model")
        assert freed == man.variant("encoder_model", "q4")["bytes"]
        freed = await hub.delete_cached(MODEL, dtype="q4")
        assert freed == man.variant("decoder_model_merged", "q4")["bytes"]
        (entry,) = await hub.cached_models()
        assert {(v["module"], v["dtype"]) for v in entry["variants"]} == {
            ("encoder_model", "fp32"), ("decoder_model_merged", "fp32")}
        with pytest.raises(ValueError, match="unknown dtype 'q3'"):
            await hub.delete_cached(MODEL, dtype="q3")
        assert await hub.delete_cached(MODEL, revision="other") == 0
        freed = await hub.delete_cached(MODEL)
        assert freed == entry["bytes"] and await hub.cached_models() == []
        assert await hub.request_persistence() is True
    run(go())


def test_keep_on_device_defaults_to_present_outputs_under_webgpu(server, monkeypatch):
    calls = []
    real = loading.backend.create_session

    async def spy(model, **kw):
        calls.append(kw)
        return await real(model, **kw)
    monkeypatch.setattr(loading.backend, "create_session", spy)

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        await load_sessions(repo, dtype="q4", device="webgpu", adapter=NO_F16)
        keeps = sorted(c["keep_on_device"] for c in calls)
        assert keeps == [[], ["present.0.key"]] and {c["device"] for c in calls} == {"webgpu"}
        calls.clear()
        await load_sessions(repo, dtype="q4", device="wasm", adapter=NO_F16)
        assert all(c["keep_on_device"] == [] for c in calls)
        calls.clear()
        await load_sessions(repo, dtype="q4", device="webgpu", adapter=NO_F16,
                            keep_on_device={"decoder_model_merged": ["logits"]})
        assert sorted(c["keep_on_device"] for c in calls) == [[], ["logits"]]
        with pytest.raises(ValueError, match="not being loaded"):
            await load_sessions(repo, ["encoder_model"], dtype="q4", keep_on_device={"decoder_model_merged": []},
                                adapter=NO_F16)
        # loading.ADAPTER_OVERRIDE stands in for backend.adapter_info()
        monkeypatch.setattr(loading, "ADAPTER_OVERRIDE", WITH_F16)
        loaded = await load_sessions(repo, dtype="q4f16")
        assert loaded.device == "webgpu" and set(loaded.dtypes.values()) == {"q4f16"}
    run(go())


def test_onnx_output_names(repo_dir):
    import onnx
    for m in ("encoder_model", "decoder_model_merged"):
        for d in ("fp32", "q4", "q8", "q4f16"):
            data = (repo_dir / onnx_file(m, d)).read_bytes()
            want = [o.name for o in onnx.ModelProto.FromString(data).graph.output]
            assert want and onnx_output_names(data) == want
    with pytest.raises(ValueError):
        onnx_output_names(b"\x0a\x03abc")


def test_local_directory_repo(repo_dir, tmp_path):
    async def go():
        repo = await ModelRepo.open(str(repo_dir))
        loaded = await load_sessions(repo, ["encoder_model"], dtype="q8", device="wasm", adapter=NO_GPU)
        assert loaded.dtypes == {"encoder_model": "q8"}
        bad = shutil.copytree(repo_dir, tmp_path / "bad")
        p = bad / onnx_file("encoder_model", "q8")
        p.write_bytes(p.read_bytes()[:-1] + b"\x00")
        repo = await ModelRepo.open(str(bad))
        with pytest.raises(IntegrityError, match=onnx_file("encoder_model", "q8")):
            await load_sessions(repo, ["encoder_model"], dtype="q8", device="wasm", adapter=NO_GPU)
        with pytest.raises(ValueError, match="no host"):
            await ModelRepo.open("org/not-a-dir")
    run(go())


def test_cancelled_download_does_not_cancel_the_joined_request(server):
    server.delay = 0.4

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain, use_cache=False)
        path = onnx_file("encoder_model", "q4")
        first = asyncio.create_task(repo.file(path))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(repo.file(path))  # joins the first download
        await asyncio.sleep(0.05)
        first.cancel()
        data = await second
        assert first.cancelled()
        assert hashlib.sha256(data).hexdigest() == repo.manifest.entry(path)["sha256"]
        assert server.files()[path] == 2  # the second one had to download it itself
        assert not in_flight()
    run(go())


def test_auto_ranks_by_wer_when_the_report_measures_wer_not_kl(repo_dir):
    """Whisper's quantization_report.json carries per-module {"wer", "bytes"} and no KL: auto ranks by WER
    (lower is better, equal WERs by the smaller file); entries with a KL still rank by KL."""
    from webformers.store.manifest import Manifest
    man = Manifest.from_json((repo_dir / "onnx/manifest.json").read_text(), "r")
    b = {(m, dt): man.variant(m, dt)["bytes"] for m in man.modules for dt in man.modules[m]}
    enc, dec = "encoder_model", "decoder_model_merged"
    wer = {"modules": {
        enc: {"fp32": {"wer": 0.14, "bytes": b[enc, "fp32"]}, "fp16": {"wer": 0.14, "bytes": b[enc, "fp16"]},
              "q8": {"wer": 0.13, "bytes": b[enc, "q8"]}, "q4": {"wer": 0.12, "bytes": b[enc, "q4"]},
              "q4f16": {"wer": 0.5, "bytes": b[enc, "q4f16"]}},
        dec: {"fp32": {"wer": 0.15, "bytes": b[dec, "fp32"]}, "fp16": {"wer": 0.15, "bytes": b[dec, "fp16"]},
              "q8": {"wer": 0.2, "bytes": b[dec, "q8"]}, "q4": {"wer": 0.3, "bytes": b[dec, "q4"]},
              "q4f16": {"wer": None, "bytes": b[dec, "q4f16"]}}}}

    def sel(report, **kw):
        return select_dtypes(man, dtype="auto", report=report, device="wasm", adapter=NO_GPU, **kw).dtypes

    # by bits this would be fp32 + fp32: the encoder's lowest WER is q4; the decoder's fp32/fp16 tie -> fp16
    assert b[dec, "fp16"] < b[dec, "fp32"]
    assert sel(wer) == {enc: "q4", dec: "fp16"}
    assert sel(None) == {enc: "fp32", dec: "fp32"}
    # within a budget: the pair with the lowest summed WER that fits
    budget = b[enc, "q4"] + b[dec, "q8"]
    assert b[enc, "q4"] + b[dec, "fp16"] > budget and b[enc, "fp16"] + b[dec, "q8"] <= budget
    assert sel(wer, max_bytes=budget) == {enc: "q4", dec: "q8"}  # 0.12 + 0.20 beats fp16 + q8 (0.34)
    # the unmeasured q4f16 (wer None) ranks after every measured decoder dtype
    keys = {d: quality_key(wer, dec, d) for d in man.modules[dec]}
    assert keys["q4f16"] > max(k for d, k in keys.items() if d != "q4f16")
    # KL, when present, still decides (the WER next to it is ignored)
    both = json.loads(json.dumps(wer))
    for d, r in both["modules"][enc].items():
        r["kl"] = {"fp32": 0.0, "fp16": 0.001, "q8": 0.01, "q4": 0.05, "q4f16": 0.06}[d]
    assert sel(both)[enc] == "fp32"


def test_bad_dtype_is_rejected_before_any_request(server):
    """The dtype argument is checked once, before the report (or anything else) is fetched; a checked
    request passes through the layers below as is."""
    from webformers.runtime.plan import DtypeRequest, check_dtype_arg

    async def go():
        repo = await ModelRepo.open(MODEL, host=server.plain)
        server.log.clear()
        for bad in ({"encoder_model": "fp64"}, {"encoder_model": "q4", "decoder_model_merged": 3}):
            with pytest.raises(ValueError, match="unknown dtype"):
                await load_sessions(repo, dtype=bad, adapter=NO_GPU)
        assert server.log == []  # not even quantization_report.json
        req = check_dtype_arg({"encoder_model": "q4"})
        assert isinstance(req, DtypeRequest) and check_dtype_arg(req) is req
        assert req.as_arg() == {"encoder_model": "q4"} and req.may_be_auto
        assert check_dtype_arg(None).as_arg() == {} and check_dtype_arg("q4").as_arg() == "q4"
        assert not check_dtype_arg("q4").may_be_auto and check_dtype_arg("auto").may_be_auto
        loaded = await load_sessions(repo, dtype=req, device="wasm", adapter=NO_GPU)
        assert loaded.dtypes == {"encoder_model": "q4", "decoder_model_merged": "q8"}
    run(go())


def test_dtype_facts_live_in_the_registry():
    """Per-device defaults, native support, capability fallbacks and CPU matmuls under WebGPU come from
    webformers.dtypes."""
    from webformers.dtypes import CPU_MATMUL_ON_WEBGPU, DEFAULT_DEVICE_DTYPES, default_dtype, device_support

    assert dict(DEFAULT_DEVICE_DTYPES) == {"wasm": ("q8", "fp32"), "webgpu": ("fp32",)}
    with pytest.raises(TypeError):
        DEFAULT_DEVICE_DTYPES["wasm"] = ("q4",)  # frozen
    assert default_dtype("wasm", ["fp32", "q8", "q4"]) == "q8" and default_dtype("wasm", ["fp32", "q4"]) == "fp32"
    assert default_dtype("webgpu", ["fp32", "q8"]) == "fp32" and default_dtype("wasm", ["q4"]) == "auto"
    no_f16, f16 = NO_F16["features"], WITH_F16["features"]
    for d, fallback in (("fp16", "fp32"), ("q4f16", "q4"), ("q2f16", "q2"), ("q1f16", "q1")):
        s = device_support(d, "webgpu", no_f16)
        assert not s.native and s.missing == {"shader-f16"} and s.fallback == fallback and not s.cpu_matmuls
        assert device_support(d, "webgpu", f16).native and device_support(d, "wasm").native
    for d in ("q8", "int8", "uint8"):
        s = device_support(d, "webgpu", f16)
        assert d in CPU_MATMUL_ON_WEBGPU and s.cpu_matmuls and not s.native and not s.missing
        assert device_support(d, "wasm").native
    for d in ("fp32", "q4", "bnb4", "q2", "q1"):
        assert device_support(d, "webgpu", no_f16).native
    with pytest.raises(ValueError, match="device must be one of webgpu, wasm"):
        device_support("q4", "auto")
    with pytest.raises(ValueError, match="unknown dtype 'q3'"):
        device_support("q3", "wasm")
