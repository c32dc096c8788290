"""JupyterLite, offline: the site's JupyterLite (webformers.site.jupyterlite) runs the shipped notebook's cells —
``%pip install webformers`` from the site's own piplite wheels, then a pipeline on SmolLM2 q4 — in headless
Chromium, and the reply equals CPython's greedy reply on the same files; no request leaves the origin."""
from __future__ import annotations

import json
import urllib.parse

import pytest

from helpers import ROOT, SITE, PageSession, origin_violations, run_async

pytestmark = pytest.mark.browser

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DONE = "WF-NOTEBOOK-DONE"


@pytest.fixture(scope="module")
def lite():
    from webformers.site.jupyterlite import build_jupyterlite

    if not (SITE / "models" / SMOL).is_dir():
        pytest.fail(f"{SITE / 'models' / SMOL} is missing: build the demo models (python3 build.py build)")
    return build_jupyterlite(SITE, model=SMOL, log=print)


def _cpython_reply(dtype: str) -> str:
    from webformers import pipeline

    async def go():
        pipe = await pipeline("text-generation", str(SITE / "models" / SMOL), dtype=dtype)
        out = await pipe([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24,
                         do_sample=False)
        return out[0]["generated_text"][-1]["content"]
    return run_async(go())


def test_shipped_notebook_runs_in_jupyterlite_offline(browser, server, lite):
    nb = json.loads((SITE / "jupyterlite" / "files" / "webformers.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells[0].strip() == "%pip install webformers" and any(SMOL in c and "q4" in c for c in cells), cells
    query = "&".join(["kernel=python"] + [f"code={urllib.parse.quote(c)}" for c in cells + [f"print({DONE!r})"]])
    s = PageSession(browser, server, path=f"/jupyterlite/repl/index.html?{query}", boot=False)
    try:
        outputs = "() => [...document.querySelectorAll('.jp-OutputArea-output')].map((e) => e.innerText)"
        try:
            s.page.wait_for_function(f"() => ({outputs})().some((t) => t.includes({DONE!r}) || t.includes('Error'))",
                                     timeout=600_000)
        except Exception as e:
            raise AssertionError(f"the notebook did not finish: {e}\noutputs: {s.page.evaluate(outputs)}\n"
                                 "console:\n" + "\n".join(s.console[-30:])) from None
        texts = s.page.evaluate(outputs)
        assert not any("Error" in t for t in texts), texts
        want = _cpython_reply(lite["dtype"])
        assert any(t.strip() == want.strip() for t in texts), (want, texts)
        assert not origin_violations(s), origin_violations(s)
    finally:
        s.close()


def test_unknown_notebook_model_names_the_choices():
    from webformers.site.jupyterlite import build_jupyterlite
    from webformers.site.sources import SiteError

    with pytest.raises(SiteError, match=r"not a text-generation model of this site.*SmolLM2"):
        build_jupyterlite(SITE, model="nobody/nothing")


def test_site_command_builds_jupyterlite_once(tmp_path):
    """``webformers site OUT --model REPO --jupyterlite``: the notebook runs that model; unchanged inputs
    rebuild nothing."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "pysrc")}
    cmd = [sys.executable, "-m", "webformers", "site", str(tmp_path / "out"), "--model",
           f"{SITE / 'models' / 'webformers' / 'tiny-random-llama'}:q4", "--jupyterlite", "-q"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert "(built)" in runs[0].stdout and "(unchanged)" in runs[1].stdout, [r.stdout for r in runs]
    nb = json.loads((tmp_path / "out" / "jupyterlite" / "files" / "webformers.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"])
    assert '"webformers/tiny-random-llama", dtype="q4"' in code, code
    assert (tmp_path / "out" / "jupyterlite" / "static" / "pyodide" / "pyodide.asm.wasm").is_file()
    piplite = {p.name for p in (tmp_path / "out" / "jupyterlite" / "pypi").glob("*.whl")}
    assert {n.split("-")[0] for n in piplite} >= {"webformers", "jinja2", "markupsafe", "comm"}, piplite
