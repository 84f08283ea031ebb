"""Shared fixtures: every test gets its own limits directory and starts with no engine."""

from __future__ import annotations

import pytest

# Notebooks under tests/ are inputs of tests, not nbval cases (nbval runs example_notebooks/ only).
collect_ignore_glob = ["**/*.ipynb"]


@pytest.fixture(autouse=True)
def limits_dir(tmp_path, monkeypatch):
    """A private ``NBFLOW_LIMITS_DIR`` (inherited by subprocesses the test starts)."""
    path = tmp_path / "limits"
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def fresh_engine():
    """Close whatever engine a test selected, so the next test starts from the default."""
    from nbflow import engines

    yield
    with engines._lock:
        old, engines._current = engines._current, None
    if old is not None:
        old.close()


@pytest.fixture
def kernel_env() -> dict[str, str]:
    """More environment for ``kernel`` (a module may override this fixture)."""
    return {}


@pytest.fixture
def kernel(limits_dir, kernel_env):
    """A real IPython kernel with the extension loaded, using this test's limits directory."""
    from magics_nb.kernel import Kernel

    k = Kernel({"NBFLOW_LIMITS_DIR": str(limits_dir), **kernel_env})
    assert k.run("%load_ext nbflow").reply["status"] == "ok"
    yield k
    k.close()


@pytest.fixture
def ip():
    """The process's IPython shell with nbflow loaded (one per process: a test's names may stay in it); task cells
    still running when the test ends are waited for."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbflow")
    yield shell
    shell.run_line_magic("nbflow", "wait")
