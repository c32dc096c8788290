"""``webformers site`` / ``webformers serve``: your models and your Python in a static site of your own.

    from webformers.site import build_site, serve
    build_site("out", models=["my-repo:q4"], app="app.py")   # -> site.json (+ "build": timings)
    srv = serve("out", port=8000); print(srv.url)

The site needs no server logic and nothing outside its origin: Pyodide 0.27.7, its numpy / micropip /
packaging, jinja2 + a pure markupsafe, the webformers wheel and onnxruntime-web are fetched from npm and
PyPI by pinned version and sha256 (``sources``), cached in ``~/.cache/webformers/site``, and copied in;
the page loader (``page/site-loader.js``) boots Pyodide on the page's main thread, installs the wheels and
runs the app. Standard library only (plus the package itself).
"""
from __future__ import annotations

from .assemble import build_site
from .server import SiteServer, serve
from .sources import SiteError

__all__ = ["build_site", "serve", "SiteServer", "SiteError"]
