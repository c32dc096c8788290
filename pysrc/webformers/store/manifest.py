"""A model repo's manifest (``onnx/manifest.json``): every file's size and sha256, and per module the
dtypes the repo has, their files, bytes and ops. The toolchain writes it; the runtime reads it for
integrity checks and to know which dtypes exist.

Format::

    {"format": "webformers-manifest/1",
     "modules": {"model": {"q4": {"files": ["onnx/model_q4.onnx"], "bytes": 123,
                                  "ops": ["GatherBlockQuantized", "MatMulNBits", ...],
                                  "cpu_matmul_on_webgpu": false}}},
     "files": {"config.json": {"size": 1, "sha256": "..."},
               "onnx/model_q4.onnx": {"size": 1, "sha256": "...", "module": "model", "dtype": "q4"}}}
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..dtypes import CPU_MATMUL_ON_WEBGPU, DTYPES, dtype_of_file

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


def build_manifest(repo_dir, modules) -> dict:
    """Describe every file under ``repo_dir``; ``modules`` names the ONNX modules (e.g. ["model"])."""
    repo = Path(repo_dir)
    files: dict[str, dict] = {}
    mods: dict[str, dict] = {m: {} for m in modules}
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo).as_posix()
        if not p.is_file() or rel == MANIFEST_PATH or rel.startswith("quantization_report") or rel.endswith(".png"):
            continue
        files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    for rel in list(files):
        md = dtype_of_file(rel, modules)
        if md is None:
            continue
        module, dtype = md
        group = [rel] + [f for f in files if f.startswith(rel + "_data") or f.startswith(rel + ".data")]
        for f in group:
            files[f].update(module=module, dtype=dtype)
        mods[module][dtype] = {
            "files": group,
            "bytes": sum(files[f]["size"] for f in group),
            "ops": _onnx_ops(repo / rel),
            "cpu_matmul_on_webgpu": dtype in CPU_MATMUL_ON_WEBGPU,
        }
    order = list(DTYPES)
    mods = {m: dict(sorted(v.items(), key=lambda kv: order.index(kv[0]))) for m, v in mods.items()}
    return {"format": FORMAT, "modules": mods, "files": files}


def write_manifest(repo_dir, modules) -> dict:
    man = build_manifest(repo_dir, modules)
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
