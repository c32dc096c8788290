"""The quantization report (``quantization_report.json``, written by ``webformers convert``): reading it and
rendering it as a plain-text table (``webformers report``) or as Markdown (the README's tables).

A report has ``modules`` → ``{module: {dtype: row}}`` with a row's ``bytes``, ``ratio`` (× fp32),
``bits_per_weight``, ``kl``, ``top1``, ``perplexity``, ``greedy_agreement`` and ``method`` (how a low-bit
variant was made), and, for two-module speech models, a ``grid`` of WER per encoder × decoder pair plus the
``recommended`` pair.
"""
from __future__ import annotations

import json
from pathlib import Path

REPORT_FILE = "quantization_report.json"
_DECODER_COLUMNS = ("dtype", "method", "bytes", "× fp32", "bits/weight", "KL", "top-1", "ppl", "greedy")


def load_report(repo) -> dict:
    """The report of the repo directory ``repo``; FileNotFoundError naming the file when there is none."""
    p = Path(repo) / REPORT_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{repo}: no {REPORT_FILE} (convert without --no-report)")
    return json.loads(p.read_text())


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _kl(x) -> str:
    if x is None:
        return "-"
    return "0" if x == 0 else (f"{x:.1e}" if x < 0.01 else f"{x:.3g}")


def _ppl(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.2f}"


def decoder_rows(report: dict) -> list[tuple[str, ...]]:
    """One row per (module, dtype) of a single-stream (decoder) report, formatted for a table."""
    rows = []
    for module, variants in report["modules"].items():
        for d, r in variants.items():
            rows.append((module, d, r.get("method", "-"), f"{r['bytes']:,}", _num(r.get("ratio"), ".3f"),
                         _num(r.get("bits_per_weight"), ".2f"), _kl(r.get("kl")), _num(r.get("top1"), ".3f"),
                         _ppl(r.get("perplexity")), _num(r.get("greedy_agreement"), ".3f")))
    return rows


def grid_tables(report: dict):
    """(encoder names, decoder names, {(enc, dec): wer}, {module: {dtype: bytes}}) of a speech report."""
    enc, dec = list(report["modules"])[:2]
    encs, decs = list(report["modules"][enc]), list(report["modules"][dec])
    wer = {(g[enc], g[dec]): g["wer"] for g in report["grid"]}
    sizes = {m: {d: v["bytes"] for d, v in report["modules"][m].items()} for m in (enc, dec)}
    return (enc, encs), (dec, decs), wer, sizes


def _text_table(cols, rows, left: int = 1) -> list[str]:
    """Aligned plain-text table; the first ``left`` columns are labels (left-aligned), the rest numbers."""
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) if i < left else v.rjust(w)  # noqa: E731
                                  for i, (v, w) in enumerate(zip(vals, widths)))
    return [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _md_table(cols, rows, left: int = 1) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(cols))) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _recommended_line(report: dict, enc: str, dec: str) -> str | None:
    r = report.get("recommended")
    if not r:
        return None
    return (f"recommended ({r.get('rule', '')}): {enc} {r[enc]} + {dec} {r[dec]}, WER {r['wer']:.3f}, "
            f"{r['bytes'] / 1e6:.1f} MB (fp32: WER {r.get('fp32_wer', float('nan')):.3f}, "
            f"{r.get('fp32_bytes', 0) / 1e6:.1f} MB)")


def _grid(report: dict, table) -> list[str]:
    (enc, encs), (dec, decs), wer, sizes = grid_tables(report)
    bold = (lambda s: f"**{s}**") if table is _md_table else (lambda s: s)
    out = table([f"{enc.split('_')[0]} \\ {dec.split('_')[0]}" if table is _md_table else enc.split("_")[0]] + decs,
                [[bold(e)] + [f"{wer[e, d]:.3f}" if (e, d) in wer else "-" for d in decs] for e in encs])
    out.append("")
    out += table(["MB"] + encs, [[m.split("_")[0]] + [f"{sizes[m][d] / 1e6:.1f}" if d in sizes[m] else "-"
                                                    for d in encs] for m in (enc, dec)])
    return out


def format_table(report: dict) -> str:
    """The report as a plain-text table (``webformers report``)."""
    if report.get("grid"):
        (enc, _), (dec, _), _, _ = grid_tables(report)
        out = [f"WER, {enc} (rows) x {dec} (columns):"] + _grid(report, _text_table)
        rec = _recommended_line(report, enc, dec)
        return "\n".join(out + ([f"\n{rec}"] if rec else []))
    out = _text_table(("module",) + _DECODER_COLUMNS, decoder_rows(report), left=3)
    e = report.get("eval")
    if e:
        out.append(f"\nheld-out: {e.get('positions')} positions; greedy: {len(e.get('prompts', []))} prompts x "
                   f"{e.get('new_tokens')} tokens; eval time {e.get('seconds')} s")
    t = report.get("timings")
    if t:
        out.append("timings (s): " + ", ".join(f"{k} {v}" for k, v in t.items()))
    return "\n".join(out)


def format_markdown(report: dict) -> str:
    """The report as Markdown tables (decoder: one row per dtype; speech: the WER grid and the sizes)."""
    if report.get("grid"):
        return "\n".join(_grid(report, _md_table))
    modules = list(report["modules"])
    rows = decoder_rows(report)
    if len(modules) == 1:
        return "\n".join(_md_table(_DECODER_COLUMNS, [r[1:] for r in rows], left=2))
    return "\n".join(_md_table(("module",) + _DECODER_COLUMNS, rows, left=3))
