"""The panel reads well with 1 or 64 workers, in JupyterLab's light and dark themes.

``layouts.ipynb`` shows two panels on fixed synthetic snapshots: 64 workers × 3 resources (a real pipeline
cannot run 64 workers on this 2-core test machine, so a ``source=`` stands in for ``nbflow.occupancy()``) and
1 worker. The test checks every row and bar of the big panel, that it scrolls inside a bounded height under a
header that stays in view, that the small one has no slack, and that worker names and numbers have a WCAG
contrast ratio of at least 4.5 against what is behind them in both themes. Screenshots go to ``tmp_path``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _lab import OUTPUT, Lab, run_notebook, set_theme

from nbflow.render import format_amount

pytestmark = pytest.mark.timeout(180)

RESOURCES = ["GPU", "CPU", "MEMORY"]
MAX_PANEL_HEIGHT = 600  # px, in a 900 px high window: 64 workers must not take the page

# Per panel, in page order: its worker rows as (name, [(resource, used, total, fill %, text)], [counts]).
READ_ROWS = """() => [...document.querySelectorAll('.nbflow-monitor')].map((panel) =>
    [...panel.querySelectorAll('.nbflow-worker')].map((row) => [
        row.dataset.worker,
        [...row.querySelectorAll('.nbflow-res')].map((bar) => [
            bar.dataset.resource, Number(bar.dataset.used), Number(bar.dataset.total),
            100 * bar.querySelector('.nbflow-fill').getBoundingClientRect().width
                / bar.querySelector('.nbflow-bar').getBoundingClientRect().width,
            bar.querySelector('.nbflow-num').textContent]),
        [...row.querySelectorAll('td.nbflow-n')].map((cell) => Number(cell.textContent)),
    ]))"""

# The sizes of the panel number ``index``, of its parts (together) and of its workers' scroll box, in px.
READ_BOX = """(index) => {
    const panel = document.querySelectorAll('.nbflow-monitor')[index];
    const box = panel.querySelector('.nbflow-workers');
    const height = (node) => node.getBoundingClientRect().height;
    return {
        panel: height(panel),
        parts: [...panel.children].reduce((sum, part) => sum + height(part), 0),
        box: box.clientHeight, boxScroll: box.scrollHeight, boxWidth: box.clientWidth, boxScrollWidth: box.scrollWidth,
        table: height(box.querySelector('table')),
        rows: [...box.querySelectorAll('.nbflow-worker')].map(height),
        clipped: [...box.querySelectorAll('.nbflow-num, .nbflow-wname')].filter(
            (node) => node.scrollWidth > node.clientWidth).length,
    };
}"""

# Scroll the big panel's table to its end: is its header still on top, and is the last row there, uncovered?
SCROLL_TO_END = """() => {
    const box = document.querySelector('.nbflow-monitor .nbflow-workers');
    box.scrollIntoView({ block: 'nearest' });
    box.scrollTop = box.scrollHeight;
    const top = box.getBoundingClientRect().top;
    const head = box.querySelector('th').getBoundingClientRect();
    const last = [...box.querySelectorAll('.nbflow-worker')].at(-1).getBoundingClientRect();
    const hit = document.elementFromPoint(last.left + 10, (last.top + last.bottom) / 2);
    return {scrolled: box.scrollTop > 0, headAtTop: Math.abs(head.top - top) < 1,
            lastShown: hit?.closest('.nbflow-worker') === [...box.querySelectorAll('.nbflow-worker')].at(-1)};
}"""

# The text color of each node a selector finds in the panels, and the opaque color behind it (its ancestors' backgrounds
# composited from the page down), as [[r, g, b] text, [r, g, b] background, selector] with alpha folded in.
READ_COLORS = """(selectors) => {
    const rgba = (css) => {
        const m = css.match(/^rgba?\\(([^)]*)\\)$/);
        if (!m) throw new Error(`unexpected computed color ${css}`);
        const v = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
        return v.length === 3 ? [...v, 1] : v;
    };
    const over = ([r, g, b, a], below) => [r, g, b].map((c, i) => c * a + below[i] * (1 - a));
    const behind = (node) => {
        const layers = [];
        for (let n = node; n; n = n.parentElement) layers.push(rgba(getComputedStyle(n).backgroundColor));
        return layers.reverse().reduce((below, layer) => over(layer, below), [255, 255, 255]);
    };
    return selectors.flatMap((selector) => [...document.querySelectorAll(`.nbflow-monitor ${selector}`)].map((node) => {
        const bg = behind(node);
        return [over(rgba(getComputedStyle(node).color), bg), bg, selector];
    }));
}"""

# Worker names, resource numbers, task counts (coloured, plain and zero), the table header, limit holders, errors.
TEXT = [
    ".nbflow-worker .nbflow-wname",
    ".nbflow-worker .nbflow-num",
    ".nbflow-worker td.nbflow-n:not(.nbflow-zero)",
    ".nbflow-worker td.nbflow-n.nbflow-zero",
    ".nbflow-worker td.nbflow-running:not(.nbflow-zero)",
    ".nbflow-wtable th",
    ".nbflow-count b",
    ".nbflow-count.nbflow-zero b",
    ".nbflow-holder",
    ".nbflow-error-line",
]


def luminance(rgb: list[float]) -> float:
    """WCAG 2 relative luminance of an sRGB color (0-255 channels)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (x / 255 for x in rgb)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: list[float], b: list[float]) -> float:
    """WCAG 2 contrast ratio, 1 to 21; text needs 4.5."""
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def bar_text(resource: str, use: dict) -> str:
    return f"{format_amount(resource, use['used'])}/{format_amount(resource, use['total'])}"


