"""A real browser for tests: Debian's `chromium` driven by Playwright for Python.

Never `playwright install` (it downloads a browser build; only the package registries are
reachable here): the browser is the distribution's, installed with apt when it is missing,
the same way the Postgres/Redis fixtures start those services on a fresh machine.

Fixtures (registered in tests/conftest.py):
- `browser`: one headless Chromium per test module. Not per session: Playwright's sync API
  keeps its event loop running in the main thread while it is open, and every later test's
  `asyncio.run` would then fail ("cannot be called from a running event loop").
- `page`: a fresh context + page per test; console errors and uncaught page errors are
  collected in `page.console_errors` so a test can assert there were none.
- `artifacts_dir`: where screenshots and other run artifacts go
  (`$PHOTOSTUDIO_TEST_ARTIFACTS`, default `<repo>/.artifacts/`, git-ignored).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]
REPO = Path(__file__).resolve().parents[1]


def ensure_chromium() -> str:
    """The path of Debian's chromium, installing it with apt when absent (root on these
    machines and in CI). Fails with what to run when it cannot be installed."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing and could not be installed: run "
                    "`apt-get install chromium` (never `playwright install`)")
    return CHROMIUM


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("PHOTOSTUDIO_TEST_ARTIFACTS", REPO / ".artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    # launch() gives the browser a fresh temporary profile of its own (a --user-data-dir is
    # only for persistent contexts).
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.console_errors = errors
    try:
        yield page
    finally:
        context.close()
