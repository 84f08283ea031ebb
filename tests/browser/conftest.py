"""Browser-test fixtures: one JupyterLab server for the session, Chromium per module, a fresh page per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from _lab import CHROMIUM, CHROMIUM_ARGS, Lab, jupyterlab


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The server; each test runs its notebook in its own folder of the served root (see ``run_notebook``)."""
    state = tmp_path_factory.mktemp("jupyterlab")
    root = state / "root"
    root.mkdir()
    with jupyterlab(root, state) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium per test module: Playwright's sync API keeps an asyncio loop marked running in the main thread
    until it stops, which would break every later test that calls ``asyncio.run``."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium), or `make chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(lab: Lab, browser: Any) -> Iterator[Any]:
    """A 1200×900 page in a fresh browser context; afterwards its kernels are shut down, and the test fails if
    the page raised a JavaScript error."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
        lab.shutdown_kernels()
    assert not errors, f"JavaScript errors in the page: {errors}"
