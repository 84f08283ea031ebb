"""Task cells in an in-process IPython shell: rebinding rules, status lines, the process pool.

The kernel-level behaviour (output under the right cell, interrupts, UsageError display) is tested in a
real kernel in test_magics_notebooks/errors/interrupt; these check the bookkeeping directly.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell

import nbflow


@pytest.fixture
def ip():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbflow")
    shell.user_ns["gate"] = threading.Event()
    yield shell
    shell.user_ns["gate"].set()
    shell.run_line_magic("nbflow", "wait")


def task(shell, body: str, args: str = ""):
    shell.run_cell_magic("nbflow", f"task {args}", body)
    return shell.magics_manager.registry["NbflowMagics"].cells.unwaited()[-1]


def eventually(check, timeout: float = 60.0):
    """Poll an engine-side state change (there is no event to wait on for a status line)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "state never reached"
        time.sleep(0.02)


def test_outputs_are_futures_then_values_unless_reassigned_meanwhile(ip):
    cell = task(ip, "gate.wait(60)\nkept = 1\nreplaced = 2")
    assert isinstance(ip.user_ns["kept"], nbflow.Future) and isinstance(ip.user_ns["replaced"], nbflow.Future)
    ip.user_ns["replaced"] = "mine"
    ip.user_ns["gate"].set()
    ip.run_line_magic("nbflow", "wait kept")
    assert cell.outcome == "finished"
    assert ip.user_ns["kept"] == 1 and ip.user_ns["replaced"] == "mine"


def test_a_name_the_cell_did_not_assign_gets_its_previous_value_back(ip):
    ip.user_ns.update(flag=False, maybe="before")
    task(ip, "if flag:\n    maybe = 'after'\nother = 3")
    ip.run_line_magic("nbflow", "wait")
    assert ip.user_ns["maybe"] == "before" and ip.user_ns["other"] == 3


def test_status_line_follows_the_task(ip):
    nbflow.limit("GPU", 1)
    first = task(ip, "gate.wait(60)\ng1 = 1", "--resources GPU=1")
    second = task(ip, "g2 = g1 + 1", "--resources GPU=1")  # waits for g1 (a dependency) ...
    third = task(ip, "g3 = 3", "--resources GPU=1 --name third")  # ... this one for the GPU
    eventually(lambda: first.state().startswith("running on "))
    assert second.state() == "waiting for g1.g1"
    eventually(lambda: third.state() == "waiting for GPU")
    ip.user_ns["gate"].set()
    ip.run_line_magic("nbflow", "wait")
    assert [c.state().split(" in ")[0] for c in (first, second, third)] == ["done"] * 3
    assert ip.user_ns["g2"] == 2


def test_wait_and_cancel_find_cells_by_name_or_by_output_variable(ip):
    ip.run_line_magic("nbflow", "use local --workers 1")
    stage = task(ip, "gate.wait(60)\nx = 1\ny = 2", "--name stage")
    queued = task(ip, "z = 3", "--name later")
    ip.run_line_magic("nbflow", "cancel z")  # by output variable
    assert queued.outcome == "cancelled"
    ip.user_ns["gate"].set()
    ip.run_line_magic("nbflow", "wait y")  # by output variable of the cell named "stage"
    assert stage.outcome == "finished" and (ip.user_ns["x"], ip.user_ns["y"]) == (1, 2)


def test_cancel_a_queued_cell(ip, capsys):
    ip.run_line_magic("nbflow", "use local --workers 1")
    task(ip, "gate.wait(60)\nbusy = 1")
    queued = task(ip, "never = 1")
    ip.run_line_magic("nbflow", "cancel never")
    assert "cancelled 1 task cell(s)" in capsys.readouterr().out
    ip.user_ns["gate"].set()
    ip.run_line_magic("nbflow", "wait")
    assert queued.outcome == "cancelled" and ip.user_ns["busy"] == 1
    assert ip.user_ns["never"].cancelled() or isinstance(ip.user_ns["never"].exception(), nbflow.UpstreamError)


def test_task_cells_in_the_process_pool(ip):
    ip.run_line_magic("nbflow", "use local --processes --workers 1")
    ip.user_ns["base"] = 10
    cell = task(ip, "import os\npid = os.getpid()\nsquare = lambda v: v * v\nprint('child says', base)\nbase")
    ip.run_line_magic("nbflow", "wait")
    assert ip.user_ns["pid"] != os.getpid()
    assert ip.user_ns["square"](3) == 9  # a function defined in the cell came back by value
    assert cell.report["stdout"] == "child says 10\n" and cell.report["value"]["text/plain"] == "10"


def test_limits_status_and_monitor(ip, capsys):
    ip.run_line_magic("nbflow", "limits")
    assert "no limits set on this machine" in capsys.readouterr().out
    ip.run_line_magic("nbflow", "limit GPU 2")
    cell = task(ip, "gate.wait(60)\nheld = 1", "--resources GPU=1")
    # drawn (a shell without a kernel prints display updates): no later redraw lands in what is read below
    eventually(lambda: "held: running" in cell.view._shown[0]["text/plain"])
    capsys.readouterr()
    ip.run_line_magic("nbflow", "limits")
    shown = capsys.readouterr().out
    assert shown.startswith("GPU: 1/2 used, 0 waiting\n") and f"pid {os.getpid()}@" in shown and "task held" in shown
    ip.run_line_magic("nbflow", "status")
    assert "GPU 1/2" in capsys.readouterr().out
    panel = ip.run_line_magic("nbflow", "monitor --interval 0.2")
    try:
        assert type(panel).__name__ == "Monitor"
    finally:
        panel.close()


def test_thread_engine_streams_output_while_the_cell_runs(ip):
    cell = task(ip, "print('step 1')\ngate.wait(60)\nprint('step 2')\nstreamed = 1")
    eventually(lambda: cell.view._shown[1]["text/plain"] == "step 1")  # the status line, then what it printed
    assert cell.view._shown[0]["text/plain"].startswith("[nbflow] streamed: running")
    ip.user_ns["gate"].set()
    ip.run_line_magic("nbflow", "wait")
    assert cell.view._shown[1]["text/plain"].split("\n") == ["step 1", "step 2"]
