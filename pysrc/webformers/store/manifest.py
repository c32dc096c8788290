"""A model repo's manifest (``onnx/manifest.json``): every file's size and sha256, and per module the
dtypes the repo has, their files, bytes and ops. The toolchain writes it (``write_manifest``; for a repo
exported elsewhere: ``webformers manifest REPO_DIR``); the runtime reads it for integrity checks and to
know which dtypes exist. A repo without one gets a manifest of the same shape from ``store.discover``.

Format::

    {"format": "webformers-manifest/1",
     "modules": {"model": {"q4": {"files": ["onnx/model_q4.onnx"], "bytes": 123,
                                  "ops": ["GatherBlockQuantized", "MatMulNBits", ...],
                                  "cpu_matmul_on_webgpu": false}}},
     "files": {"config.json": {"size": 1, "sha256": "..."},
               "onnx/model_q4.onnx": {"size": 1, "sha256": "...", "module": "model", "dtype": "q4"}},
     "defaults": {"dtype": "q4", "device": "webgpu"}}

``defaults`` (optional) marks a repo in the transformers.js layout that is loaded by transformers.js'
rules: when nothing names a dtype, a module gets ``defaults["dtype"]`` (a name, or ``{module: name}``;
it comes from ``transformers.js_config`` in config.json) when the repo has it, else the device default;
``device="auto"`` prefers ``defaults["device"]``; and ``dtype="auto"`` without a quality report prefers
those defaults too (see ``runtime.plan``). A manifest made by ``store.discover`` (``"discovered"``: how
its files were found) may lack a file's sha256 until its first download records one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..dtypes import CPU_MATMUL_ON_WEBGPU
from .layout import group_variants

MANIFEST_PATH = "onnx/manifest.json"
#: the quantization report's place in a repo (the manifest does not list it: it is written after)
REPORT_PATH = "quantization_report.json"
FORMAT = "webformers-manifest/1"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _onnx_ops(path) -> list[str]:
    try:
        import onnx
    except ImportError:  # the runtime never writes manifests; the toolchain has onnx
        return []
    m = onnx.load(str(path), load_external_data=False)
    return sorted({n.op_type for n in m.graph.node})


def build_manifest(repo_dir, modules, defaults: dict | None = None) -> dict:
    """Describe every file under ``repo_dir`` (hidden files and folders, e.g. ``.git``, left out);
    ``modules`` names the ONNX modules (e.g. ["model"]); ``defaults`` (see the module docstring) is
    stored when given."""
    repo = Path(repo_dir)
    files: dict[str, dict] = {}
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo).as_posix()
        if (not p.is_file() or rel == MANIFEST_PATH or rel.startswith("quantization_report") or rel.endswith(".png")
                or any(part.startswith(".") for part in rel.split("/"))):
            continue
        files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    mods: dict[str, dict] = {}
    for module, variants in group_variants(files, modules).items():
        mods[module] = {}
        for dtype, group in variants.items():
            for f in group:
                files[f].update(module=module, dtype=dtype)
            mods[module][dtype] = {
                "files": group,
                "bytes": sum(files[f]["size"] for f in group),
                "ops": _onnx_ops(repo / group[0]),
                "cpu_matmul_on_webgpu": dtype in CPU_MATMUL_ON_WEBGPU,
            }
    out = {"format": FORMAT, "modules": mods, "files": files}
    if defaults is not None:
        out["defaults"] = dict(defaults)
    return out


def write_manifest(repo_dir, modules, defaults: dict | None = None) -> dict:
    man = build_manifest(repo_dir, modules, defaults)
    out = Path(repo_dir) / MANIFEST_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(man, indent=1, sort_keys=False))
    os.replace(tmp, out)
    return man


class Manifest:
    """Read side of the manifest, used by the runtime."""

    def __init__(self, data: dict, repo: str = "model"):
        if data.get("format") != FORMAT:
            raise ValueError(f"{repo}: {MANIFEST_PATH} has format {data.get('format')!r}, expected {FORMAT!r}")
        self.data = data
        self.repo = repo

    @classmethod
    def from_json(cls, text, repo: str = "model") -> "Manifest":
        return cls(json.loads(text), repo)

    @property
    def modules(self) -> dict[str, list[str]]:
        """{module: [dtypes the repo has]}"""
        return {m: list(v) for m, v in self.data["modules"].items()}

    def variant(self, module: str, dtype: str) -> dict:
        try:
            return self.data["modules"][module][dtype]
        except KeyError:
            raise ValueError(self.missing_message(module, dtype)) from None

    def has(self, module: str, dtype: str) -> bool:
        return dtype in self.data["modules"].get(module, {})

    def missing_message(self, module: str, dtype: str) -> str:
        if module not in self.data["modules"]:
            return f"{self.repo} has no module {module!r}; its modules: {', '.join(self.data['modules'])}"
        have = "; ".join(f"{m}: {', '.join(v)}" for m, v in self.modules.items())
        return f"{self.repo} has no {dtype!r} variant of module {module!r}; available dtypes per module: {have}"

    def entry(self, path: str) -> dict | None:
        return self.data["files"].get(path)

    def add_file(self, path: str, entry: dict) -> dict:
        """List ``path`` (a file of a discovered repo, found when first read) with ``entry``."""
        self.data["files"][path] = entry
        return entry

    @property
    def defaults(self) -> dict | None:
        """How the repo is loaded when nothing names a dtype / device (see the module docstring), or None."""
        return self.data.get("defaults")

    @property
    def discovered(self) -> str | None:
        """How the files of a repo without ``onnx/manifest.json`` were found ("listing", "directory",
        "probe", "cache"), or None for a manifest the repo has."""
        return self.data.get("discovered")
