"""The README's measured tables, generated from the quantization reports they quote.

The reports live in ``docs/reports/<name>.json`` (copies of the demo models' ``quantization_report.json``,
committed because the README quotes them; :data:`OPT_IN` ones come from opt-in builds). Each table in README.md sits between ``<!-- report:<name> -->``
and ``<!-- /report -->`` and is exactly ``webformers report --markdown`` of that file.

    python3 build.py readme              # rewrite the README's tables from docs/reports/
    python3 build.py readme --from-site  # first copy the reports of the built demo models (dist/site/models)
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REPORTS = ROOT / "docs" / "reports"
#: report name -> the demo model repo (under dist/site/models) it is copied from
SOURCES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "whisper-tiny.en": "openai/whisper-tiny.en"}
#: reports of opt-in builds the default build does not make (quoted as measured once): name -> how to remake it
OPT_IN = {"smollm2-budget": "WEBFORMERS_SMOLLM2_BUDGET=0.12 python3 build.py build, then copy the SmolLM2 "
                            "repo's quantization_report.json"}
_BLOCK = re.compile(r"(<!-- report:([\w.-]+) -->\n)(.*?)(<!-- /report -->)", re.S)


def _format_markdown():
    sys.path.insert(0, str(ROOT / "pysrc"))
    from webformers.report import format_markdown

    return format_markdown


def load(name: str) -> dict:
    p = REPORTS / f"{name}.json"
    if not p.is_file():
        raise SystemExit(f"README quotes report {name!r} but {p} is missing (python3 build.py readme --from-site)")
    return json.loads(p.read_text())


def render(text: str) -> str:
    """``text`` (the README) with every report block regenerated."""
    fmt = _format_markdown()
    return _BLOCK.sub(lambda m: f"{m.group(1)}{fmt(load(m.group(2)))}\n{m.group(4)}", text)


def blocks(text: str) -> dict[str, str]:
    """{report name: the table text} of every report block in ``text``."""
    return {m.group(2): m.group(3) for m in _BLOCK.finditer(text)}


def copy_from_site(site_models: Path) -> list[Path]:
    REPORTS.mkdir(parents=True, exist_ok=True)
    out = []
    for name, repo in SOURCES.items():
        src = site_models / repo / "quantization_report.json"
        if not src.is_file():
            raise SystemExit(f"{src} is missing: build the demo models first (python3 build.py build)")
        shutil.copyfile(src, REPORTS / f"{name}.json")
        out.append(REPORTS / f"{name}.json")
    return out


def main(from_site: bool = False, site_models: Path | None = None) -> None:
    if from_site:
        for p in copy_from_site(site_models or ROOT / "dist" / "site" / "models"):
            print(f"[readme] copied {p.relative_to(ROOT)}")
    text = README.read_text()
    new = render(text)
    if new != text:
        README.write_text(new)
        print("[readme] README.md tables regenerated")
    else:
        print("[readme] README.md tables already match docs/reports/")
