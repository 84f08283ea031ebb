"""Browser-test fixtures: one JupyterLab and one Notebook 7 server for the session, Chromium per module, a fresh
page per test."""

from __future__ import annotations

import contextlib
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


@pytest.fixture(scope="session")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A Notebook 7 server, like ``lab``."""
    state = tmp_path_factory.mktemp("notebook7")
    root = state / "root"
    root.mkdir()
    with jupyterlab(root, state, app="notebook") as server:
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


def known(exc: Any) -> bool:
    """A page error of the front end itself, not of what nbflow shows: Notebook 7.6's keyboard-shortcuts
    plugin reads the schema of a settings plugin it has not loaded, once, while the page starts."""
    return "reading 'schema'" in str(exc) and "/static/notebook/notebook_core." in (exc.stack or "")


@contextlib.contextmanager
def open_page(server: Lab, browser: Any) -> Iterator[Any]:
    """A 1200×900 page in a fresh browser context; afterwards the server's kernels are shut down, and it fails
    if the page raised a JavaScript error."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda exc: None if known(exc) else errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
        server.shutdown_kernels()
    assert not errors, f"JavaScript errors in the page: {errors}"


@pytest.fixture
def page(lab: Lab, browser: Any) -> Iterator[Any]:
    """A page on the JupyterLab server."""
    with open_page(lab, browser) as tab:
        yield tab


@pytest.fixture(params=["lab", "notebook7"])
def front_end(request: pytest.FixtureRequest) -> Lab:
    """Each front end in turn: JupyterLab, then Notebook 7."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def front_page(front_end: Lab, browser: Any) -> Iterator[Any]:
    """A page on the front end under test."""
    with open_page(front_end, browser) as tab:
        yield tab
