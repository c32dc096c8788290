"""The platform layer: everything that differs between the browser (Pyodide) and CPython, behind one API.

Only this package and ``runtime/backend`` import ``js`` / ``pyodide``. ``IN_BROWSER`` is defined here;
the rest of webformers calls these functions and never branches on the platform:

- page events and Stop: ``emit_page_event(event)``, ``stop_requested()``, ``reset_stop()``;
- JS values handed to Python: ``js_array(x)`` (a JS typed array / ArrayBuffer as ``(kind, numpy array)``,
  or None for anything else).
"""
from __future__ import annotations

import sys

IN_BROWSER = sys.platform == "emscripten"

if IN_BROWSER:  # pragma: no cover - exercised by the browser tests
    from ._browser import *  # noqa: F401,F403
    from ._browser import __all__
else:
    from ._cpython import *  # noqa: F401,F403
    from ._cpython import __all__

__all__ = ["IN_BROWSER", *__all__]
