"""A JupyterLite site beside a webformers site, fully offline: ``webformers site OUT --jupyterlite``.

``build_jupyterlite(site_dir)`` writes ``site_dir/jupyterlite/`` with ``jupyterlite-core`` and the Pyodide
kernel (``pip install 'webformers[jupyterlite]'``): its kernel runs *our* Pyodide 0.27.7 (kernel 0.6.1 is made
for 0.27.6, the same ABI), from a distribution assembled here: the npm core files, a lock pruned to the
packages shipped, and those packages' official wheels (lock-verified, see :mod:`.sources`) — no CDN. The
site's wheels (markupsafe, jinja2, webformers) and ``comm`` (the kernel's ipykernel shim needs it) are
piplite wheels, so ``%pip install webformers`` resolves on the site itself. The site's models and the
browser runtime stay where the webformers site has them (``models/``, ``webformers/``); the shipped notebook
``webformers.ipynb`` points ``webformers.configure`` at them and generates with the site's first
text-generation model.

The build runs only when its inputs (versions, wheels, Pyodide files, the notebook) changed since the last
one (a stamp in the output folder).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .sources import PYODIDE_VERSION, SiteError, Sources

#: the pinned JupyterLite packages (the ``jupyterlite`` extra); kernel 0.6.1 is built for Pyodide 0.27.6
JUPYTERLITE = {"jupyterlite-core": "0.6.4", "jupyterlite-pyodide-kernel": "0.6.1"}
#: Pyodide packages the kernel loads (IPython, completion, history) plus numpy; dependencies come along
KERNEL_PACKAGES = ["micropip", "packaging", "ipython", "jedi", "sqlite3", "ssl", "numpy"]
#: npm pyodide files the kernel's Pyodide distribution serves
PYODIDE_DIST_FILES = ["pyodide.js", "pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip",
                      "package.json"]
#: the JupyterLite apps built (the notebook, and the REPL, which runs ``?code=`` on load)
APPS = ["notebooks", "repl"]
DIR = "jupyterlite"
NOTEBOOK = "webformers.ipynb"
STAMP = ".webformers-jupyterlite.json"

#: the code cells of the shipped notebook ({model} is replaced by a model id of the site)
NOTEBOOK_CELLS = [
    "%pip install webformers",
    "import js\n"
    "import webformers\n"
    "\n"
    "# the webformers site this JupyterLite lives in: its models/ and the browser runtime in webformers/\n"
    "site = js.location.href.split(\"/" + DIR + "/\")[0] + \"/\"\n"
    "webformers.configure(assets=site + \"webformers/\", models=site + \"models/\")",
    "pipe = await webformers.pipeline(\"text-generation\", \"{model}\", dtype=\"{dtype}\", device=\"wasm\")\n"
    "out = await pipe([{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}],\n"
    "                 max_new_tokens=24, do_sample=False)\n"
    "print(out[0][\"generated_text\"][-1][\"content\"])",
]


def check_installed() -> None:
    """SiteError unless the pinned JupyterLite packages are importable, saying how to install them."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for name, want in JUPYTERLITE.items():
        try:
            got = version(name)
        except PackageNotFoundError:
            got = None
        if got != want:
            wrong.append(f"{name}=={want} (found: {got or 'not installed'})")
    if wrong:
        raise SiteError("--jupyterlite needs " + ", ".join(wrong) + ": pip install 'webformers[jupyterlite]'")


def notebook(model: str, dtype: str) -> dict:
    """The shipped notebook (nbformat 4) for ``model`` / ``dtype``."""
    cells = [{"cell_type": "markdown", "metadata": {}, "source": [
        "# webformers in JupyterLite\n",
        "Python in this tab installs webformers from this site and runs a quantized model with onnxruntime-web; "
        "nothing leaves the page."]}]
    for src in NOTEBOOK_CELLS:
        text = src.replace("{model}", model).replace("{dtype}", dtype).replace("{{", "{").replace("}}", "}")
        cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                      "source": text.splitlines(keepends=True)})
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python (Pyodide)", "language": "python",
                                                         "name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def _pick_model(site_dir: Path, model: str | None) -> tuple[str, str]:
    """(model id, dtype) for the notebook: ``model`` or the site's first text-generation model; q4 when it
    has it."""
    index = site_dir / "models" / "index.json"
    models = json.loads(index.read_text()).get("models", []) if index.is_file() else []
    text = [m for m in models if m.get("task", "text-generation") == "text-generation"]
    for m in text:
        if model is None or m["id"] == model:
            dtypes = m.get("modules", {}).get("model", [])
            return m["id"], "q4" if "q4" in dtypes else (dtypes[0] if dtypes else "fp32")
    if model is not None:
        raise SiteError(f"the notebook model {model!r} is not a text-generation model of this site; the site has: "
                        + (", ".join(repr(m["id"]) for m in text) or "none"))
    raise SiteError(f"{site_dir} has no text-generation model for the JupyterLite notebook (models/index.json)")


