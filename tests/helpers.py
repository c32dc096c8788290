"""What the tests share besides fixtures: the page session, running Python in the page, artifacts.

    PageSession(browser, server, path)  a browser context + page with its request and console logs
    run_py(page, code)                  run Python in the page's worker; the last expression as data
    origin_violations(session)          requests that left the page's origin
    dump_json(name, data)               write a measurement to test-artifacts/
    run_async(coro)                     run a coroutine beside Playwright's event loop
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from buildtools.common import ROOT, SITE  # noqa: E402,F401

sys.path.insert(0, str(ROOT / "pysrc"))

BOOT_TIMEOUT_MS = 120_000
ARTIFACTS = ROOT / "test-artifacts"


class PageSession:
    """A browser context + page with its request and console logs."""

    def __init__(self, browser, server, path="/index.html", context=None, boot=True):
        self.server = server
        self.context = context or browser.new_context()
        self.requests: list[str] = []
        self.console: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.page.goto(server.url + path)
        if boot:
            self.wait_boot()

    def wait_boot(self):
        self.page.wait_for_function("window.wf && (window.wf.timings || window.wf.bootError)",
                                    timeout=BOOT_TIMEOUT_MS)
        err = self.page.evaluate("window.wf.bootError")
        if err:
            raise AssertionError(f"webformers did not boot: {err}\nconsole:\n" + "\n".join(self.console[-20:]))
        return self.page.evaluate("window.wf.timings")

    def close(self):
        self.context.close()

    def __getattr__(self, name):  # behave like the Playwright page
        return getattr(self.page, name)


def run_py(page, code: str, timeout_ms: int = 600_000):
    """Run ``code`` in the worker (top-level await allowed); the last expression comes back as data."""
    p = page.page if isinstance(page, PageSession) else page
    p.set_default_timeout(timeout_ms)
    return p.evaluate("code => window.wf.runPython(code)", code)


def origin_violations(session: PageSession) -> list[str]:
    return [u for u in session.requests
            if not (u.startswith(session.server.url + "/") or u.startswith(("data:", "blob:")))]


def dump_json(name: str, data) -> Path:
    p = ARTIFACTS / name
    p.write_text(json.dumps(data, indent=1))
    return p


def run_async(coro):
    """Run a coroutine to completion from a test, also while Playwright's sync API keeps an event loop
    running in the main thread (``asyncio.run`` fails there)."""
    from webformers.platform import run_sync

    return run_sync(coro)
