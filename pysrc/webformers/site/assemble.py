"""Assemble a static site: the user's models and app, Pyodide, the wheels, onnxruntime-web.

Layout of a site::

    index.html, (page files), app.py       the page and the Python file it runs on load
    site.json                              what the loader boots (Pyodide files, wheels + sha256, models, app)
    pyodide/                               Pyodide core + numpy / micropip / packaging (lock-verified)
    wheels/                                markupsafe, jinja2, webformers (installed in this order)
    webformers/                            the browser runtime's JS (package data), the page loader
    webformers/ort/                        onnxruntime-web
    models/index.json, models/ID/...       the model repos

Every output file is planned first (from a source file or bytes), then written only when its content
differs from what the last build wrote (``.webformers-site.json`` records each file's sha256 and the size
and mtime it was written with; inputs are hashed once per (path, size, mtime)). Files an earlier build
wrote that the plan no longer has are removed; files the builder never wrote are left alone. A rebuild
with unchanged inputs therefore reads and writes nothing but the stamp.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from . import wheels as _wheels
from .models import ModelPlan, plan_model
from .sources import (ORT_FILES, ORT_VERSION, PYODIDE_CORE, PYODIDE_PACKAGES, PYODIDE_VERSION, PYPI, SiteError,
                      Sources)

STAMP = ".webformers-site.json"
#: where the site's own files go: page files and extra files may not use these
RESERVED = ("pyodide/", "wheels/", "webformers/", "models/", "jupyterlite/", "site.json", STAMP, ".webformers-site.lock")
PAGE_DIR = Path(__file__).resolve().parent / "page"
LOADER = "webformers/site-loader.js"
_LOADER_TAG = '<script type="module" src="./webformers/site-loader.js"></script>'


class _Plan:
    """Output path -> a source file or bytes."""

    def __init__(self):
        self.items: dict[str, tuple[str, object]] = {}

    def file(self, rel: str, src: Path, sha256: str | None = None):
        self.items[rel] = ("file", (Path(src), sha256))

    def data(self, rel: str, data: bytes):
        self.items[rel] = ("bytes", data)


def _write(out: Path, plan: _Plan, hasher, log) -> dict:
    stamp_path = out / STAMP
    try:
        old = json.loads(stamp_path.read_text()).get("files", {})
    except (OSError, ValueError):
        old = {}
    new, copied, same = {}, 0, 0
    for rel, (kind, what) in sorted(plan.items.items()):
        if kind == "file":
            src, want = what
            sha = hasher.sha256(src)
            if want is not None and sha != want:
                raise SiteError(f"{src} is damaged: sha256 {sha}, its manifest says {want}")
        else:
            sha = hashlib.sha256(what).hexdigest()
        dst = out / rel
        rec = old.get(rel)
        if rec and rec["sha256"] == sha and dst.is_file():
            st = dst.stat()
            if st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]:
                new[rel] = rec
                same += 1
                continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        if kind == "file":
            shutil.copyfile(what[0], tmp)
        else:
            tmp.write_bytes(what)
        os.replace(tmp, dst)
        st = dst.stat()
        new[rel] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        copied += 1
    removed = 0
    for rel in sorted(set(old) - set(new)):
        p = out / rel
        if p.is_file():
            p.unlink()
            removed += 1
        for d in p.parents:  # folders left empty go too
            if d == out or not d.is_dir() or any(d.iterdir()):
                break
            d.rmdir()
    tmp = stamp_path.with_name(f".{STAMP}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": "webformers-site-stamp/1", "files": new}, indent=0))
    os.replace(tmp, stamp_path)
    return {"written": copied, "unchanged": same, "removed": removed}


def _check_rel(rel: str, what: str):
    if rel.startswith(RESERVED) or rel in RESERVED:
        raise SiteError(f"{what} {rel!r} would overwrite the site's own files ({', '.join(RESERVED)}): rename it")


def _with_loader(html: str) -> str:
    """``html`` with the site loader's script tag (before </body>, or appended) unless it has one."""
    if "site-loader.js" in html:
        return html
    i = html.lower().rfind("</body>")
    return html[:i] + _LOADER_TAG + "\n" + html[i:] if i >= 0 else html + "\n" + _LOADER_TAG + "\n"


