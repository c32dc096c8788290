"""The ``webformers site`` and ``webformers serve`` commands (added to ``webformers.cli``)."""
from __future__ import annotations

import sys


def _site(a) -> int:
    from . import SiteError, build_site

    try:
        site = build_site(a.out, models=a.model or [], app=a.app, page=a.page, index=a.index, cache=a.cache,
                          log=(lambda *_: None) if a.quiet else (lambda m: print(m, file=sys.stderr)))
    except SiteError as e:
        print(f"webformers site: error: {e}", file=sys.stderr)
        return 2
    b = site["build"]
    print(f"wrote {a.out} in {b['seconds']} s ({b['written']} files written, {b['unchanged']} unchanged; "
          f"models: {', '.join(site['models']) or 'none'}); serve it with: webformers serve {a.out}")
    if a.jupyterlite is not None:
        from .jupyterlite import build_jupyterlite

        try:
            lite = build_jupyterlite(a.out, model=a.jupyterlite or None, cache=a.cache,
                                     log=(lambda *_: None) if a.quiet else (lambda m: print(m, file=sys.stderr)))
        except SiteError as e:
            print(f"webformers site: error: {e}", file=sys.stderr)
            return 2
        print(f"JupyterLite in {lite['dir']} ({'built' if lite['built'] else 'unchanged'}); its notebook, "
              f"running {lite['model']} {lite['dtype']}: {lite['notebook']}")
    return 0


def _serve(a) -> int:
    from .server import serve

    try:
        srv = serve(a.dir, a.port, verbose=a.verbose, host=a.host)
    except (FileNotFoundError, OSError) as e:
        print(f"webformers serve: error: {e}", file=sys.stderr)
        return 2
    print(f"serving {a.dir} at {srv.url}/ (cross-origin isolated; Ctrl-C stops)", flush=True)
    try:
        srv.thread.join()
    except KeyboardInterrupt:
        srv.stop()
    return 0


def add_commands(sub) -> None:
    """Add ``site`` and ``serve`` to the argparse subparsers ``sub``."""
    s = sub.add_parser("site", help="assemble a static site: your model repos, your Python app, Pyodide, "
                                    "onnxruntime-web (pinned, sha256-checked, cached)")
    s.add_argument("out", help="the site folder to write (created; a rebuild only rewrites what changed)")
    s.add_argument("--model", action="append", metavar="[ID=]REPO_DIR[:DTYPE,...]",
                   help="a model repo to serve under models/ID/ (repeatable); :q4,fp16 serves only those dtypes; "
                        "ID defaults to the id the converter recorded, else the folder name")
    s.add_argument("--app", help="a Python file the page runs once webformers is installed (top-level await "
                                 "allowed); default with the default page: a chat with the site's models")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--page", help="a folder copied as the page (with its own index.html)")
    g.add_argument("--index", help="an index.html for the page (the loader's script tag is added if missing)")
    s.add_argument("--jupyterlite", nargs="?", const="", metavar="MODEL_ID",
                   help="also build OUT/jupyterlite/: JupyterLite (pip install 'webformers[jupyterlite]') whose "
                        "shipped notebook installs webformers and generates with MODEL_ID (default: the site's "
                        "first text-generation model)")
    s.add_argument("--cache", help="download cache (default ~/.cache/webformers/site)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=_site)
    v = sub.add_parser("serve", help="serve a site folder with COOP/COEP (cross-origin isolated) and print its URL")
    v.add_argument("dir", help="the site folder (from `webformers site`)")
    v.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--verbose", action="store_true", help="log every request")
    v.set_defaults(func=_serve)