def check_rows(rows: list, expected: list[dict]) -> None:
    """Every expected worker has its row, with its three bars (number and fill) and its task counts."""
    assert sorted(row[0] for row in rows) == sorted(worker["name"] for worker in expected)
    by_name = {worker["name"]: worker for worker in expected}
    for name, bars, counts in rows:
        worker = by_name[name]
        want = [(r, worker["resources"][r]["used"], worker["resources"][r]["total"]) for r in RESOURCES]
        assert sorted(tuple(bar[:3]) for bar in bars) == sorted(want), name
        for resource, used, total, fill, text in bars:
            assert text == bar_text(resource, worker["resources"][resource]), (name, resource)
            assert fill == pytest.approx(100 * used / total, abs=2), (name, resource)
        assert counts == [worker["running"], worker["waiting"], worker["queued"]], name


def check_readable(page, theme: str) -> None:
    """Names, numbers, counts and messages have contrast ≥ 4.5 against what is behind them, in every row."""
    measured = page.evaluate(READ_COLORS, TEXT)
    assert {selector for *_, selector in measured} == set(TEXT), "a text part of the panels is missing"
    dark = theme.endswith("Dark")
    worst: dict[str, tuple[float, list, list]] = {}
    for text, background, selector in measured:
        assert (luminance(background) < 0.2) == dark, f"{theme}: {selector} is on {background}"
        ratio = contrast(text, background)
        if ratio < worst.get(selector, (21,))[0]:
            worst[selector] = (ratio, text, background)
    poor = [f"{sel}: {text} on {bg} = {ratio:.2f}" for sel, (ratio, text, bg) in worst.items() if ratio < 4.5]
    assert not poor, f"{theme}: text below WCAG contrast 4.5: {poor}"


def screenshot(page, index: int, path: Path) -> None:
    page.locator(".nbflow-monitor").nth(index).screenshot(path=path)
    shutil.copy(path, OUTPUT / f"monitor-{path.name}")


def test_panel_layouts_and_themes(lab: Lab, page, tmp_path: Path) -> None:
    folder = run_notebook(page, lab, "layouts.ipynb")
    OUTPUT.mkdir(exist_ok=True)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.nbflow-monitor')].filter(p => p.querySelector('.nbflow-worker'))"
        ".length === 2",
        timeout=60_000,
        polling=100,
    )
    expected = json.loads((folder / "expected.json").read_text())
    many, one = page.evaluate(READ_ROWS)
    check_rows(many, expected["many"])
    check_rows(one, expected["one"])

    # 64 workers: one row each at one height (nothing wraps or is cut), scrolling inside a bounded panel
    big = page.evaluate(READ_BOX, 0)
    assert len(big["rows"]) == 64 and max(big["rows"]) - min(big["rows"]) < 1, big["rows"]
    assert big["boxScroll"] > big["box"], "64 workers should scroll inside the panel"
    assert big["panel"] <= MAX_PANEL_HEIGHT and big["panel"] < big["table"], big
    assert big["boxScrollWidth"] <= big["boxWidth"] and big["clipped"] == 0, big  # fits beside the side panel
    assert page.evaluate(SCROLL_TO_END) == {"scrolled": True, "headAtTop": True, "lastShown": True}
    page.evaluate("() => { document.querySelector('.nbflow-monitor .nbflow-workers').scrollTop = 0; }")

    # 1 worker: no scrolling, no blank space, a row as high as one of the 64
    small = page.evaluate(READ_BOX, 1)
    assert small["boxScroll"] <= small["box"] and small["box"] == pytest.approx(small["table"], abs=1), small
    assert small["panel"] - small["parts"] == pytest.approx(big["panel"] - big["parts"], abs=3), small  # same chrome
    assert small["rows"][0] == pytest.approx(big["rows"][0], abs=0.5) and small["clipped"] == 0, small

    try:
        for theme, name in [("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")]:
            set_theme(page, theme)
            check_readable(page, theme)
            screenshot(page, 0, tmp_path / f"64-{name}.png")
            screenshot(page, 1, tmp_path / f"1-{name}.png")
    finally:
        set_theme(page, "JupyterLab Light")  # the theme is a server-side setting: leave it as other tests expect
