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

    One after the other: each uses both cores (GPTQ's BLAS, the WER grid's thread per CPU); side by side on
    two cores they oversubscribed (a fresh run's model build took 16 min, GPTQ q2 366 s instead of ~76 s)."""
    from webformers.toolchain import build_demo_models

    which = os.environ.get("WEBFORMERS_MODELS", "tiny,smollm2,whisper").split(",")
    repos = list(build_demo_models(SITE / "models", which=[w for w in which if w != "whisper"], log=log).values())
    if "whisper" in which:
        from webformers.toolchain.whisper.convert import build_whisper_demo

        repos.append(build_whisper_demo(SITE / "models", log=log))
    return [Path(r).relative_to(SITE / "models").as_posix() for r in repos]


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
