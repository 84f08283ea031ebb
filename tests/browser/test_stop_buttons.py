"""The panel's stop buttons in a real JupyterLab, in Debian's headless Chromium driven by Playwright.

``stop.ipynb`` runs two task cells: ``spin`` loops in pure Python, ``held`` waits in a C call until this test
creates the file ``release``. The test clicks each one's stop button: ``spin`` ends cancelled at once; ``held``
reads *stopping* (in the panel and under its cell) until the call returns, then cancelled.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _lab import OUTPUT, Lab, run_notebook

pytestmark = pytest.mark.timeout(180)

# The panel's running-task rows: name -> [status, stop button's text, button disabled]
ROWS = """() => Object.fromEntries([...document.querySelectorAll('.nbflow-run')].map((row) => {
    const button = row.querySelector('.nbflow-stop');
    return [row.dataset.task, [row.dataset.status, button.textContent, button.disabled]];
}))"""
# The status line under each task cell: name -> its text
STATUS_LINES = """() => Object.fromEntries([...document.querySelectorAll('.jp-OutputArea-output')]
    .map((out) => out.innerText.trim()).filter((text) => text.startsWith('[nbflow] '))
    .map((text) => [text.slice(9, text.indexOf(':')), text.slice(text.indexOf(':') + 2)]))"""


def wait_for(page, condition: str, what: str, timeout: float = 60) -> None:
    """Wait until ``condition(rows, lines)`` holds for the panel's rows and the cells' status lines."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"() => ({condition})(({ROWS})(), ({STATUS_LINES})())", timeout=timeout * 1000, polling=100
        )
    except PlaywrightTimeout:
        pytest.fail(f"{what} within {timeout} s; rows {page.evaluate(ROWS)}, lines {page.evaluate(STATUS_LINES)}")


def stop_button(page, task: str):
    return page.locator(f'.nbflow-run[data-task="{task}"] .nbflow-stop')


def test_stop_buttons_in_jupyterlab(lab: Lab, page, tmp_path: Path) -> None:
    root = run_notebook(page, lab, "stop.ipynb")
    wait_for(
        page,
        "(rows) => rows.spin?.[0] === 'running' && rows.held?.[0] === 'running'",
        "the panel did not list both task cells running",
    )
    assert page.evaluate(ROWS) == {"spin": ["running", "stop", False], "held": ["running", "stop", False]}

    # spin: the click reads "stopping" at once (read in the click's own turn: the kernel's answer may remove the
    # row right after); the task stops at its next bytecode and leaves the list
    clicked = page.evaluate(
        f"""() => {{
        document.querySelector('.nbflow-run[data-task="spin"] .nbflow-stop').click();
        return ({ROWS})().spin;
    }}"""
    )
    assert clicked == ["stopping", "stopping…", True]
    wait_for(
        page,
        "(rows, lines) => !rows.spin && lines.spin?.startsWith('cancelled: stopped after')",
        "spin did not end cancelled",
    )
    page.wait_for_function(
        "() => document.querySelector('.nbflow-count.nbflow-cancelled b')?.textContent === '1'", timeout=30_000
    )

    # held: in a C call, it stays "stopping" (the kernel says so) until the call returns
    stop_button(page, "held").click()
    wait_for(
        page,
        "(rows, lines) => rows.held?.[0] === 'stopping' && lines.held?.startsWith('stopping')",
        "held did not read stopping in the panel and under its cell",
    )
    page.wait_for_function(
        "() => document.querySelector('.nbflow-count.nbflow-stopping b')?.textContent === '1'", timeout=30_000
    )
    assert page.evaluate(ROWS) == {"held": ["stopping", "stopping…", True]}
    OUTPUT.mkdir(exist_ok=True)
    page.locator(".nbflow-monitor").screenshot(path=tmp_path / "panel-stopping.png")
    shutil.copy(tmp_path / "panel-stopping.png", OUTPUT / "monitor-stopping.png")

    (root / "release").touch()  # the C call returns: TaskStopped ends the task there
    wait_for(
        page,
        "(rows, lines) => Object.keys(rows).length === 0 && lines.held?.startsWith('cancelled: stopped after')",
        "held did not end cancelled once its call returned",
    )
    page.wait_for_function(
        "() => document.querySelector('.nbflow-count.nbflow-cancelled b')?.textContent === '2'", timeout=30_000
    )
