"""The model repos of a site: ``[ID=]REPO_DIR[:dtype,dtype...]`` -> the files to serve under models/ID/.

A repo is a ``webformers convert`` output (``onnx/manifest.json``) or one exported elsewhere in the
transformers.js layout (config.json + ``onnx/{module}{suffix}.onnx``): then its manifest is made here, as
``webformers manifest`` would. With a dtype list only those variants' files are served, and the manifest and
``quantization_report.json`` the site serves list only them. Every file served is checked against the
manifest's sha256.

The model id (the name a page loads it by) is ``ID=`` when given, else the id the toolchain recorded in
``.webformers-build.json``, else the folder's name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..dtypes import DTYPES
from ..store.manifest import MANIFEST_PATH, REPORT_PATH, build_manifest
from .sources import SiteError


@dataclass
class ModelPlan:
    id: str
    src: Path
    dtypes: list[str] | None           # None: every dtype the repo has
    manifest: dict                     # as served (subset)
    files: dict[str, str] = field(default_factory=dict)  # repo path -> sha256 it must have
    report: dict | None = None         # as served (subset), None when the repo has none

    @property
    def task(self) -> str:
        return "automatic-speech-recognition" if "encoder_model" in self.manifest["modules"] else "text-generation"

    def index_entry(self) -> dict:
        mods = self.manifest["modules"]
        return {"id": self.id, "task": self.task, "modules": {m: list(v) for m, v in mods.items()},
                "bytes": {m: {d: v["bytes"] for d, v in dts.items()} for m, dts in mods.items()}}


def parse_model_arg(arg: str) -> tuple[str | None, Path, list[str] | None]:
    """``[ID=]REPO_DIR[:dtype,dtype...]`` -> (id or None, dir, dtypes or None). A directory whose path has
    a ``=`` is taken as a path when it exists (``ID=`` is only split off otherwise)."""
    model_id, rest = None, arg
    if "=" in arg and not Path(_split_dtypes(arg, arg)[0]).is_dir():
        model_id, rest = arg.split("=", 1)
    rest, dtypes = _split_dtypes(rest, arg)
    return (model_id or None), Path(rest), dtypes


def _split_dtypes(rest: str, arg: str) -> tuple[str, list[str] | None]:
    head, sep, tail = rest.rpartition(":")
    if not (sep and head and "/" not in tail and "\\" not in tail):
        return rest, None
    dtypes = [d.strip() for d in tail.split(",") if d.strip()]
    if not dtypes:
        raise SiteError(f"--model {arg}: no dtype after ':' (e.g. {head}:q4,fp16)")
    return head, dtypes


def _repo_manifest(repo: Path) -> dict:
    man_path = repo / MANIFEST_PATH
    if man_path.is_file():
        try:
            return json.loads(man_path.read_text())
        except ValueError as e:
            raise SiteError(f"{man_path} is not valid JSON: {e}") from None
    from ..store.layout import config_defaults, repo_modules

    if not (repo / "config.json").is_file():
        raise SiteError(f"{repo} is not a model repo: it has neither {MANIFEST_PATH} nor config.json "
                        f"(make one with `webformers convert SRC {repo}`)")
    config = json.loads((repo / "config.json").read_text())
    defaults, _ = config_defaults(config)
    man = build_manifest(repo, repo_modules(config), defaults or None)
    if not any(man["modules"].values()):
        raise SiteError(f"{repo} has no model files: expected onnx/{{module}}{{suffix}}.onnx")
    return man


def _model_id(repo: Path, given: str | None) -> str:
    if given:
        mid = given.strip("/")
    else:
        mid = repo.resolve().name
        build = repo / ".webformers-build.json"
        if build.is_file():
            try:
                mid = json.loads(build.read_text()).get("model") or mid
            except ValueError:
                pass
    if not mid or any(p in ("", ".", "..") for p in mid.split("/")):
        raise SiteError(f"model id {mid!r} of {repo} is not a path like org/name")
    return mid


def plan_model(arg: str) -> ModelPlan:
    """Check one ``--model`` argument and say what the site serves of it."""
    given_id, repo, dtypes = parse_model_arg(arg)
    if not repo.is_dir():
        raise SiteError(f"--model {arg}: {repo} is not a directory (a `webformers convert` output, or a repo in "
                        f"the transformers.js layout)")
    man = _repo_manifest(repo)
    mods = man.get("modules") or {}
    have = sorted({d for v in mods.values() for d in v}, key=lambda d: list(DTYPES).index(d) if d in DTYPES else 99)
    if dtypes is not None:
        unknown = [d for d in dtypes if d not in have]
        if unknown:
            kind = "unknown dtype" if any(d not in DTYPES for d in unknown) else "dtype not in this repo"
            raise SiteError(f"--model {arg}: {kind} {', '.join(unknown)}; {repo} has: {', '.join(have)}")
        mods = {m: {d: v for d, v in dts.items() if d in dtypes} for m, dts in mods.items()}
        empty = [m for m, v in mods.items() if not v]
        if empty:
            raise SiteError(f"--model {arg}: module {', '.join(empty)} has none of {', '.join(dtypes)}; it has: "
                            + "; ".join(f"{m}: {', '.join(man['modules'][m])}" for m in empty))
    keep = set(dtypes) if dtypes is not None else None
    files = {p: e for p, e in man["files"].items() if keep is None or e.get("dtype") is None or e["dtype"] in keep}
    served = {**man, "modules": mods, "files": files}
    defaults = dict(man.get("defaults") or {})
    if keep is not None and isinstance(defaults.get("dtype"), str) and defaults["dtype"] not in keep:
        defaults.pop("dtype")  # the repo's default variant is not served: the device default applies
    if isinstance(defaults.get("dtype"), dict) and keep is not None:
        defaults["dtype"] = {m: d for m, d in defaults["dtype"].items() if d in keep} or None
        if defaults["dtype"] is None:
            defaults.pop("dtype")
    if "defaults" in man:
        served["defaults"] = defaults
    report = None
    if (repo / REPORT_PATH).is_file():
        try:
            report = json.loads((repo / REPORT_PATH).read_text())
        except ValueError as e:
            raise SiteError(f"{repo / REPORT_PATH} is not valid JSON: {e}") from None
        if keep is not None and isinstance(report.get("modules"), dict):
            report = {**report, "modules": {m: {d: r for d, r in rows.items() if d in keep}
                                            for m, rows in report["modules"].items()}}
    missing = [p for p in files if not (repo / p).is_file()]
    if missing:
        raise SiteError(f"{repo}: files its manifest lists are missing: {', '.join(missing[:5])}")
    return ModelPlan(id=_model_id(repo, given_id), src=repo, dtypes=dtypes, manifest=served,
                     files={p: e["sha256"] for p, e in files.items()}, report=report)
