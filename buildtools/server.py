"""The dev server for dist/site: the package's COOP/COEP static server (``webformers.site.server``).

``serve(root, port)`` returns a running server (in a thread); ``SiteServer`` has the test hooks
(``log``, ``requests_for``, ``fail_after``, ``add_root``) documented there.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pysrc"))
from webformers.site.server import MIME, Handler, SiteServer  # noqa: E402,F401
from webformers.site.server import serve as _serve  # noqa: E402


def serve(root, port=0, verbose=False) -> SiteServer:
    if not (Path(root) / "index.html").exists():
        raise SystemExit(f"{root} has no index.html: run `python build.py build` first")
    return _serve(root, port, verbose=verbose)


if __name__ == "__main__":  # pragma: no cover
    s = serve(os.environ.get("SITE", "dist/site"), 8000, verbose=True)
    print(s.url)
    s.thread.join()
