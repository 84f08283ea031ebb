"""``%nbflow stop`` in a real kernel: running thread and process task cells, queued ones, ``--all``, bad input; and
what an interrupted wait says about stopping the tasks it leaves running."""

from __future__ import annotations

import os
import time

import pytest
from magics_nb.kernel import Kernel, interrupt_while_blocked

SETUP = "import threading, nbflow\nstarted, cleaned, gate = threading.Event(), threading.Event(), threading.Event()"

# A task cell in a pure-Python loop: TaskStopped reaches it at its next bytecode, and its ``finally`` runs.
SPIN = """%%nbflow task --name spin
started.set()
try:
    n = 0
    while True:
        n += 1
finally:
    cleaned.set()
spun = n"""


# Runs in the task's child process: ignores SIGTERM (so only the SIGKILL after the grace ends it).
SLEEPER = """
def sleep_ignoring_sigterm(marker):
    import os, pathlib, signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path(marker).write_text(str(os.getpid()))
    time.sleep(300)
    return True
"""


def status_line(kernel: Kernel, ex, predicate, what: str) -> str:
    """Wait until the task cell's status line (its first display) satisfies ``predicate``; return its text."""
    status = ex.display_ids()[0]
    try:
        data = kernel.wait_display(status, lambda d: predicate(d.get("text/plain", "")), timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"the status line never read {what}: {exc}") from None
    return data["text/plain"]


def ok(kernel: Kernel, code: str):
    ex = kernel.run(code)
    assert ex.reply["status"] == "ok", ex.reply.get("traceback")
    return ex


def test_stop_a_running_thread_cell(kernel):
    ok(kernel, SETUP)
    cell = ok(kernel, SPIN)
    ok(kernel, "assert started.wait(60)")

    ex = ok(kernel, "%nbflow stop spin")
    assert ex.stream("stdout") == "nbflow: stopping 1 task cell(s): spin (was running: cancelled once it has stopped)\n"
    ex = ok(kernel, "%nbflow wait spin")
    assert ex.stream("stderr") == "nbflow: 1 task cell(s) cancelled: spin (stopped)\n"
    line = status_line(kernel, cell, lambda t: "cancelled" in t, "cancelled")
    assert line.startswith("[nbflow] spin: cancelled: stopped after "), line
    out = ok(kernel, "print(cleaned.is_set(), nbflow.engine().task_counts()['cancelled'], spun.status)")
    assert out.stream("stdout") == "True 1 error\n"  # its finally ran; the output it never made failed upstream


def test_a_thread_in_a_c_call_reads_stopping_until_the_call_returns(kernel):
    ok(kernel, SETUP)
    cell = ok(kernel, "%%nbflow task --name held\nstarted.set()\ngate.wait(300)\nheld = 1")
    ok(kernel, "assert started.wait(60)")
    ex = ok(kernel, "%nbflow stop held")
    assert "held (was running: cancelled once it has stopped)" in ex.stream("stdout")
    assert status_line(kernel, cell, lambda t: "stopping" in t, "stopping").startswith("[nbflow] held: stopping on ")
    again = ok(kernel, "%nbflow stop held")  # asking twice is harmless
    assert again.stream("stdout") == "nbflow: stopping 1 task cell(s): held (already stopping)\n"
    ok(kernel, "gate.set()")  # the C call returns: the thread gets TaskStopped there
    ok(kernel, "%nbflow wait held")
    assert "cancelled: stopped after" in status_line(kernel, cell, lambda t: "cancelled" in t, "cancelled")


def test_stop_a_process_cell_that_ignores_sigterm(kernel, tmp_path):
    marker = tmp_path / "started"
    ok(kernel, f"import nbflow\nnbflow.use('local', processes=True)\nmarker = {str(marker)!r}")
    ok(kernel, SLEEPER)
    cell = ok(kernel, "%%nbflow task --name sleeper\nslept = sleep_ignoring_sigterm(marker)")
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text()):  # the child writes its pid once it runs the cell
        assert time.monotonic() < deadline, "the task cell's child never started"
        time.sleep(0.05)
    pid = int(marker.read_text())
    start = time.monotonic()
    ex = ok(kernel, "%nbflow stop slept --grace 0.5")  # by its output variable
    assert ex.stream("stdout") == (
        "nbflow: stopping 1 task cell(s): sleeper (was running: cancelled once it has stopped)\n"
    )
    ex = ok(kernel, "%nbflow wait sleeper")
    took = time.monotonic() - start
    assert ex.stream("stderr") == "nbflow: 1 task cell(s) cancelled: sleeper (stopped)\n"
    assert took < 30, took  # SIGKILL after the grace; generous for a busy machine (the bound is proven in test_stop)
    assert status_line(kernel, cell, lambda t: "cancelled" in t, "cancelled").startswith("[nbflow] sleeper: cancelled")
    with pytest.raises(ProcessLookupError):  # the child is gone (killed after the grace)
        os.kill(pid, 0)