def _in_place(out: Path, plan: ModelPlan) -> bool:
    return plan.src.resolve() == (out / "models" / plan.id).resolve()


def build_site(out, models=(), app=None, page=None, index=None, extra=None, cache=None, log=None) -> dict:
    """Assemble a static site in ``out`` (created when missing) and return its site.json plus ``build``
    (seconds, files written / unchanged / removed).

    models: ``[ID=]REPO_DIR[:dtype,...]`` strings (see :mod:`.models`); a repo already at
    ``out/models/ID`` is served where it is. app: a Python file the page runs once webformers is installed
    (served as app.py). page: a folder copied as the site's page (it brings its own index.html); index:
    an index.html (the loader's script tag is added when it has none); neither: the default chat page
    (with the default chat app when ``app`` is not given). extra: ``{site path: file}`` served as well.
    cache: the download cache (default ``~/.cache/webformers/site``).
    """
    t0 = time.time()
    log = log or (lambda msg: None)
    out = Path(out)
    if page is not None and index is not None:
        raise SiteError("give --page DIR or --index FILE, not both")
    if out.exists() and not out.is_dir():
        raise SiteError(f"{out} exists and is not a directory")
    plans = [plan_model(m) for m in models]
    ids = [p.id for p in plans]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SiteError(f"two models with the id {', '.join(dup)}: name them with ID=REPO_DIR")
    app = Path(app) if app is not None else None
    if app is not None and not app.is_file():
        raise SiteError(f"--app {app}: no such file (a Python file the page runs on load)")
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        return _build(out, plans, ids, app, page, index, extra, Sources(cache, log), log, t0)


