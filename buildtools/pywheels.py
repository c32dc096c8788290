"""Pure-Python wheels that webformers needs inside Pyodide: jinja2 and a pure markupsafe.

Pyodide 0.27.7's lock has no markupsafe wheel that is obtainable offline (its wasm wheel lives on the CDN),
and jinja2 needs markupsafe. MarkupSafe ships a pure-Python implementation (``markupsafe._native``) that it
falls back to when the ``_speedups`` C extension is absent: its ``setup.py`` builds without the extension
(``run_setup(False)``) on Python implementations without C-API speedups or when compiling fails, but has no
switch to request that. We therefore build the sdist from PyPI with the extension excluded: the sdist's own
``setup.py`` is replaced by a plain ``setup()`` call (all metadata is in its ``pyproject.toml``) and the C
source is removed, which yields a ``py3-none-any`` wheel whose ``__init__`` imports ``_native``.

jinja2 is pure Python already: its PyPI wheel is used as-is. Both downloads are pinned by sha256 (the
values published on PyPI), built wheels are cached under ``cache_dir`` keyed by the source hash, and each
wheel set is verified in a clean interpreter (``python -I -S``: no site-packages) that imports only the
wheels, checks ``markupsafe._speedups`` is absent and that escaping and a sandboxed jinja2 render work.

Usage: ``build_pure_wheels(dest_dir, cache_dir) -> [jinja2 wheel, markupsafe wheel]`` (install markupsafe
first with micropip), or ``python -m buildtools.pywheels DEST [--cache DIR]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from buildtools.common import sha256_file

JINJA2 = {"name": "jinja2", "version": "3.1.6", "file": "jinja2-3.1.6-py3-none-any.whl",
          "sha256": "85ece4451f492d0c13c5dd7c13a64681a86afae63a5f347908daf103ce6d2f67"}
MARKUPSAFE = {"name": "markupsafe", "version": "3.0.3", "file": "markupsafe-3.0.3.tar.gz",
              "sha256": "722695808f4b6457b320fdc131280796bdceb04ab50fe1795cd540799ebe1698"}

_PURE_SETUP_PY = '''\
# Written by webformers' buildtools/pywheels.py: MarkupSafe's own setup.py with the "_speedups" C extension
# excluded, i.e. its run_setup(False) path. The package then uses its pure-Python markupsafe._native.
from setuptools import setup

setup(ext_modules=[])
'''

_VERIFY = r'''
import importlib.util, sys
sys.path[:0] = sys.argv[1:]
import markupsafe
assert importlib.util.find_spec("markupsafe._speedups") is None, "markupsafe._speedups must be absent"
assert markupsafe._escape_inner.__module__ == "markupsafe._native", markupsafe._escape_inner.__module__
assert markupsafe.__file__.startswith(tuple(sys.argv[1:])), markupsafe.__file__
e = markupsafe.escape("<a href='x'>\"&\" é</a>")
assert str(e) == "&lt;a href=&#39;x&#39;&gt;&#34;&amp;&#34; é&lt;/a&gt;", str(e)
assert isinstance(e, markupsafe.Markup)
assert markupsafe.Markup("<b>%s</b>") % "<i>" == "<b>&lt;i&gt;</b>"
assert markupsafe.escape_silent(None) == "" and markupsafe.soft_str(1) == "1"
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
assert jinja2.__file__.startswith(tuple(sys.argv[1:])), jinja2.__file__
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=True)
out = env.from_string("{% for m in ms %}{{ m }};{% endfor %}").render(ms=["<x>", "y"])
assert out == "&lt;x&gt;;y;", out
try:
    env.from_string("{% set l = [] %}{{ l.append(1) }}").render()
except jinja2.exceptions.SecurityError:
    pass
else:
    raise AssertionError("sandbox did not block list.append")
print("ok", jinja2.__version__, markupsafe.__name__)
'''


class WheelBuildError(RuntimeError):
    """Downloading, building or verifying a pure wheel failed."""


def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise WheelBuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}"
                              f"\n{proc.stderr[-4000:]}")
    return proc.stdout


def _download(spec: dict, downloads: Path, source: bool) -> Path:
    """pip-download one pinned file (hash-checked) into the cache; reuse it when present and intact."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / spec["file"]
    if target.exists() and sha256_file(target) == spec["sha256"]:
        return target
    with tempfile.TemporaryDirectory(prefix="wf-dl-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{spec['name']}=={spec['version']} --hash=sha256:{spec['sha256']}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-r", str(req),
               "-d", tmp, "--no-binary" if source else "--only-binary", ":all:"]
        _run(cmd, cwd=Path(tmp), timeout=600)
        got = Path(tmp) / spec["file"]
        if not got.exists():
            raise WheelBuildError(f"pip did not produce {spec['file']} (got {os.listdir(tmp)})")
        digest = sha256_file(got)
        if digest != spec["sha256"]:
            raise WheelBuildError(f"{spec['file']}: sha256 {digest} != pinned {spec['sha256']}")
        shutil.copy2(got, target)
    return target


