"""``webformers`` command line: ``convert`` (model → quantized ONNX repo) and ``report`` (quality table)."""
from __future__ import annotations

import argparse
import sys


def _convert(a) -> int:
    from .toolchain.convert import ConvertError, convert

    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    try:
        res = convert(a.src, a.out, dtypes=dtypes, external_data=a.external_data, report=not a.no_report,
                      log=(lambda *_: None) if a.quiet else (lambda m: print(m, file=sys.stderr)))
    except (ConvertError, ValueError) as e:
        print(f"webformers convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {res['out']} ({', '.join(res['dtypes'])}) in {res['timings']['total']:.1f} s")
    if res["report"]:
        from .toolchain.evaluate import format_table

        print(format_table(res["report"]))
    return 0


def _report(a) -> int:
    from .toolchain.evaluate import format_table, load_report

    try:
        rep = load_report(a.repo)
    except (FileNotFoundError, ValueError) as e:
        print(f"webformers report: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rep))
    return 0


def main(argv=None) -> int:
    from .toolchain.quantize import SUPPORTED

    ap = argparse.ArgumentParser(prog="webformers", description="webformers desktop toolchain")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert a Hugging Face model dir or a .gguf file into a model repo")
    c.add_argument("src", help="Hugging Face model directory (config.json + *.safetensors) or a .gguf file")
    c.add_argument("out", help="output repo directory (must not exist, or be empty)")
    c.add_argument("--dtypes", default=",".join(SUPPORTED), help=f"comma-separated (default: all: {','.join(SUPPORTED)})")
    c.add_argument("--external-data", action="store_true", help="store weights in onnx/model{suffix}.onnx_data")
    c.add_argument("--no-report", action="store_true", help="skip the quality evaluation and chart")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=_convert)
    r = sub.add_parser("report", help="print a repo's quantization_report.json as a table")
    r.add_argument("repo")
    r.set_defaults(func=_report)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
