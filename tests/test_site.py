"""``webformers site`` / ``webformers serve``: a static site of the user's models and Python app.

The site is built with the CLI from the fixture app (tests/site_app/app.py: a text box and a button) and
two of the demo's model repos (the tiny model's q4 + fp32, SmolLM2's q4). Served with COOP/COEP, the page
boots Pyodide on its main thread, runs the app, and the app generates the tokens CPython onnxruntime's
greedy gives on the same files, with no request leaving the origin. A rebuild with unchanged inputs
writes nothing; bad arguments fail naming the valid choices.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, SITE, PageSession, origin_violations

TINY = "webformers/tiny-random-llama"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
APP = Path(__file__).resolve().parent / "site_app" / "app.py"
N_NEW = 8
READY_TIMEOUT_MS = 180_000


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cli(*args, timeout=900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "pysrc"))
    return subprocess.run([sys.executable, "-m", "webformers", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory, site_dir):
    out = tmp_path_factory.mktemp("wf-site") / "site"
    proc = _cli("site", out, "--model", f"{site_dir / 'models' / TINY}:q4,fp32",
                "--model", f"{site_dir / 'models' / SMOL}:q4", "--app", APP)
    assert proc.returncode == 0, proc.stderr
    assert f"webformers serve {out}" in proc.stdout
    return out


@pytest.fixture(scope="module")
def site_server(built_site):
    from webformers.site.server import SiteServer

    s = SiteServer(built_site).start()
    yield s
    s.stop()


def _open(browser, server, query: str) -> PageSession:
    s = PageSession(browser, server, path="/index.html?" + query, boot=False)
    s.page.wait_for_function("window.webformersSite && (window.webformersSite.error || window.webformersSite.site)",
                             timeout=READY_TIMEOUT_MS)
    s.page.wait_for_function("window.webformersSite.ready.then(() => true, () => true)", timeout=READY_TIMEOUT_MS)
    return s


def _prompt_ids(repo: Path, text: str) -> list[int]:
    from webformers.text.tokenizer import Tokenizer

    cfg = repo / "tokenizer_config.json"
    tok = Tokenizer.from_json((repo / "tokenizer.json").read_text(),
                              json.loads(cfg.read_text()) if cfg.exists() else {})
    return [int(t) for t in tok.encode(text)]


def test_site_serves_the_chosen_dtypes_with_consistent_manifest_and_report(built_site, site_dir):
    site = json.loads((built_site / "site.json").read_text())
    assert site["models"] == [TINY, SMOL] and site["app"] == "app.py"
    assert (built_site / "app.py").read_bytes() == APP.read_bytes()
    # Pyodide's core files as site.json records them, and each wheel as its sha256 says
    assert set(site["pyodide_core_sha256"]) == {"pyodide.mjs", *site["pyodide_core"]}
    for f, sha in site["pyodide_core_sha256"].items():
        assert _sha(built_site / "pyodide" / f) == sha, f
    lock = json.loads((built_site / "pyodide" / "pyodide-lock.json").read_text())
    assert lock["info"]["version"] == site["pyodide_version"] == "0.27.7"
    for name, file in site["pyodide_files"].items():
        assert _sha(built_site / "pyodide" / file) == lock["packages"][name]["sha256"], file
    assert [w["import"] for w in site["wheels"]] == ["markupsafe", "jinja2", "webformers"]
    for w in site["wheels"]:
        assert _sha(built_site / "wheels" / w["file"]) == w["sha256"], w["file"]
    for f in site["ort_files"]:
        assert (built_site / "webformers" / "ort" / f).is_file(), f
    for js_file in (ROOT / "pysrc" / "webformers" / "assets").glob("*.js"):
        assert (built_site / "webformers" / js_file.name).read_bytes() == js_file.read_bytes()

    for mid, dtypes in ((TINY, {"q4", "fp32"}), (SMOL, {"q4"})):
        src, dst = site_dir / "models" / mid, built_site / "models" / mid
        man = json.loads((dst / "onnx" / "manifest.json").read_text())
        assert set(man["modules"]["model"]) == dtypes, mid
        served_onnx = {p.relative_to(dst).as_posix() for p in (dst / "onnx").glob("*.onnx")}
        assert served_onnx == {f for d in dtypes for f in man["modules"]["model"][d]["files"]}, mid
        assert {e.get("dtype") for e in man["files"].values()} - {None} == dtypes
        src_man = json.loads((src / "onnx" / "manifest.json").read_text())
        for rel, entry in man["files"].items():
            assert entry == src_man["files"][rel] and _sha(dst / rel) == entry["sha256"], rel
        report = json.loads((dst / "quantization_report.json").read_text())
        assert set(report["modules"]["model"]) == dtypes, mid
        assert not (dst / "quantization_chart.png").exists()  # the chart shows every dtype
    index = json.loads((built_site / "models" / "index.json").read_text())
    assert [(m["id"], set(m["modules"]["model"])) for m in index["models"]] == [(TINY, {"q4", "fp32"}), (SMOL, {"q4"})]


@pytest.mark.parametrize("model,dtype", [(TINY, "q4"), (SMOL, "q4")])
def test_served_site_boots_and_the_app_generates_like_onnxruntime(browser, site_server, site_dir, model, dtype):
    from webformers.toolchain import reference_greedy

    repo = site_dir / "models" / model
    s = _open(browser, site_server, f"model={model}&dtype={dtype}&n={N_NEW}")
    try:
        err = s.page.evaluate("window.webformersSite.error")
        assert err is None, f"{err}\n" + "\n".join(s.console[-20:])
        assert s.page.evaluate("window.crossOriginIsolated")
        s.page.fill("#prompt", "Once upon a time")
        s.page.click("#go")
        s.page.wait_for_function("document.getElementById('tokens').textContent", timeout=600_000)
        got = json.loads(s.page.text_content("#tokens"))
        assert "error" not in got, got
        prompt = _prompt_ids(repo, "Once upon a time")
        assert got["prompt"] == prompt
        ref = [int(t) for t in reference_greedy(repo, dtype, prompt, N_NEW)][-N_NEW:]
        assert got["new"] == ref
        assert s.page.text_content("#out").strip()
        assert not origin_violations(s), origin_violations(s)
        # everything came from the site: Pyodide, its wheels, onnxruntime-web, the model files of this dtype
        paths = {r["path"] for r in site_server.log}
        assert {"/pyodide/pyodide.asm.wasm", "/app.py", "/webformers/ort/ort-wasm-simd-threaded.asyncify.wasm",
                f"/models/{model}/onnx/model_q4.onnx"} <= paths
    finally:
        s.close()


def test_default_page_chats_with_the_sites_model(browser, tmp_path, site_dir):
    """No --app, no --index: the default chat page (its Python app) generates with the site's model."""
    from webformers.site import build_site
    from webformers.site.server import SiteServer

    out = tmp_path / "chat"
    build_site(out, models=[f"{site_dir / 'models' / TINY}:q4"])
    srv = SiteServer(out).start()
    try:
        s = _open(browser, srv, "device=wasm&max_new_tokens=16")
        assert s.page.evaluate("window.webformersSite.error") is None, "\n".join(s.console[-20:])
        assert s.page.eval_on_selector_all("#wf-model option", "os => os.map(o => o.value)") == [TINY]
        s.page.fill("#wf-prompt", "Hello")
        s.page.click("#wf-send")
        s.page.wait_for_function("!document.getElementById('wf-send').disabled && "
                                 "document.getElementById('wf-reply').textContent.length > 0", timeout=600_000)
        assert s.page.text_content("#wf-info") == "", s.page.text_content("#wf-info")
        assert not origin_violations(s), origin_violations(s)
        s.close()
    finally:
        srv.stop()


