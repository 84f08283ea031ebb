"""The panel in a real JupyterLab, in Debian's headless Chromium driven by Playwright.

The notebook ``panel.ipynb`` runs three ``GPU=1`` tasks on a machine limit of 2; two hold until this test
creates the file ``release``. The test reads the panel's GPU bars while they hold (2 of 2) and after they
finish (0 of 2), and saves screenshots.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _lab import OUTPUT, Lab, run_notebook

pytestmark = pytest.mark.timeout(180)

# The panel's bars for one resource, in worker rows and in the limits section, as (used, total, fill %).
READ_BARS = """([resource, scope]) => [...document.querySelectorAll(
    `${scope} .nbflow-res[data-resource="${resource}"]`)].map((bar) => {
        const fill = bar.querySelector('.nbflow-fill').getBoundingClientRect().width;
        const track = bar.querySelector('.nbflow-bar').getBoundingClientRect().width;
        return [Number(bar.dataset.used), Number(bar.dataset.total), 100 * fill / track,
                bar.querySelector('.nbflow-num').textContent];
    })"""


def all_used(used: float) -> str:
    """A JS predicate: every bar that ``READ_BARS`` finds reads ``used`` (and there is at least one)."""
    return f"(arg) => {{ const bars = ({READ_BARS})(arg); return bars.length && bars.every(b => b[0] === {used}); }}"


def wait_for(page, condition: str, arg, what: str, timeout: float = 60) -> None:
    """Wait until the JS predicate ``condition(arg)`` holds in the page; fail saying ``what`` did not happen."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout * 1000, polling=100)
    except PlaywrightTimeout:
        pytest.fail(f"{what} within {timeout} s; panel reads {page.evaluate(READ_BARS, [arg[0], ''])}")


def test_panel_in_jupyterlab(lab: Lab, page, tmp_path: Path) -> None:
    root = run_notebook(page, lab, "panel.ipynb")
    OUTPUT.mkdir(exist_ok=True)
    page.wait_for_selector(".nbflow-monitor .nbflow-worker", timeout=60_000)

    # every worker the kernel reports has its row
    expected = json.loads((root / "expected.json").read_text())
    rows = page.eval_on_selector_all(".nbflow-worker", "rows => rows.map(row => row.dataset.worker)")
    assert sorted(rows) == sorted(expected)

    # while two tasks hold the GPUs: used 2 of 2, bars full
    wait_for(page, all_used(2), ["GPU", ".nbflow-limits"], "the GPU limit bar did not reach 2/2")
    [(used, total, width, text)] = page.evaluate(READ_BARS, ["GPU", ".nbflow-limits"])
    assert (used, total, text) == (2, 2, "2/2") and width == pytest.approx(100, abs=1)
    workers = page.evaluate(READ_BARS, ["GPU", ".nbflow-workers"])
    assert sum(bar[0] for bar in workers) == 2, workers
    holders = page.locator('.nbflow-limit[data-limit="GPU"] .nbflow-holder')
    assert holders.count() == 2 and "infer" in holders.first.inner_text()
    slots = page.eval_on_selector_all(".nbflow-holder .nbflow-slots", "els => els.map(e => e.dataset.slots)")
    assert sorted(slots) == ["0", "1"]  # each holder's GPU
    gpus = page.eval_on_selector_all(
        ".nbflow-worker .nbflow-gpus", "els => els.map(e => e.dataset.task + ':' + e.dataset.devices)"
    )
    assert sorted(gpus) == ["infer:0", "infer:1"]  # the worker row says which task holds which GPU
    page.locator(".nbflow-monitor").screenshot(path=tmp_path / "panel-busy.png")
    shutil.copy(tmp_path / "panel-busy.png", OUTPUT / "monitor-busy.png")

    # released: the third task runs and finishes, every bar falls to 0
    (root / "release").touch()
    wait_for(page, all_used(0), ["GPU", ""], "the GPU bars did not fall to 0")
    bars = page.evaluate(READ_BARS, ["GPU", ""])
    assert all(width == 0 and text.startswith("0/") for _, _, width, text in bars), bars
    assert page.locator(".nbflow-worker .nbflow-gpus").count() == 0
    page.wait_for_function(
        "() => document.querySelector('.nbflow-count.nbflow-finished b')?.textContent === '3'", timeout=30_000
    )
    page.locator(".nbflow-monitor").screenshot(path=tmp_path / "panel-idle.png")
    shutil.copy(tmp_path / "panel-idle.png", OUTPUT / "monitor-idle.png")
