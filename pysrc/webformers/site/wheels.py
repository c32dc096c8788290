"""The pure-Python wheels a site installs with micropip, written with the standard library only.

- jinja2: its PyPI wheel as it is (pure Python already).
- markupsafe: Pyodide 0.27.7's markupsafe is a wasm wheel that is not obtainable offline, but MarkupSafe
  ships a pure-Python implementation (``markupsafe._native``) it uses when its ``_speedups`` C extension is
  absent. :func:`pure_markupsafe` writes a ``py3-none-any`` wheel from the PyPI sdist's ``src/markupsafe/``
  without the C files, with the sdist's PKG-INFO as its METADATA.
- webformers: :func:`package_wheel` zips the running ``webformers`` package folder itself (a checkout's
  ``pysrc/webformers`` or an installed copy), so the site runs exactly the code that built it.

Wheels are written deterministically (sorted members, fixed timestamps): the same inputs give the same
bytes, so a rebuild leaves the site's files untouched. :func:`verify_pure_wheels` imports jinja2 and
markupsafe from the wheels alone in a clean interpreter and checks the pure implementation is used.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from .sources import SiteError

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(dst: Path, dist: str, version: str, files: dict[str, bytes], metadata: str) -> Path:
    """Write a py3-none-any wheel of ``files`` ({archive path: bytes}) with ``metadata`` as its METADATA."""
    info = f"{dist}-{version}.dist-info"
    members = dict(files)
    members[f"{info}/METADATA"] = metadata.encode()
    members[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: webformers.site\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    tops = sorted({n.split("/", 1)[0] for n in files if "/" in n})
    members[f"{info}/top_level.txt"] = "".join(t + "\n" for t in tops).encode()
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in sorted(members.items()))
    members[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(members):
            zi = zipfile.ZipInfo(name, date_time=_EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, members[name])
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.getvalue())
    return dst


def pure_markupsafe(sdist: Path, out_dir: Path) -> Path:
    """A py3-none-any MarkupSafe wheel from its sdist, without the ``_speedups`` C extension."""
    files, metadata, version = {}, None, None
    with tarfile.open(sdist, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 2:
                continue
            rest = "/".join(parts[1:])
            if rest == "PKG-INFO":
                metadata = tar.extractfile(m).read().decode()
            elif rest.startswith("src/markupsafe/") and not rest.rsplit("/", 1)[-1].startswith("_speedups"):
                files[rest[len("src/"):]] = tar.extractfile(m).read()
    if metadata is None or "markupsafe/__init__.py" not in files or "markupsafe/_native.py" not in files:
        raise SiteError(f"{sdist.name} does not have the expected layout (PKG-INFO, src/markupsafe/_native.py)")
    version = re.search(r"^Version: (\S+)", metadata, re.M).group(1)
    return write_wheel(Path(out_dir) / f"markupsafe-{version}-py3-none-any.whl", "markupsafe", version, files, metadata)


_VERIFY = r'''
import importlib.util, sys
sys.path[:0] = sys.argv[1:]
import markupsafe
assert importlib.util.find_spec("markupsafe._speedups") is None, "markupsafe._speedups must be absent"
assert markupsafe._escape_inner.__module__ == "markupsafe._native", markupsafe._escape_inner.__module__
assert markupsafe.__file__.startswith(tuple(sys.argv[1:])), markupsafe.__file__
e = markupsafe.escape("<a href='x'>\"&\" é</a>")
assert str(e) == "&lt;a href=&#39;x&#39;&gt;&#34;&amp;&#34; é&lt;/a&gt;", str(e)
assert markupsafe.Markup("<b>%s</b>") % "<i>" == "<b>&lt;i&gt;</b>"
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
print("ok", jinja2.__version__)
'''


def verify_pure_wheels(wheels: list[Path]) -> None:
    """Import jinja2 and markupsafe from ``wheels`` only (``python -I -S``) and check they work, pure."""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _VERIFY, *[str(Path(w).resolve()) for w in wheels]],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout.startswith("ok"):
        raise SiteError(f"the jinja2/markupsafe wheels {[Path(w).name for w in wheels]} failed their import check: "
                        f"{(proc.stderr or proc.stdout).strip()[-1500:]}")


# ---------------------------------------------------------------- the webformers wheel
def package_dir() -> Path:
    import webformers

    return Path(webformers.__file__).resolve().parent


def package_version() -> str:
    """The installed distribution's version, else the checkout's pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("webformers")
    except metadata.PackageNotFoundError:
        pyproject = package_dir().parent.parent / "pyproject.toml"
        m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        if not m:
            raise SiteError("cannot tell the webformers version: the package is not installed and no "
                            "pyproject.toml is next to its source") from None
        return m.group(1)


def package_files(pkg: Path | None = None) -> list[Path]:
    """The files of the webformers package folder that go into its wheel (no bytecode, no caches)."""
    pkg = pkg or package_dir()
    return sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".pyc", ".pyo") and not any(s.startswith(".") for s in p.relative_to(pkg).parts))


def package_wheel(dst_dir: Path, version: str, pkg: Path | None = None) -> Path:
    """The webformers wheel (``webformers-{version}-py3-none-any.whl``) of the package folder ``pkg``."""
    pkg = pkg or package_dir()
    files = {f"webformers/{p.relative_to(pkg).as_posix()}": p.read_bytes() for p in package_files(pkg)}
    meta = (f"Metadata-Version: 2.1\nName: webformers\nVersion: {version}\nRequires-Python: >=3.11\n"
            "Summary: Quantized ONNX models in the browser from Python\nRequires-Dist: numpy>=1.26\n"
            "Requires-Dist: jinja2>=3.1\n")
    return write_wheel(Path(dst_dir) / f"webformers-{version}-py3-none-any.whl", "webformers", version, files, meta)
