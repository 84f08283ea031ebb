"""nbval settings for the example notebooks: the sanitize file, and a private limits directory per notebook.

nbval starts one kernel per notebook when its first cell is set up; the kernel inherits the environment
then, so each notebook's kernel (and the processes it starts) gets its own ``NBFLOW_LIMITS_DIR`` and never
touches the user's real limits or another notebook's. It also raises Dask's "event loop was unresponsive"
warning threshold: on a loaded 2-core CI machine that warning lands in a cell's output and fails the
comparison, though nothing is wrong with the notebook.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

SANITIZE = pathlib.Path(__file__).with_name("sanitize.cfg")
_dirs: dict[str, str] = {}  # notebook path -> its limits directory
_QUIET = {"DASK_DISTRIBUTED__ADMIN__TICK__LIMIT": "60s"}


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "nbval_sanitize_with", "unset") is None:  # nbval loaded, no file given
        config.option.nbval_sanitize_with = str(SANITIZE)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    notebook = item.parent
    if notebook is None or not str(getattr(notebook, "path", "")).endswith(".ipynb"):
        yield
        return
    key = str(notebook.path)
    if key not in _dirs:
        _dirs[key] = tempfile.mkdtemp(prefix="nbflow-nbval-")
    env = {**_QUIET, "NBFLOW_LIMITS_DIR": _dirs[key]}
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield  # the notebook's kernel starts here, with the first cell
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pytest_sessionfinish() -> None:
    for path in _dirs.values():
        shutil.rmtree(path, ignore_errors=True)