def test_app_error_is_shown_in_the_users_page(browser, tmp_path):
    """--index: the user's page gets the loader tag; an app that raises shows its traceback there."""
    from webformers.site import build_site
    from webformers.site.server import SiteServer

    index = tmp_path / "index.html"
    index.write_text("<!doctype html><html><body><h1 id='mine'>my page</h1></body></html>")
    app = tmp_path / "broken.py"
    app.write_text("import webformers\nx = 1\nraise ValueError('the app failed on purpose')\n")
    out = tmp_path / "site"
    build_site(out, index=index, app=app)
    assert "webformers/site-loader.js" in (out / "index.html").read_text()
    srv = SiteServer(out).start()
    try:
        s = _open(browser, srv, "")
        err = s.page.evaluate("window.webformersSite.error")
        assert err and "ValueError: the app failed on purpose" in err and "app.py" in err, err
        assert "the app failed on purpose" in s.page.text_content("#wf-status")
        assert s.page.text_content("#mine") == "my page"
        s.close()
    finally:
        srv.stop()


def test_rebuild_with_unchanged_inputs_writes_nothing(tmp_path, site_dir):
    """The first build into a fresh cache (seeded with the downloads only: it extracts, hashes, writes the
    wheels and copies) vs a rebuild."""
    from webformers.site import build_site
    from webformers.site.sources import default_cache

    cache = tmp_path / "cache"
    (cache / "dl").mkdir(parents=True)
    for f in (default_cache() / "dl").glob("*"):
        os.link(f, cache / "dl" / f.name)
    app = tmp_path / "app.py"
    app.write_text("print('hello')\n")
    args = dict(models=[f"{site_dir / 'models' / TINY}:q4", f"{site_dir / 'models' / SMOL}:q4"], app=app,
                cache=cache)
    out = tmp_path / "site"
    first = build_site(out, **args)["build"]
    t0 = time.time()
    second = build_site(out, **args)["build"]
    second_wall = time.time() - t0
    assert first["written"] > 40 and first["unchanged"] == 0
    assert second["written"] == 0 and second["unchanged"] == first["written"] and second["removed"] == 0
    assert second_wall * 5 <= first["seconds"], (first, second_wall)
    # a changed input is written again, alone; a model left out is removed
    app.write_text("print('hello again')\n")
    third = build_site(out, models=args["models"][:1], app=app, cache=cache)["build"]
    assert (out / "app.py").read_text() == "print('hello again')\n"
    assert not (out / "models" / SMOL).exists() and (out / "models" / TINY / "onnx" / "model_q4.onnx").is_file()
    assert third["removed"] >= 4 and third["written"] == 3, third  # app.py, models/index.json, site.json


