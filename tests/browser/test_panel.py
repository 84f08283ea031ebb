"""The panel in a real JupyterLab, in Debian's headless Chromium driven by Playwright (SPEC §5).

The notebook ``panel.ipynb`` runs three ``GPU=1`` tasks on a machine limit of 2; two hold until this test
creates the file ``release``. The test reads the panel's GPU bars while they hold (2 of 2) and after they
finish (0 of 2), and saves screenshots.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HERE = Path(__file__).parent
OUTPUT = HERE.parent.parent / "test-output"

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, state: Path) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on 127.0.0.1 serving ``root``, with its own HOME and Jupyter dirs; yields (url, token)."""
    token = secrets.token_hex(16)
    port = free_port()
    dirs = {name: state / name for name in ("home", "config", "data", "runtime", "settings", "workspaces", "ipython")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    news = dirs["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "official Jupyter news?" toast over the page
    env = {
        **os.environ,
        "HOME": str(dirs["home"]),
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "IPYTHONDIR": str(dirs["ipython"]),
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to run the cells by command
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # no PyPI queries
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # fmt: skip
    log = (state / "jupyterlab.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"JupyterLab exited: {(state / 'jupyterlab.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"JupyterLab not up in 60 s: {(state / 'jupyterlab.log').read_text()}"
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield url, token
    finally:
        shutdown = urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST")
        with contextlib.suppress(OSError):  # shuts its kernels down, then exits
            urllib.request.urlopen(shutdown, timeout=5)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the kernel is in the server's session
            server.wait(10)
        log.close()


def wait_for(page, condition: str, arg, what: str, timeout: float = 60) -> None:
    """Wait until the JS predicate ``condition(arg)`` holds in the page; fail saying ``what`` did not happen."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout * 1000, polling=100)
    except PlaywrightTimeout:
        pytest.fail(f"{what} within {timeout} s; panel reads {page.evaluate(READ_BARS, [arg[0], ''])}")


def test_panel_in_jupyterlab(tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium), or `make chromium`")
    from playwright.sync_api import sync_playwright

    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(HERE / "panel.ipynb", root / "panel.ipynb")
    OUTPUT.mkdir(exist_ok=True)
    errors: list[str] = []
    with jupyterlab(root, tmp_path / "jupyter") as (url, token), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/lab/tree/panel.ipynb?reset&token={token}")
            page.wait_for_function(
                "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
                timeout=90_000,
                polling=200,
            )
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
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
            page.locator(".nbflow-monitor").screenshot(path=tmp_path / "panel-busy.png")
            shutil.copy(tmp_path / "panel-busy.png", OUTPUT / "monitor-busy.png")

            # released: the third task runs and finishes, every bar falls to 0
            (root / "release").touch()
            wait_for(page, all_used(0), ["GPU", ""], "the GPU bars did not fall to 0")
            bars = page.evaluate(READ_BARS, ["GPU", ""])
            assert all(width == 0 and text.startswith("0/") for _, _, width, text in bars), bars
            page.wait_for_function(
                "() => document.querySelector('.nbflow-count.nbflow-finished b')?.textContent === '3'", timeout=30_000
            )
            page.locator(".nbflow-monitor").screenshot(path=tmp_path / "panel-idle.png")
            shutil.copy(tmp_path / "panel-idle.png", OUTPUT / "monitor-idle.png")
        finally:
            browser.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
