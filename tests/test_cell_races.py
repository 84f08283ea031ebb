"""Two task cells at once, in a real kernel: nbflow's own bookkeeping never fails a cell because of what another
one is doing (a module it imports half-way), and a task cell shows the warnings an ordinary cell shows."""

from __future__ import annotations

import re

import pytest
from magics_nb.kernel import Kernel

WAIT = 60  # seconds: generous for a loaded 2-core machine

# An import hook that holds the import of ``NAME`` half-way (its module already in sys.modules, its body not
# yet run) until ``release`` is set, then runs the real module.
HOLD_IMPORT = """
import importlib.abc, importlib.machinery, sys, threading
started, release = threading.Event(), threading.Event()

class Hold(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name != NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        self.real, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        started.set()
        assert release.wait(60)
        self.real.exec_module(module)

sys.meta_path.insert(0, Hold())
"""


def status_lines(kernel: Kernel) -> list[str]:
    kernel.drain()
    return [d["text/plain"] for d in kernel.displays.values() if d.get("text/plain", "").startswith("[nbflow]")]


def test_a_cell_ending_while_another_imports_pyplot_half_way_is_not_failed_by_the_figure_bookkeeping(kernel):
    assert kernel.run(f"NAME = 'matplotlib.pyplot'\n{HOLD_IMPORT}").reply["status"] == "ok"
    shows = "%%nbflow task --name shows\nfrom IPython.display import HTML\ndisplay(HTML('<b>html</b>'))\nshown = 1"
    assert kernel.run(shows + "\nassert started.wait(60)").reply["status"] == "ok"
    plots = "%%nbflow task --name plots\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nplotted = 1"
    assert kernel.run(plots).reply["status"] == "ok"
    try:
        waited = kernel.run("%nbflow wait shows")  # ends while pyplot is still half-imported in the other cell
        assert waited.reply["status"] == "ok", waited.reply
        assert (
            kernel.run("import sys\nassert sys.modules['matplotlib.pyplot'].__spec__._initializing").reply["status"]
            == "ok"
        )
    finally:
        kernel.run("release.set()")
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    lines = status_lines(kernel)
    assert len(lines) == 2 and all("done in" in line for line in lines), lines
    assert kernel.run("print(shown, plotted)").stream("stdout") == "1 1\n"


def another_cell_meanwhile(kernel, release: str) -> None:
    """Once the held import has started: a task cell starts and ends; then ``release`` lets the import go on."""
    try:
        assert kernel.run("assert started.wait(60)").reply["status"] == "ok"
        other = kernel.run("%%nbflow task --block --name other\nvalue = 2")
        assert other.reply["status"] == "ok", other.reply
    finally:
        kernel.run(release)


def test_a_cell_starting_while_pyplot_is_imported_half_way_is_not_failed_either(kernel):
    assert kernel.run(f"NAME = 'matplotlib.pyplot'\n{HOLD_IMPORT}").reply["status"] == "ok"
    assert (
        kernel.run("%%nbflow task --name plots\nimport matplotlib.pyplot as plt\nplotted = 1").reply["status"] == "ok"
    )
    another_cell_meanwhile(kernel, "release.set()")
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    assert kernel.run("print(plotted, value)").stream("stdout") == "1 2\n"


def test_a_cell_starting_while_pyplot_s_figure_registry_is_imported_half_way_is_not_failed(kernel):
    assert kernel.run(f"NAME = 'matplotlib._pylab_helpers'\n{HOLD_IMPORT}").reply["status"] == "ok"
    importer = "importer = threading.Thread(target=__import__, args=('matplotlib.pyplot',))\nimporter.start()"
    assert kernel.run(importer).reply["status"] == "ok"  # an import in another thread, before any task cell
    another_cell_meanwhile(kernel, "release.set()\nimporter.join(60)")
    after = (
        "%%nbflow task --block --name after\nimport matplotlib._pylab_helpers as h\nkind = type(h.Gcf.figs).__name__"
    )
    assert kernel.run(after).reply["status"] == "ok"
    assert kernel.run("print(value, kind)").stream("stdout") == "2 _PerThread\n"  # made per thread after all


def warnings_shown(text: str) -> list[str]:
    """The ``Category: message`` of each warning in ``text`` (as ``warnings`` formats them)."""
    return re.findall(r"(\w+Warning): (.*)", text)


@pytest.mark.parametrize(
    "code", ["from tqdm.auto import tqdm", "import warnings\nfor _ in range(3):\n    warnings.warn('x', UserWarning)"]
)
def test_a_task_cell_shows_the_warnings_an_ordinary_cell_shows(limits_dir, code):
    shown = {}
    for kind, cell in [("ordinary", code), ("task", "%%nbflow task --name warns\n" + code)]:
        kernel = Kernel({"NBFLOW_LIMITS_DIR": str(limits_dir)})  # a fresh kernel each: warnings show once
        try:
            assert kernel.run("%load_ext nbflow").reply["status"] == "ok"
            run = kernel.run(cell)
            assert run.reply["status"] == "ok"
            if kind == "ordinary":
                shown[kind] = warnings_shown(run.stream("stderr"))
            else:
                assert kernel.run("%nbflow wait").reply["status"] == "ok"
                kernel.drain()
                shown[kind] = warnings_shown("\n".join(d.get("text/plain", "") for d in kernel.displays.values()))
        finally:
            kernel.close()
    assert shown["task"] == shown["ordinary"]
    assert shown["ordinary"] == ([] if "tqdm" in code else [("UserWarning", "x")])


def test_a_task_cell_ending_leaves_another_cells_warning_filters_alone(kernel):
    """tqdm.auto silences its own warning with ``warnings.catch_warnings``; another task cell ending meanwhile
    must not undo that (nbflow swaps no process-wide warning state while cells run)."""
    assert kernel.run(f"NAME = 'tqdm.autonotebook'\n{HOLD_IMPORT}").reply["status"] == "ok"
    assert kernel.run("a_started = threading.Event()").reply["status"] == "ok"
    first = "%%nbflow task --name first\na_started.set()\nassert started.wait(60)\nfirst_done = 1"
    assert kernel.run(first).reply["status"] == "ok"
    assert kernel.run("first_future = first_done").reply["status"] == "ok"  # still its Future: it waits
    second = "%%nbflow task --name second\nassert a_started.wait(60)\nfrom tqdm.auto import tqdm\nsecond_done = 1"
    task = kernel.run(second)  # holds in tqdm.auto's catch_warnings until the first cell has ended
    try:
        assert kernel.run("assert started.wait(60)\nfirst_future.result(timeout=60)").reply["status"] == "ok"
    finally:
        kernel.run("release.set()")
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    kernel.drain()
    printed = kernel.displays[task.display_ids()[1]].get("text/plain", "")
    assert "Warning" not in printed, printed
    assert kernel.run("print(first_done, second_done)").stream("stdout") == "1 1\n"