def _pyodide_tarball(src: Sources, work: Path) -> tuple[Path, list[str]]:
    """Our Pyodide distribution as the tarball ``jupyter lite build --pyodide`` takes, and its files' sha256."""
    core = src.pyodide_core()
    lock = json.loads(core["pyodide-lock.json"].read_text())
    wheels = src.pyodide_wheels(lock, KERNEL_PACKAGES)
    # the lock lists exactly what is shipped, so micropip never looks for a file that is not there
    pruned = dict(lock, packages={n: lock["packages"][n] for n in wheels})
    root = work / "pyodide"
    root.mkdir(parents=True)
    digests = []
    for f, p in {**src.pyodide_files(PYODIDE_DIST_FILES), **{p.name: p for p in wheels.values()}}.items():
        shutil.copyfile(p, root / f)
        digests.append(f"{f}:{src.hasher.sha256(p)}")
    (root / "pyodide-lock.json").write_text(json.dumps(pruned))
    digests.append("lock:" + hashlib.sha256(json.dumps(pruned, sort_keys=True).encode()).hexdigest())
    tar = work / "pyodide.tar.bz2"
    with tarfile.open(tar, "w:bz2") as t:
        t.add(root, arcname="pyodide")
    return tar, sorted(digests)


def build_jupyterlite(site_dir, *, model: str | None = None, cache=None, log=None) -> dict:
    """Write ``site_dir/jupyterlite/`` (see the module docstring) for a site built by ``build_site``; the
    notebook runs ``model`` (a model id of the site; default: its first text-generation model). Returns
    {"dir", "notebook", "model", "dtype", "built": False when the inputs were unchanged}."""
    log = log or (lambda msg: None)
    site_dir = Path(site_dir).resolve()
    try:
        site = json.loads((site_dir / "site.json").read_text())
    except (OSError, ValueError) as e:
        raise SiteError(f"{site_dir} is not a webformers site (site.json: {e})") from None
    check_installed()
    model, dtype = _pick_model(site_dir, model)
    src = Sources(cache, log)
    piplite = [site_dir / "wheels" / w["file"] for w in site["wheels"]] + [src.pypi_file("comm")]
    missing = [str(p) for p in piplite if not p.is_file()]
    if missing:
        raise SiteError(f"the site's wheels are missing: {', '.join(missing)}")
    out = site_dir / DIR
    nb = notebook(model, dtype)
    with tempfile.TemporaryDirectory(prefix="wf-jupyterlite-") as td:
        work = Path(td)
        tar, pyodide_digests = _pyodide_tarball(src, work)
        key = hashlib.sha256(json.dumps({
            "versions": JUPYTERLITE, "pyodide": PYODIDE_VERSION, "files": pyodide_digests, "apps": APPS,
            "wheels": [f"{p.name}:{src.hasher.sha256(p)}" for p in piplite], "notebook": nb,
        }, sort_keys=True).encode()).hexdigest()
        stamp = out / STAMP
        result = {"dir": str(out), "notebook": f"{DIR}/notebooks/index.html?path={NOTEBOOK}", "model": model,
                  "dtype": dtype}
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
            log(f"{DIR}/: unchanged")
            return {**result, "built": False}
        contents = work / "contents"
        contents.mkdir()
        (contents / NOTEBOOK).write_text(json.dumps(nb, indent=1))
        cmd = [sys.executable, "-m", "jupyterlite_core", "build", "--pyodide", str(tar), "--contents", str(contents),
               "--output-dir", str(work / "out")]
        for a in APPS:
            cmd += ["--apps", a]
        for p in piplite:
            cmd += ["--piplite-wheels", str(p)]
        log(f"{DIR}/: jupyter lite build ({', '.join(APPS)}; Pyodide {PYODIDE_VERSION})")
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if proc.returncode != 0 or not (work / "out" / "index.html").is_file():
            log(proc.stdout[-3000:])
            raise SiteError(f"jupyter lite build failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(work / "out"), out)
        stamp.write_text(json.dumps({"key": key}))
    return {**result, "built": True}