def _build_pure_markupsafe(sdist: Path, out_dir: Path) -> Path:
    """Build a py3-none-any MarkupSafe wheel from the sdist with the C extension excluded."""
    with tempfile.TemporaryDirectory(prefix="wf-markupsafe-") as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        roots = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(roots) != 1 or not (roots[0] / "pyproject.toml").exists():
            raise WheelBuildError(f"unexpected layout in {sdist.name}: {[p.name for p in roots]}")
        src = roots[0]
        setup_py = (src / "setup.py").read_text()
        if "markupsafe._speedups" not in setup_py or "run_setup(False)" not in setup_py:
            raise WheelBuildError(f"{sdist.name}'s setup.py changed shape; re-check how it excludes _speedups")
        (src / "setup.py").write_text(_PURE_SETUP_PY)
        for leftover in ("_speedups.c", "_speedups.pyi"):
            (src / "src" / "markupsafe" / leftover).unlink(missing_ok=True)
        dist = Path(tmp) / "dist"
        # reproducible wheel bytes: zip timestamps from the sdist's own mtime instead of "now"
        epoch = str(int((src / "pyproject.toml").stat().st_mtime))
        env = {**os.environ, "PIP_NO_INPUT": "1", "SOURCE_DATE_EPOCH": epoch}
        # -I and cwd=tmp: never pick up a project-local "build.py" instead of the pypa "build" module.
        try:  # the local setuptools (>=77 needed by the sdist) avoids any network access
            _run([sys.executable, "-I", "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                  str(src)], cwd=Path(tmp), env=env)
        except WheelBuildError:
            _run([sys.executable, "-I", "-m", "build", "--wheel", "--outdir", str(dist), str(src)],
                 cwd=Path(tmp), env=env)
        wheels = list(dist.glob("*.whl"))
        if len(wheels) != 1 or not wheels[0].name.endswith("-py3-none-any.whl"):
            raise WheelBuildError(f"expected one py3-none-any wheel, got {[w.name for w in wheels]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            names = zf.namelist()
        native = [n for n in names if n.endswith((".so", ".pyd", ".c")) or "_speedups" in n]
        if native or "markupsafe/_native.py" not in names:
            raise WheelBuildError(f"{wheels[0].name} is not pure: {native or 'no markupsafe/_native.py'}")
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / wheels[0].name
        shutil.copy2(wheels[0], final)
        return final


def verify_wheels(wheels: list[Path]) -> str:
    """Import the wheels in a clean interpreter (no site-packages) and check markupsafe is the pure one."""
    out = _run([sys.executable, "-I", "-S", "-c", _VERIFY, *[str(w.resolve()) for w in wheels]], timeout=120)
    if not out.startswith("ok"):
        raise WheelBuildError(f"wheel verification printed {out!r}")
    return out.strip()


def build_pure_wheels(dest_dir: Path, cache_dir: Path) -> list[Path]:
    """Produce the jinja2 wheel and a pure-Python markupsafe wheel in ``dest_dir``; return their paths.

    Order of the result: [jinja2, markupsafe]. Install markupsafe before jinja2 (micropip would otherwise
    look for markupsafe on PyPI). Cached under ``cache_dir`` by the pinned source hashes; each call
    re-verifies the wheels it returns.
    """
    dest_dir, cache_dir = Path(dest_dir), Path(cache_dir)
    downloads = cache_dir / "downloads"
    jinja_whl = _download(JINJA2, downloads, source=False)
    sdist = _download(MARKUPSAFE, downloads, source=True)
    built_dir = cache_dir / f"markupsafe-pure-{MARKUPSAFE['sha256'][:16]}"
    cached = sorted(built_dir.glob("*-py3-none-any.whl")) if built_dir.exists() else []
    ms_whl = cached[0] if cached else _build_pure_markupsafe(sdist, built_dir)
    try:
        verify_wheels([jinja_whl, ms_whl])
    except WheelBuildError:
        if not cached:
            raise
        shutil.rmtree(built_dir)  # a stale or damaged cache entry: rebuild once
        ms_whl = _build_pure_markupsafe(sdist, built_dir)
        verify_wheels([jinja_whl, ms_whl])
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for w in (jinja_whl, ms_whl):
        target = dest_dir / w.name
        if not target.exists() or sha256_file(target) != sha256_file(w):
            shutil.copy2(w, target)
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "webformers" / "pywheels")
    args = ap.parse_args(argv)
    for w in build_pure_wheels(args.dest, args.cache):
        print(w, sha256_file(w))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
