"""Pure-Python wheels that webformers needs inside Pyodide: jinja2 and a pure markupsafe.

The work is the package's (``webformers.site.wheels``: MarkupSafe's PyPI sdist written into a
``py3-none-any`` wheel without its ``_speedups`` C extension, jinja2's wheel as it is; both downloads pinned
by sha256, see ``webformers.site.sources.PYPI``); this module keeps the repo's entry point.

Usage: ``build_pure_wheels(dest_dir, cache_dir) -> [jinja2 wheel, markupsafe wheel]`` (install markupsafe
first with micropip), or ``python -m buildtools.pywheels DEST [--cache DIR]``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pysrc"))
from webformers.site.sources import PYPI, SiteError, Sources, sha256_file  # noqa: E402
from webformers.site.wheels import pure_markupsafe, verify_pure_wheels  # noqa: E402

WheelBuildError = SiteError


def build_pure_wheels(dest_dir: Path, cache_dir: Path) -> list[Path]:
    """Produce the jinja2 wheel and a pure-Python markupsafe wheel in ``dest_dir``; return their paths.

    Order of the result: [jinja2, markupsafe]. Downloads are cached under ``cache_dir``; the wheels are
    verified (imported alone in a clean interpreter) on every call.
    """
    src = Sources(Path(cache_dir))
    jinja = src.pypi_file("jinja2")
    built = Path(cache_dir) / f"markupsafe-pure-{PYPI['markupsafe']['sha256'][:16]}"
    ms = pure_markupsafe(src.pypi_file("markupsafe"), built)
    verify_pure_wheels([jinja, ms])
    src.hasher.save()
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for w in (jinja, ms):
        target = dest_dir / w.name
        if not target.exists() or sha256_file(target) != sha256_file(w):
            shutil.copy2(w, target)
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "webformers" / "pywheels")
    args = ap.parse_args(argv)
    for w in build_pure_wheels(args.dest, args.cache):
        print(w, sha256_file(w))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
