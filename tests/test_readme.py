"""The README's measured tables are generated from the reports they quote (docs/reports/), and those
reports describe the demo models this checkout builds."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from buildtools import readme

ROOT = Path(__file__).resolve().parent.parent
SITE_MODELS = Path(os.environ.get("WEBFORMERS_DIST", ROOT / "dist")) / "site" / "models"


def test_readme_tables_are_the_reports_rendered():
    text = readme.README.read_text()
    found = readme.blocks(text)
    assert set(found) == set(readme.SOURCES) | set(readme.OPT_IN), f"README report blocks: {sorted(found)}"
    assert readme.render(text) == text, "README tables differ from docs/reports/: run python3 build.py readme"


def test_opt_in_reports_measure_the_demo_model():
    """An opt-in build's report (SmolLM2's budget variant) is of the same source model as the demo's: its fp32
    row is the demo report's, and its own rows say how they were made."""
    demo = readme.load("smollm2")["modules"]["model"]
    budget = readme.load("smollm2-budget")["modules"]["model"]
    assert budget["fp32"]["bytes"] == demo["fp32"]["bytes"]
    assert budget["qmix"]["method"] == "budget" and budget["qmix"]["bytes"] <= 0.12 * demo["fp32"]["bytes"]


def test_render_replaces_a_stale_table():
    stale = "x\n<!-- report:smollm2 -->\n| made up |\n<!-- /report -->\ny\n"
    out = readme.render(stale)
    assert "made up" not in out and "| q4 |" in out and out.startswith("x\n") and out.endswith("y\n")


@pytest.mark.parametrize("name", sorted(readme.SOURCES))
def test_quoted_report_matches_the_built_model(name):
    built = SITE_MODELS / readme.SOURCES[name] / "quantization_report.json"
    if not built.is_file():
        pytest.fail(f"{built} is missing: build the demo models (python3 build.py build)")
    got, quoted = json.loads(built.read_text()), readme.load(name)
    assert {m: sorted(v) for m, v in got["modules"].items()} == {m: sorted(v) for m, v in quoted["modules"].items()}, \
        "the built model has other variants than the README quotes: python3 build.py readme --from-site"
    for module, variants in got["modules"].items():
        for dtype, row in variants.items():
            q = quoted["modules"][module][dtype]
            assert row["bytes"] == q["bytes"], f"{name} {module} {dtype}: built {row['bytes']} B, quoted {q['bytes']} B"
            for key in ("kl", "top1"):  # quality depends on float summation order: close, not equal
                if key in row and row[key] is not None:
                    assert math.isclose(row[key], q[key], rel_tol=0.15, abs_tol=0.02), (name, module, dtype, key)
    if got.get("grid"):
        wer = lambda rep: {tuple(sorted((k, v) for k, v in g.items() if k != "wer" and isinstance(v, str))): g["wer"]
                           for g in rep["grid"]}  # noqa: E731
        a, b = wer(got), wer(quoted)
        assert a.keys() == b.keys()
        # greedy transcripts of a usable pair move by a few words between builds (onnxruntime's threaded
        # sums); a broken pair (quoted WER > 0.5, e.g. a q2 encoder) moves by whole sentences
        usable = [k for k in a if b[k] <= 0.5]
        assert usable and max(abs(a[k] - b[k]) for k in usable) <= 0.1, "the WER grid moved by more than ~8 words"
        assert all(a[k] > 0.3 for k in a if b[k] > 0.5), "a pair the README calls broken is no longer broken"


@pytest.mark.parametrize("name", sorted(readme.SOURCES))
def test_built_bytes_do_not_depend_on_the_checkout_path(name):
    """The exporter writes each node's stack trace (with absolute source paths) into the graph; they are
    stripped, or the quoted byte counts would hold only for a clone at the same path."""
    onnx_dir = SITE_MODELS / readme.SOURCES[name] / "onnx"
    files = sorted(onnx_dir.glob("*.onnx"))
    assert files, f"no .onnx files in {onnx_dir}: build the demo models (python3 build.py build)"
    leaked = [f.name for f in files if str(ROOT).encode() in f.read_bytes()]
    assert not leaked, f"these files contain the checkout path {ROOT}: {leaked}"
