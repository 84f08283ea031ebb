"""A JupyterLab or Notebook 7 server on 127.0.0.1 and Debian's Chromium driven by Playwright, shared by the
browser tests.

``conftest.py`` turns these into fixtures: one server and one browser for the whole session, a fresh page per test.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# JupyterLab user settings written before the server starts: no "official Jupyter news?" toast over the page,
# and every notebook cell laid out even when scrolled out of view (so the tests measure real sizes).
SETTINGS = {
    "apputils-extension/notification": {"fetchNews": "false"},
    "notebook-extension/tracker": {"windowingMode": "none"},
}


@dataclass(frozen=True)
class Lab:
    """A running server: its address, token and the directory it serves."""

    url: str
    token: str
    root: Path
    app: str = "lab"  # or "notebook" (Notebook 7)

    def page_of(self, path: str) -> str:
        """The address that opens the notebook at ``path`` (relative to the root) in this front end."""
        if self.app == "notebook":
            return f"{self.url}/notebooks/{path}?token={self.token}"
        return f"{self.url}/lab/tree/{path}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        """Call the server's REST API; the decoded JSON reply (``None`` if empty)."""
        request = urllib.request.Request(f"{self.url}/api/{path}?token={self.token}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """End every notebook session, so one test's kernel (and its engine's processes) does not outlive it."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, state: Path, app: str = "lab") -> Iterator[Lab]:
    """A JupyterLab (``app="lab"``) or Notebook 7 (``"notebook"``) server serving ``root``, with its own HOME,
    Jupyter dirs and nbflow limits dir under ``state``."""
    token = secrets.token_hex(16)
    port = free_port()
    names = ("home", "config", "data", "runtime", "settings", "workspaces", "ipython", "limits")
    dirs = {name: state / name for name in names}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    for plugin, values in SETTINGS.items():
        path = dirs["settings"] / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {
        **os.environ,
        "HOME": str(dirs["home"]),
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "NBFLOW_LIMITS_DIR": str(dirs["limits"]),  # the kernels' machine limits stay private to this server
    }
    if app == "lab":
        flags = [
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to run the cells by command
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",  # no PyPI queries
        ]  # fmt: skip
    else:
        flags = ["--JupyterNotebookApp.expose_app_in_browser=True"]
    command = [
        sys.executable, "-m", "jupyterlab" if app == "lab" else "notebook", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", *flags,
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # fmt: skip
    log_path = state / f"{app}.log"
    log = log_path.open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, app)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"the {app} server exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the {app} server not up in 60 s: {log_path.read_text()}"
            try:
                if lab.api("status") is not None:
                    break
            except OSError:
                time.sleep(0.2)
        yield lab
    finally:
        with contextlib.suppress(OSError):  # shuts its kernels down, then exits
            lab.api("shutdown", method="POST")
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the kernels are in the server's session
            server.wait(10)
        log.close()


def run_notebook(page: Any, lab: Lab, name: str) -> Path:
    """Copy ``name`` from this folder into its own directory under the server's root, open it and run all cells.

    Returns that directory (the kernel's working directory). Returns once the run is started, not finished.
    """
    folder = lab.root / Path(name).stem
    folder.mkdir()
    shutil.copy(HERE / name, folder / name)
    page.goto(lab.page_of(f"{folder.name}/{name}"))
    page.wait_for_function(
        "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
        timeout=90_000,
        polling=200,
    )
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")  # (not awaited)
    return folder


def set_theme(page: Any, theme: str) -> None:
    """Switch JupyterLab to ``theme`` (e.g. "JupyterLab Dark") and wait until its stylesheet applies."""
    layout = "() => getComputedStyle(document.body).getPropertyValue('--jp-layout-color1')"
    before = page.evaluate(layout)
    if page.evaluate("() => document.body.dataset.jpThemeName") == theme:
        return
    page.evaluate("(theme) => window.jupyterapp.commands.execute('apputils:change-theme', { theme })", theme)
    page.wait_for_function(
        f"([theme, before]) => document.body.dataset.jpThemeName === theme && ({layout})() !== before",
        arg=[theme, before],
        timeout=30_000,
        polling=100,
    )