def test_bad_arguments_name_the_valid_choices(tmp_path, site_dir):
    tiny = site_dir / "models" / TINY
    p = _cli("site", tmp_path / "a", "--model", tmp_path / "no-such-repo")
    assert p.returncode == 2 and "no-such-repo is not a directory" in p.stderr, p.stderr
    p = _cli("site", tmp_path / "b", "--model", f"{tiny}:q5")
    assert p.returncode == 2 and "unknown dtype q5" in p.stderr and "fp32, fp16, q8" in p.stderr, p.stderr
    # a site's copy of the repo serves only the dtypes asked for: q4 alone here
    assert _cli("site", tmp_path / "x", "--model", f"{tiny}:q4").returncode == 0
    p = _cli("site", tmp_path / "c", "--model", f"{tmp_path / 'x' / 'models' / TINY}:q4,q1")
    assert p.returncode == 2 and "dtype not in this repo q1" in p.stderr and "q4" in p.stderr, p.stderr
    p = _cli("site", tmp_path / "d", "--app", tmp_path / "missing.py")
    assert p.returncode == 2 and "missing.py: no such file" in p.stderr, p.stderr
    p = _cli("site", tmp_path / "e", "--model", tiny, "--model", tiny)
    assert p.returncode == 2 and "two models with the id webformers/tiny-random-llama" in p.stderr, p.stderr
    assert not any((tmp_path / x).exists() for x in "abcde")
    p = _cli("serve", tmp_path / "nothing")
    assert p.returncode == 2 and "no index.html" in p.stderr, p.stderr


def test_serve_prints_the_url_and_isolates(built_site):
    import urllib.request

    env = dict(os.environ, PYTHONPATH=str(ROOT / "pysrc"))
    proc = subprocess.Popen([sys.executable, "-m", "webformers", "serve", str(built_site), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "site.json", timeout=30) as r:
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert json.loads(r.read())["models"] == [TINY, SMOL]
        with urllib.request.urlopen(url + "pyodide/pyodide.asm.wasm", timeout=30) as r:
            assert r.headers["Content-Type"] == "application/wasm"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_repo_without_manifest_and_damaged_files(tmp_path, site_dir):
    """A repo in the transformers.js layout (no onnx/manifest.json) gets a manifest made for the site; a file
    that does not match its repo's manifest stops the build naming it."""
    import shutil

    from webformers.site import SiteError, build_site

    tiny = site_dir / "models" / TINY
    foreign = tmp_path / "foreign"
    (foreign / "onnx").mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx", "onnx/model_q4.onnx"):
        if (tiny / f).is_file():
            shutil.copyfile(tiny / f, foreign / f)
    site = build_site(tmp_path / "site", models=[f"org/foreign={foreign}:q4"])
    assert site["models"] == ["org/foreign"]
    served = tmp_path / "site" / "models" / "org" / "foreign"
    man = json.loads((served / "onnx" / "manifest.json").read_text())
    assert list(man["modules"]["model"]) == ["q4"] and not (served / "onnx" / "model.onnx").exists()
    assert man["files"]["onnx/model_q4.onnx"]["sha256"] == _sha(foreign / "onnx" / "model_q4.onnx")
    assert man["files"]["config.json"]["sha256"] == _sha(foreign / "config.json")

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny, damaged)
    data = bytearray((damaged / "onnx" / "model_q4.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "onnx" / "model_q4.onnx").write_bytes(bytes(data))
    with pytest.raises(SiteError, match=r"model_q4\.onnx is damaged: sha256 .* its manifest says"):
        build_site(tmp_path / "site2", models=[f"{damaged}:q4"])


@pytest.mark.unit
def test_model_arg_with_an_equals_sign_in_the_path(tmp_path):
    from webformers.site import SiteError
    from webformers.site.models import parse_model_arg

    odd = tmp_path / "a=b" / "repo"
    odd.mkdir(parents=True)
    assert parse_model_arg(f"{odd}:q4,fp16") == (None, odd, ["q4", "fp16"])
    assert parse_model_arg(str(odd)) == (None, odd, None)
    assert parse_model_arg(f"org/name={odd}:q4") == ("org/name", odd, ["q4"])
    assert parse_model_arg(f"org/name={tmp_path / 'missing'}") == ("org/name", tmp_path / "missing", None)
    with pytest.raises(SiteError, match="no dtype after ':'"):
        parse_model_arg(f"{odd}:")
