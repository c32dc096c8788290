"""What build.py, the site builder, the bench and the tests share: the project's paths, sha256 of a file,
content keys and build stamps, and the arguments headless Chromium is launched with.

    sha256_file(path) / sha256_bytes(data) -> hex digest
    hash_inputs(*files, dirs or strings) -> hex digest of their paths and contents
    Stamps(folder, log).step(name, key, outputs, fn)   # run fn unless its last run had the same key
    CHROMIUM, CHROMIUM_ARGS                             # the system binary and its flags
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = Path(os.environ.get("WEBFORMERS_DIST", ROOT / "dist"))
SITE = DIST / "site"
CACHE = Path(os.environ.get("WEBFORMERS_CACHE", Path.home() / ".cache" / "webformers"))

#: Debian's chromium (``build.py setup`` installs it); ``$WEBFORMERS_CHROMIUM`` picks another binary.
CHROMIUM = os.environ.get("WEBFORMERS_CHROMIUM", "/usr/bin/chromium")
#: flags for every headless run: no sandbox (containers), no background traffic, WebGPU on (SwiftShader).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--enable-unsafe-webgpu"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_inputs(*items) -> str:
    """Hash files, directory trees (by relative path + content) and plain strings.

    Paths under ROOT are named relative to it, so the key does not depend on where the checkout lives;
    ``__pycache__`` and ``*.egg-info`` (written by the wheel build itself) are left out."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, Path):
            paths = sorted(p for p in item.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                           and not any(part.endswith(".egg-info") for part in p.parts)) \
                if item.is_dir() else [item]
            for p in paths:
                h.update(str(p.relative_to(ROOT) if ROOT in p.parents else p).encode())
                h.update(sha256_file(p).encode() if p.exists() else b"missing")
        else:
            h.update(str(item).encode())
    return h.hexdigest()


class Stamps:
    """One JSON file per build step under ``folder`` (``{name}.json``) holding the key of its last run."""

    def __init__(self, folder, log=print):
        self.folder = Path(folder)
        self.log = log

    def fresh(self, name: str, key: str, outputs=()) -> bool:
        """True when ``name`` last ran with ``key`` and every path in ``outputs`` still exists."""
        stamp = self.folder / f"{name}.json"
        if not stamp.exists() or not all(Path(o).exists() for o in outputs):
            return False
        return json.loads(stamp.read_text()).get("key") == key

    def record(self, name: str, key: str, seconds: float | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"key": key} if seconds is None else {"key": key, "seconds": round(seconds, 2)}
        (self.folder / f"{name}.json").write_text(json.dumps(data))

    def step(self, name: str, key: str, outputs, fn) -> bool:
        """Run ``fn`` unless :meth:`fresh`; record the key after it succeeds. Returns whether it ran."""
        if self.fresh(name, key, outputs):
            self.log(f"{name}: up to date")
            return False
        t0 = time.time()
        fn()
        self.record(name, key, time.time() - t0)
        self.log(f"{name}: built in {time.time() - t0:.1f} s")
        return True
