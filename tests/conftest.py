"""Shared fixtures: the built site served on 127.0.0.1, headless Chromium (system binary), and a page
with webformers booted in its worker.

    server      session: SiteServer for dist/site (``.url``, ``.add_root(prefix, path)``)
    browser     session: Playwright Chromium (WebGPU on: SwiftShader)
    wf_page     function: a fresh browser context + booted page (empty Cache API)
    shared_page session: one booted page for tests that need no isolation (faster)
    run_py(page, code)  run Python in the page's worker; returns the last expression as JSON-able data
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from buildtools.common import CHROMIUM, CHROMIUM_ARGS, ROOT, SITE  # noqa: E402

sys.path.insert(0, str(ROOT / "pysrc"))

BOOT_TIMEOUT_MS = 120_000
ARTIFACTS = ROOT / "test-artifacts"


def pytest_configure(config):
    ARTIFACTS.mkdir(exist_ok=True)


@pytest.fixture(scope="session")
def site_dir() -> Path:
    if not (SITE / "site.json").exists():
        pytest.fail("dist/site is not built: run `python3 build.py build` (or `python3 build.py test`)")
    return SITE


@pytest.fixture(scope="session")
def server(site_dir):
    from buildtools.server import SiteServer

    s = SiteServer(site_dir).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def playwright_instance():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_instance):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `python3 build.py setup` (installs Debian's chromium)")
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()


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


@pytest.fixture
def wf_page(browser, server):
    s = PageSession(browser, server)
    yield s
    s.close()


@pytest.fixture(scope="session")
def shared_page(browser, server):
    s = PageSession(browser, server)
    yield s
    s.close()


def origin_violations(session: PageSession) -> list[str]:
    return [u for u in session.requests
            if not (u.startswith(session.server.url + "/") or u.startswith(("data:", "blob:")))]


def dump_json(name: str, data) -> Path:
    p = ARTIFACTS / name
    p.write_text(json.dumps(data, indent=1))
    return p


def run_async(coro):
    """Run a coroutine to completion on a fresh event loop in its own thread.

    Playwright's sync API keeps an event loop running in the main thread once a browser fixture is
    up, so ``asyncio.run`` there fails; CPython-side async tests use this instead."""
    import asyncio
    import threading

    box = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
