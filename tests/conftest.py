"""Shared fixtures: the built site served on 127.0.0.1, headless Chromium (system binary), and a page
with webformers booted in its worker.

    server      session: SiteServer for dist/site (``.url``, ``.add_root(prefix, path)``)
    browser     session: Playwright Chromium (WebGPU on: SwiftShader)
    wf_page     function: a fresh browser context + booted page (empty Cache API)
    shared_page session: one booted page for tests that need no isolation (faster)

Shared non-fixture helpers (PageSession, run_py, …) are in ``helpers.py``; tests import them from there.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from buildtools.common import CACHE, CHROMIUM, CHROMIUM_ARGS, ROOT, SITE  # noqa: E402

sys.path.insert(0, str(ROOT / "pysrc"))

from helpers import ARTIFACTS, PageSession  # noqa: E402

#: markers by cost, applied from what a test uses: ``browser`` (headless Chromium and the built site),
#: ``unit`` (neither, and not marked ``slow``); ``slow`` (model builds) is marked by hand
_BROWSER_FIXTURES = {"browser", "server", "wf_page", "shared_page", "site_dir", "playwright_instance"}
#: fixtures that convert a model (cached by content hash, minutes when the cache is cold)
_BUILD_FIXTURES = {"whisper_root", "whisper_files"}
#: fixtures that build into the shared cache (~/.cache/webformers, pytest's cache dir) or hold GBs while set
#: up, by lock: one fixture of a lock at a time across processes (``build.py test`` runs the browser tests and
#: the others side by side), so each cold build runs once and the ~1B model's ~10 GB steps never overlap; a
#: fixture waits only for the builds it shares a lock with
_EXCLUSIVE_FIXTURES = {"large_repo": "large", "references": "large", "foreign_repo": "foreign", "tiny_repo": "tiny",
                       "whisper_root": "whisper", "whisper_files": "whisper"}


#: browser test files that ``build.py test`` runs in its second pytest process, beside the others: their
#: checks do not depend on having a core to themselves (test_page's Stop and script-time checks, the
#: endurance memory figures and the cross-library interop runs stay in the first, and so do the recovery
#: tests: with their WebGPU sessions (software-rendered here) beside test_page's, a page boot timed out;
#: the ~1B model's tests run in the first too, which balances the two processes' times)
_BESIDE_FILES = {
    "test_bench.py", "test_chunked_store.py", "test_exec_forms.py", "test_foreign_repo.py", "test_foundation.py",
    "test_generation_browser.py", "test_jupyterlite.py", "test_plain_pyodide.py",
    "test_runtime_browser.py", "test_runtime_cpython.py", "test_site.py", "test_snapshot.py",
    "test_tokenizer_compact.py", "test_tokenizers.py", "test_warm_start.py",
}


def pytest_configure(config):
    ARTIFACTS.mkdir(exist_ok=True)
    config.pluginmanager.register(_ExclusiveFixtures(), "webformers-exclusive-fixtures")


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if _BUILD_FIXTURES & used:
            item.add_marker(pytest.mark.slow)
        if _BROWSER_FIXTURES & used:
            item.add_marker(pytest.mark.browser)
        elif item.get_closest_marker("slow") is None and item.get_closest_marker("browser") is None:
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("browser") is not None and item.path.name in _BESIDE_FILES:
            item.add_marker(pytest.mark.beside)


class _ExclusiveFixtures:
    """Sets up the fixtures of ``_EXCLUSIVE_FIXTURES`` under their lock file in the cache folder (a plugin, not
    a conftest hook: session-scoped fixtures are set up through the root's hooks)."""

    depth = 0

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        if fixturedef.argname not in _EXCLUSIVE_FIXTURES or self.depth:
            return (yield)
        import fcntl

        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / f".test-fixtures-{_EXCLUSIVE_FIXTURES[fixturedef.argname]}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.depth += 1
            try:
                return (yield)
            finally:
                self.depth -= 1


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
