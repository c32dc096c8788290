"""``webformers`` command line: ``convert`` (model → quantized ONNX repo), ``report`` (quality table),
``manifest`` (an ``onnx/manifest.json`` for a repo exported elsewhere, e.g. an onnx-community one), ``site``
(a static site of your models and your app) and ``serve`` (serve it, cross-origin isolated)."""
from __future__ import annotations

import argparse
import sys


def _convert(a) -> int:
    from .toolchain.convert import ConvertError, convert

    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    try:
        res = convert(a.src, a.out, dtypes=dtypes, external_data=a.external_data, report=not a.no_report,
                      calibrate=not a.no_calibrate, qat_steps=a.qat, budget=a.budget,
                      log=(lambda *_: None) if a.quiet else (lambda m: print(m, file=sys.stderr)))
    except (ConvertError, ValueError) as e:
        print(f"webformers convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {res['out']} ({', '.join(res['dtypes'])}) in {res['timings']['total']:.1f} s")
    if res["report"]:
        from .report import format_table

        print(format_table(res["report"]))
    return 0


def _report(a) -> int:
    from .report import format_markdown, format_table, load_report

    try:
        rep = load_report(a.repo)
    except (FileNotFoundError, ValueError) as e:
        print(f"webformers report: error: {e}", file=sys.stderr)
        return 2
    print(format_markdown(rep) if a.markdown else format_table(rep))
    return 0


def _manifest(a) -> int:
    import json
    from pathlib import Path

    from .store.layout import config_defaults, data_chunks, group_variants, repo_modules
    from .store.manifest import MANIFEST_PATH, write_manifest

    def fail(msg: str) -> int:
        print(f"webformers manifest: error: {msg}", file=sys.stderr)
        return 2

    repo = Path(a.repo)
    if not repo.is_dir():
        return fail(f"{repo} is not a directory")
    config = {}
    if (repo / "config.json").is_file():
        try:
            config = json.loads((repo / "config.json").read_text())
        except ValueError as e:
            return fail(f"{repo / 'config.json'} is not valid JSON: {e}")
    if a.modules:
        modules = [m.strip() for m in a.modules.split(",") if m.strip()]
    elif config:
        modules = repo_modules(config)
    else:
        return fail(f"{repo} has no config.json to tell its modules: pass --modules (e.g. model, or "
                    f"encoder_model,decoder_model_merged)")
    onnx = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.onnx"))
    variants = group_variants(onnx, modules)
    if not any(variants.values()):
        return fail(f"no model files of the module(s) {', '.join(modules)} in {repo / 'onnx'}: expected "
                    f"onnx/{{module}}{{suffix}}.onnx (suffixes as transformers.js: '', _fp16, _quantized, _q4, ...); "
                    f"found: {', '.join(onnx) or 'no .onnx files'}")
    defaults, notes = config_defaults(config)
    used = {f for v in variants.values() for fs in v.values() for f in fs}
    notes += [f"{f} is not a file of the module(s) {', '.join(modules)}: listed, but never loaded"
              for f in onnx if f not in used]
    try:
        notes += [f"{fs[0]}: transformers.js_config names {n} external data file(s), the repo has {len(fs) - 1}"
                  for m, v in variants.items() for fs in v.values()
                  if (n := data_chunks(config, fs[0], m)) is not None and n != len(fs) - 1]
    except ValueError as e:
        return fail(str(e))
    for n in notes:
        print(f"webformers manifest: warning: {n}", file=sys.stderr)
    man = write_manifest(repo, modules, defaults)
    have = "; ".join(f"{m}: {', '.join(v)}" for m, v in man["modules"].items() if v)
    print(f"wrote {repo / MANIFEST_PATH} ({len(man['files'])} files; {have})")
    return 0


def main(argv=None) -> int:
    from .toolchain.convert import DECODER_DTYPES as SUPPORTED

    ap = argparse.ArgumentParser(prog="webformers", description="webformers desktop toolchain")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert a Hugging Face model dir or a .gguf file into a model repo")
    c.add_argument("src", help="Hugging Face model directory (config.json + *.safetensors) or a .gguf file")
    c.add_argument("out", help="output repo directory (must not exist, or be empty)")
    c.add_argument("--dtypes", default=",".join(SUPPORTED), help=f"comma-separated (default: all: {','.join(SUPPORTED)})")
    c.add_argument("--external-data", nargs="?", const="auto", default=False, metavar="N|auto",
                   help="store weights in onnx/model{suffix}.onnx_data, _data_1, ...: N files per variant, or "
                        "'auto' (the default with the flag: files of at most 1 GiB)")
    c.add_argument("--no-report", action="store_true", help="skip the quality evaluation and chart")
    c.add_argument("--no-calibrate", action="store_true",
                   help="low-bit variants (q2, q1, ...) by plain rounding instead of GPTQ calibration")
    c.add_argument("--qat", type=int, default=0, metavar="STEPS",
                   help="quantization-aware training steps for the q2 / q1 variants (default 0: none)")
    c.add_argument("--budget", type=float, default=None, metavar="F",
                   help="also build qmix: bits per layer chosen so the file is <= F x the fp32 bytes (e.g. 0.12)")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=_convert)
    r = sub.add_parser("report", help="print a repo's quantization_report.json as a table")
    r.add_argument("repo")
    r.add_argument("--markdown", action="store_true", help="Markdown tables (as quoted in the README)")
    r.set_defaults(func=_report)
    m = sub.add_parser("manifest", help="write onnx/manifest.json (sizes, sha256, dtypes) into a repo exported "
                                        "elsewhere (transformers.js layout), so every file is verified")
    m.add_argument("repo", help="the repo directory (config.json, onnx/{module}{suffix}.onnx, ...)")
    m.add_argument("--modules", help="comma-separated ONNX modules (default: from config.json: model, or "
                                     "encoder_model,decoder_model_merged for an encoder-decoder)")
    m.set_defaults(func=_manifest)
    from .site.cli import add_commands

    add_commands(sub)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
