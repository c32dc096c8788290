"""Assemble dist/site, the demo: one `webformers site` (``webformers.site.build_site``) with the page web/,
the demo models the toolchain converts in place under dist/site/models/, and the bench's vendor files.

Pyodide, its numpy/micropip/packaging wheels, jinja2/markupsafe, the webformers wheel and onnxruntime-web
come from the package's builder: pinned npm/PyPI files, sha256-checked, cached in ~/.cache/webformers/site;
a file is written only when its content changed. The model conversion (minutes) has its own stamps.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from buildtools.common import CACHE, DIST, ROOT, SITE

NODE = ROOT / "node_modules"


class BuildError(SystemExit):
    def __init__(self, msg):
        super().__init__(f"build failed: {msg}")


def log(msg):
    print(f"[build] {msg}", flush=True)


# the bench's chart.js and transformers.js (bench/interop reference) with the onnxruntime-web wasm build it
# bundles the JS of, from node_modules (`npm ci`)
VENDOR = {"chart.umd.min.js": NODE / "chart.js" / "dist" / "chart.umd.min.js"}
_TJS = NODE / "@huggingface" / "transformers"
VENDOR.update({f"transformers/{f}": (_TJS / "node_modules" / "onnxruntime-web" / "dist" / f) if f.startswith("ort")
               else _TJS / "dist" / f for f in ("transformers.min.js", "transformers.web.min.js",
                                                "ort-wasm-simd-threaded.asyncify.mjs",
                                                "ort-wasm-simd-threaded.asyncify.wasm")})
# the bench's CPU anchor wllama (llama.cpp in WASM): its ES module bundle and the wasm it loads
_WLLAMA = NODE / "@wllama" / "wllama" / "esm"
VENDOR.update({f"wllama/{f}": _WLLAMA / f for f in ("index.js", "wasm/wllama.wasm")})


# ---------------------------------------------------------------- models
def build_models() -> list[str]:
    """Convert the demo models ($WEBFORMERS_MODELS, default tiny,smollm2,whisper) into dist/site/models/; their ids.

    Whisper builds in a child process pinned to the last CPU, beside the others: SmolLM2's export and GPTQ
    run on one thread, so the second core was idle for most of its build (the WER grid then runs one clip at
    a time; its numbers do not depend on that). With one CPU they run one after the other."""
    from webformers.toolchain import build_demo_models

    which = os.environ.get("WEBFORMERS_MODELS", "tiny,smollm2,whisper").split(",")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    whisper = _start_whisper(cpus[-1]) if "whisper" in which and len(cpus) > 1 else None
    try:
        repos = list(build_demo_models(SITE / "models", which=[w for w in which if w != "whisper"], log=log).values())
    except BaseException:
        if whisper is not None:
            whisper.kill()
        raise
    if whisper is not None:
        repos.append(_finish_whisper(whisper))
    elif "whisper" in which:
        from webformers.toolchain.whisper.convert import build_whisper_demo

        repos.append(build_whisper_demo(SITE / "models", log=log))
    return [Path(r).relative_to(SITE / "models").as_posix() for r in repos]


_WHISPER_CHILD = """
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from webformers.toolchain.whisper.convert import build_whisper_demo
repo = build_whisper_demo(sys.argv[4], log=lambda m: print(m, flush=True))
print("repo:", repo, flush=True)
"""


def _start_whisper(cpu: int):
    """The child process that builds the Whisper demo on CPU ``cpu``; its lines are logged as they come."""
    import subprocess
    import threading

    child = subprocess.Popen([sys.executable, "-c", _WHISPER_CHILD, str(cpu), str(ROOT / "pysrc"), str(ROOT),
                              str(SITE / "models")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    child.lines = []

    def pump():
        for line in child.stdout:
            child.lines.append(line.rstrip("\n"))
            log(f"whisper: {child.lines[-1]}")

    child.pump = threading.Thread(target=pump, daemon=True)
    child.pump.start()
    return child


def _finish_whisper(child) -> Path:
    t0 = time.time()
    rc = child.wait()
    child.pump.join()
    repo = next((ln[len("repo: "):] for ln in reversed(child.lines) if ln.startswith("repo: ")), None)
    if rc != 0 or repo is None:
        tail = "\n".join(child.lines[-15:])
        raise BuildError(f"the Whisper demo build failed (exit {rc}):\n{tail}")
    log(f"whisper: finished {time.time() - t0:.1f} s after the other models")
    return Path(repo)


def _built_models() -> list[str]:
    """The ids of the demo models dist/site already has (its models/index.json)."""
    index = SITE / "models" / "index.json"
    return [m["id"] for m in json.loads(index.read_text())["models"]] if index.is_file() else []


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


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
    from webformers.site import SiteError, build_site

    SITE.mkdir(parents=True, exist_ok=True)
    ids = build_models() if models else _built_models()
    missing = [src for src in VENDOR.values() if not src.is_file()]
    if missing:
        raise BuildError(f"{missing[0]} is missing: run `python3 build.py setup` (npm ci)")
    try:
        site = build_site(SITE, models=[f"{i}={SITE / 'models' / i}" for i in ids], page=ROOT / "web",
                          extra={f"vendor/{name}": src for name, src in VENDOR.items()}, cache=CACHE / "site", log=log)
        if SMOLLM2 in ids:  # dist/site/jupyterlite/: JupyterLite whose shipped notebook runs SmolLM2
            from webformers.site.jupyterlite import build_jupyterlite

            build_jupyterlite(SITE, model=SMOLLM2, cache=CACHE / "site", log=log)
    except SiteError as e:
        raise BuildError(str(e)) from None
    log(f"dist/site ready in {time.time() - t0:.1f} s")
    return site
