"""What a task cell shows, in real JupyterLab and Notebook 7 (Debian's Chromium, driven by Playwright).

``outputs.ipynb`` has a task cell that prints, redraws a text bar with ``\\r``, displays HTML, shows a figure
with ``plt.show()``, runs a ``tqdm.auto`` bar and ends on a figure; an ordinary cell runs meanwhile. Each
kind must show under the task cell only: live while both run, and once everything has finished.
"""

from __future__ import annotations

import shutil

import pytest
from _lab import OUTPUT, run_notebook

pytestmark = pytest.mark.timeout(240)

# Per code cell: its output text and what its output area holds.
CELLS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].map((cell) => {
    const out = cell.querySelector('.jp-OutputArea');
    const count = (selector) => (out ? out.querySelectorAll(selector).length : 0);
    return {
        text: out ? out.innerText : '',
        imgs: count('img'),
        html: count('b.task-html'),
        bars: count('.widget-hprogress, .widget-progress'),
    };
})"""
TASK, ORDINARY = 1, 2  # the task cell, and the ordinary cell that runs while it shows


def wait_until(page, condition: str, what: str, timeout: float = 120) -> list[dict]:
    """Wait until ``condition(cells)`` holds for the cells read by ``CELLS``; fail with what they hold."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"() => ({condition})(({CELLS})())", timeout=timeout * 1000, polling=100)
    except PlaywrightTimeout:
        pytest.fail(f"{what} within {timeout} s; the cells hold {page.evaluate(CELLS)}")
    return page.evaluate(CELLS)


def nothing_of_the_task(cell: dict) -> None:
    assert (cell["imgs"], cell["html"], cell["bars"]) == (0, 0, 0), cell
    assert "task-" not in cell["text"] and "text-bar" not in cell["text"], cell


def test_each_kind_of_output_shows_under_its_task_cell_only(front_end, front_page, tmp_path) -> None:
    page = front_page
    root = run_notebook(page, front_end, "outputs.ipynb")

    # live: the task cell shows everything so far while the ordinary cell below it runs
    cells = wait_until(
        page,
        f"""(cells) => cells.length === 5 && cells[{ORDINARY}].text.includes('ordinary-running')
            && cells[{TASK}].html === 1 && cells[{TASK}].imgs === 1 && cells[{TASK}].bars === 1
            && cells[{TASK}].text.includes('10/10')""",
        "the task cell did not show its HTML, figure and live bar while the ordinary cell ran",
    )
    task = cells[TASK]
    assert "task-print" in task["text"] and "task-bar" in task["text"]
    assert task["text"].count("text-bar") == 1 and "20/20 text-bar" in task["text"]  # redrawn in place
    assert "ordinary-done" not in cells[ORDINARY]["text"]  # it is still running
    for i, cell in enumerate(cells):
        if i != TASK:
            nothing_of_the_task(cell)
    OUTPUT.mkdir(exist_ok=True)
    shot = tmp_path / f"task-outputs-live-{front_end.app}.png"
    page.locator(".jp-Notebook .jp-CodeCell").nth(TASK).screenshot(path=shot)
    shutil.copy(shot, OUTPUT / shot.name)

    # finished: the bar has become its last text line, the last value is a second figure
    (root / "release").touch()
    cells = wait_until(
        page,
        f"(cells) => cells[4].text.includes('after') && cells[{TASK}].imgs === 2 && cells[{TASK}].bars === 0",
        "the task cell did not end with two figures and its bar as text",
    )
    task = cells[TASK]
    assert task["html"] == 1 and "task-bar: 100%|██████████| 10/10" in task["text"]
    assert "done in" in task["text"] and "task-print" in task["text"]
    assert "ordinary-done" in cells[ORDINARY]["text"]
    for i, cell in enumerate(cells):
        if i != TASK:
            nothing_of_the_task(cell)