def test_stop_a_queued_cell_then_all(kernel):
    ok(kernel, SETUP + "\nnbflow.use('local', workers=1)")
    ok(kernel, "%%nbflow task --name first\nstarted.set()\ngate.wait(300)\nfirst = 1")
    ok(kernel, "assert started.wait(60)")
    queued = ok(kernel, "%%nbflow task --name second\nsecond = 2")
    ex = ok(kernel, "%nbflow stop second")
    assert ex.stream("stdout") == "nbflow: stopping 1 task cell(s): second (had not started: cancelled)\n"
    ex = ok(kernel, "%nbflow wait second")
    assert ex.stream("stderr") == "nbflow: 1 task cell(s) cancelled: second\n"
    assert status_line(kernel, queued, lambda t: "cancelled" in t, "cancelled") == "[nbflow] second: cancelled"

    ex = ok(kernel, "%nbflow stop --all")
    assert (
        ex.stream("stdout") == "nbflow: stopping 1 task cell(s): first (was running: cancelled once it has stopped)\n"
    )
    ok(kernel, "gate.set()\n%nbflow wait")
    ex = ok(kernel, "%nbflow stop --all")
    assert ex.stream("stdout") == "nbflow: no unfinished task cells to stop\n"
    ex = ok(kernel, "%nbflow stop first second")
    assert ex.stream("stdout") == (
        "nbflow: nothing to stop; already done: first (cancelled), second (cancelled)\n"
    )


def test_stop_a_finished_cell_says_so(kernel):
    ok(kernel, "%%nbflow task --name quick\nquick = 1")
    ok(kernel, "%nbflow wait")
    ex = ok(kernel, "%nbflow stop quick")
    assert ex.stream("stdout") == "nbflow: nothing to stop; already done: quick (finished)\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%nbflow stop nope", "UsageError: no task cell named 'nope' (task cells: known)"),
        ("%nbflow stop", "UsageError: %nbflow stop: name the task cells to stop, or use --all (not both)"),
        ("%nbflow stop known --all", "UsageError: %nbflow stop: name the task cells to stop, or use --all (not both)"),
        ("%nbflow stop known --grace -1", "UsageError: %nbflow stop: argument --grace: must be seconds >= 0"),
    ],
)
def test_bad_input_is_one_line(kernel, line, message):
    ok(kernel, "%%nbflow task --name known\nknown = 1")
    ex = kernel.run(line)
    assert ex.reply["status"] == "error" and ex.reply["ename"] == "UsageError", ex.reply
    shown = ex.stream("stderr")  # IPython prints a UsageError itself: one line, no traceback
    assert ex.reply["traceback"] == [] and shown.count("\n") == 1 and shown.startswith(message), shown


def test_the_help_lists_stop(kernel):
    page = kernel.run("%nbflow?").reply["payload"][0]["data"]["text/plain"]
    assert "%nbflow stop [--all] [--grace SECONDS] [NAME ...]" in page, page
    assert "SIGTERM (then SIGKILL after --grace seconds)" in page


def test_an_interrupted_wait_says_how_to_stop_the_task(kernel):
    ok(kernel, SETUP)
    cell = ok(
        kernel, "%%nbflow task\nwhile not gate.wait(0.05):  # back in Python every 50 ms: stoppable\n    pass\nv = 5"
    )
    ex = interrupt_while_blocked(kernel, 'print("blocking")\n%nbflow wait', "stopped waiting")
    assert ex.reply["traceback"] == [
        "KeyboardInterrupt: stopped waiting; 1 task cell(s) keep running and rebind their outputs when done: v "
        "(%nbflow stop v stops them)"
    ]
    hint = "(the wait was interrupted, not the task: %nbflow stop v stops it)"
    line = status_line(kernel, cell, lambda t: hint in t, "the hint")
    assert line.startswith("[nbflow] v: running"), line

    ex = interrupt_while_blocked(kernel, 'print("blocking")\nv.result()', "only the wait was interrupted")
    assert ex.reply["traceback"][-1].strip() == (
        "nbflow: only the wait was interrupted; task 'v.v' keeps running: its future's .stop() stops it "
        "(a task cell: %nbflow stop NAME)"
    )
    ok(kernel, "%nbflow stop v")  # the task ends only now (the gate never opens)
    ok(kernel, "%nbflow wait v")
    assert status_line(kernel, cell, lambda t: "cancelled" in t, "cancelled").startswith("[nbflow] v: cancelled")


def test_stop_all_while_freed_threads_start_queued_cells_counts_every_cell_cancelled(kernel):
    """Twelve cells on two threads: the two running ones stop, and their threads start queued cells as those are
    being stopped; every cell ends cancelled, counted so, with no "unexpected state" in the output."""
    ok(kernel, SETUP + "\nimport time\nnbflow.use('local', workers=2)")
    for i in range(12):
        ok(kernel, f"%%nbflow task --name c{i}\ntime.sleep(0.05)\nfor _ in range(10**9): pass\nv{i} = {i}")
    ex = ok(kernel, "%nbflow stop --all")
    assert "unexpected state" not in ex.stream("stdout") + ex.stream("stderr")
    ok(kernel, "%nbflow wait")
    counts = "c = nbflow.engine().task_counts()\nprint(c['cancelled'], c['pending'] + c['running'] + c['stopping'])"
    assert ok(kernel, counts).stream("stdout") == "12 0\n"


def test_stop_by_a_name_two_cells_share_stops_both(kernel):
    ok(kernel, SETUP + "\nnbflow.use('local', workers=2)")
    for _ in range(2):
        ok(kernel, "%%nbflow task --name dup\nstarted.set()\ngate.wait(300)\nx = 1")
    ok(kernel, "assert started.wait(60)")
    ex = ok(kernel, "%nbflow stop dup")
    assert ex.stream("stdout").startswith("nbflow: stopping 2 task cell(s): dup (")
    gate_set = ok(kernel, "gate.set()\n%nbflow wait\nprint(nbflow.engine().task_counts()['cancelled'])")
    assert gate_set.stream("stdout").endswith("2\n")