@contextlib.contextmanager
def _locked(out: Path):
    """One build at a time per site folder (POSIX file lock; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(out / ".webformers-site.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(out, plans, ids, app, page, index, extra, src, log, t0) -> dict:
    plan = _Plan()

    # Pyodide core + its packages, each wheel checked against Pyodide's own lock
    core = src.pyodide_core()
    lock = json.loads(core["pyodide-lock.json"].read_text())
    for f, p in core.items():
        plan.file(f"pyodide/{f}", p)
    pyo = src.pyodide_wheels(lock)
    for n, p in pyo.items():
        plan.file(f"pyodide/{p.name}", p, lock["packages"][n]["sha256"])

    # markupsafe (pure), jinja2, webformers: installed in this order
    pure_dir = src.cache / "purewheels" / PYPI["markupsafe"]["sha256"][:16]
    ms = sorted(pure_dir.glob("markupsafe-*-py3-none-any.whl"))
    jinja = src.pypi_file("jinja2")
    if not ms or not (pure_dir / ".verified").is_file():
        ms = [_wheels.pure_markupsafe(src.pypi_file("markupsafe"), pure_dir)]
        _wheels.verify_pure_wheels([jinja, ms[0]])
        (pure_dir / ".verified").write_text(src.hasher.sha256(ms[0]))
    pkg = _wheels.package_dir()
    version = _wheels.package_version()
    key = hashlib.sha256(version.encode())
    for p in _wheels.package_files(pkg):
        key.update(p.relative_to(pkg).as_posix().encode() + b"\0" + src.hasher.sha256(p).encode())
    wf_dir = src.cache / "wheels" / key.hexdigest()[:16]
    wf = wf_dir / f"webformers-{version}-py3-none-any.whl"
    if not wf.is_file():
        log(f"webformers {version}: writing its wheel from {pkg}")
        tmp_dir = wf_dir.with_name(wf_dir.name + f".{os.getpid()}.tmp")
        _wheels.package_wheel(tmp_dir, version, pkg)
        if wf_dir.exists():
            shutil.rmtree(wf_dir)
        os.replace(tmp_dir, wf_dir)
    wheels = []
    for w, imp in ((ms[0], "markupsafe"), (jinja, "jinja2"), (wf, "webformers")):
        plan.file(f"wheels/{w.name}", w)
        wheels.append({"file": w.name, "sha256": src.hasher.sha256(w), "import": imp})

    # the browser runtime: its JS (package data), onnxruntime-web, the page loader
    for p in sorted((pkg / "assets").glob("*.js")):
        plan.file(f"webformers/{p.name}", p)
    for f, p in src.ort_files().items():
        plan.file(f"webformers/ort/{f}", p)
    plan.file(LOADER, PAGE_DIR / "site-loader.js")

    # the page and the app
    if page is not None:
        page = Path(page)
        if not (page / "index.html").is_file():
            raise SiteError(f"--page {page}: a page folder needs an index.html")
        for p in sorted(page.rglob("*")):
            rel = p.relative_to(page).as_posix()
            if p.is_file() and not any(s.startswith(".") for s in rel.split("/")):
                _check_rel(rel, f"page file")
                plan.file(rel, p)
    elif index is not None:
        index = Path(index)
        if not index.is_file():
            raise SiteError(f"--index {index}: no such file")
        plan.data("index.html", _with_loader(index.read_text()).encode())
    else:
        plan.file("index.html", PAGE_DIR / "index.html")
        plan.file("site.css", PAGE_DIR / "site.css")
        if app is None:
            app = PAGE_DIR / "chat.py"
    if app is not None:
        plan.file("app.py", app)
    for rel, p in (extra or {}).items():
        _check_rel(rel, "extra file")
        plan.file(rel, Path(p))

    # the models
    for m in plans:
        if _in_place(out, m):
            if m.dtypes is not None:
                raise SiteError(f"{m.src} is the site's own copy of {m.id}: it is served whole (no dtype list)")
            continue
        base = f"models/{m.id}"
        for rel, sha in m.files.items():
            plan.file(f"{base}/{rel}", m.src / rel, sha)
        plan.data(f"{base}/onnx/manifest.json", json.dumps(m.manifest, indent=1).encode())
        if m.report is not None:
            plan.data(f"{base}/quantization_report.json", json.dumps(m.report, indent=1).encode())
        chart = m.src / "quantization_chart.png"
        if m.dtypes is None and chart.is_file():  # the chart shows every dtype: only with all of them
            plan.file(f"{base}/quantization_chart.png", chart)
    plan.data("models/index.json", json.dumps({"models": [m.index_entry() for m in plans]}, indent=1).encode())

    site = {
        "format": "webformers-site/1",
        "webformers_version": version,
        "pyodide_version": PYODIDE_VERSION,
        "pyodide_packages": PYODIDE_PACKAGES,
        "pyodide_files": {n: lock["packages"][n]["file_name"] for n in PYODIDE_PACKAGES},
        "pyodide_core": [f for f in PYODIDE_CORE if f != "pyodide.mjs"],
        "pyodide_core_sha256": {f: src.hasher.sha256(p) for f, p in core.items()},
        "ort_version": ORT_VERSION,
        "ort_files": ORT_FILES,
        "wheels": wheels,
        "models": ids,
        "app": "app.py" if app is not None else None,
    }
    plan.data("site.json", json.dumps(site, indent=1).encode())
    stats = _write(out, plan, src.hasher, log)
    src.hasher.save()
    stats["seconds"] = round(time.time() - t0, 2)
    log(f"{out}: {stats['written']} files written, {stats['unchanged']} unchanged, {stats['removed']} removed "
        f"in {stats['seconds']} s")
    return {**site, "build": stats}
