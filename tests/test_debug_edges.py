"""``nbflow.debug`` and ``Future.replay`` at their edges: what a success costs, odd text, deep recursion, and what
a hostile user tried (locals whose repr never ends, values too big to copy, commands that would ask for input,
``SystemExit`` on Dask). The tasks and helpers are ``test_debug``'s."""

from __future__ import annotations

import re
import sys
import threading
import time

import pytest
from test_debug import (  # noqa: F401 (fixtures: pytest finds them here by name)
    THIS,
    WAIT,
    answers,
    dask_cluster,
    debug,
    engine,
    failed,
    job,
    odd_text,
    recurse,
    snapshot_of,
    stack_entries,
    succeeds,
)

import nbflow
from nbflow.debugging import worker_snapshot
from nbflow.debugging.worker_snapshot import Unavailable

# --- what a success costs, odd text, deep recursion --------------------------------------------------------------


def test_a_successful_task_keeps_no_failure_and_takes_no_snapshot(engine, monkeypatch):
    calls = []
    real = worker_snapshot.report

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_snapshot, "report", counted)  # (seen on threads: other engines report elsewhere)
    futs = nbflow.task(succeeds).map(range(5))
    assert nbflow.gather(futs, timeout=WAIT) == [1, 2, 3, 4, 5]
    assert all(fut._failure is None for fut in futs)
    assert calls == []
    fut = failed(job, 1)
    assert fut._failure is not None
    assert len(calls) == (0 if engine == "dask" else 1)  # (the local engine's thread reports a child's failure too)


def test_text_that_is_not_utf_8_does_not_break_debug(engine, capsys):
    fut = failed(odd_text)
    out = debug(fut, capsys, "p raw", "p lone", "p len(lone)", "where")
    got = answers(out)
    assert got["p raw"] == r"b'\xff\xfe'"
    assert got["p lone"] == r"'\udcff'"
    assert got["p len(lone)"] == "1"
    assert re.search(rf"{THIS}\(\d+\)odd_text\(\)", got["where"])
    assert "post-mortem of task 'odd_text'" in out and "ValueError: bad byte" in out


def test_a_recursion_error_in_a_child_is_debugged_from_its_innermost_frames(capsys):
    nbflow.use("local", workers=1, processes=True)
    fut = failed(recurse, 0)
    assert isinstance(fut.exception(), RecursionError)
    check_deep_failure(fut, capsys)


def test_a_recursion_error_on_dask_ends_the_task_and_is_debugged_from_its_innermost_frames(dask_cluster, capsys):
    # (Dask pickles a task's error with its traceback: a thousand frames do not pickle, and a plain ``client.submit``
    # of this never ends; nbflow sends the innermost frames only)
    nbflow.use("dask", address=dask_cluster.scheduler_address)
    fut = failed(recurse, 0)
    assert isinstance(fut.exception(), RecursionError)
    check_deep_failure(fut, capsys)


def check_deep_failure(fut: nbflow.Future, capsys) -> None:
    frames = fut._failure.report["frames"].frames
    assert len(frames) == worker_snapshot.FRAMES_KEPT
    got = answers(debug(fut, capsys, "p depth_here", "where", "up", "p depth_here - 1"))
    entries = stack_entries(got["where"])
    assert len(entries) == len(frames)
    assert all(entry.endswith("recurse()") for entry in entries)
    innermost = int(got["p depth_here"])
    assert innermost >= worker_snapshot.FRAMES_KEPT  # the outermost frames were left out, the innermost kept
    assert int(got["p depth_here - 1"]) == innermost - 2  # ``up``: the frame that called it


# --- what a hostile user tried --------------------------------------------------------------------------------------


class SlowRepr:
    """Refuses to pickle, and its repr never ends: a placeholder would wait for it forever."""

    def __init__(self, never: threading.Event) -> None:
        self.never = never

    def __reduce__(self):
        raise TypeError("not picklable")

    def __repr__(self) -> str:
        self.never.wait()
        return "never"


def slow_repr_local(never):
    stuck = SlowRepr(never)  # noqa: F841 (a local the snapshot tries)
    small = 7  # noqa: F841
    raise ValueError("with a local whose repr never ends")


def test_a_local_whose_repr_never_ends_delays_the_snapshot_a_bounded_time_and_the_others_come_back(monkeypatch):
    monkeypatch.setattr(worker_snapshot, "LOCALS_SECONDS", 0.5)
    never = threading.Event()
    try:
        start = time.monotonic()
        snapshot = snapshot_of(slow_repr_local, never)
        assert time.monotonic() - start < WAIT
        values = snapshot.frames[-1].locals
        import cloudpickle

        assert cloudpickle.loads(values["small"]) == 7  # (pickled before any placeholder's repr was asked)
        assert isinstance(values["stuck"], Unavailable) and "took over 0.5 s" in values["stuck"].why
        assert values["stuck"].type_name.endswith("SlowRepr")
    finally:
        never.set()  # (the helper thread still in the repr ends)


def big_values():
    blob = b"x" * 50_000  # noqa: F841
    import numpy

    wide = numpy.broadcast_to(numpy.zeros(1), (400_000_000,))  # noqa: F841 (8 bytes held, 3.2 GB if copied)
    raise ValueError("with big values")


def test_values_over_the_bound_become_placeholders_without_being_copied(monkeypatch):
    monkeypatch.setattr(worker_snapshot, "LOCALS_BOUND", 10_000)
    values = snapshot_of(big_values).frames[-1].locals
    blob, wide = values["blob"], values["wide"]
    assert isinstance(blob, Unavailable) and "over the" in blob.why
    assert blob.text.startswith("b'xxx") and len(blob.text) < 200  # its repr cut before it is made, not after
    assert isinstance(wide, Unavailable) and "over the" in wide.why  # refused by its size, not by copying it


def test_commands_that_would_ask_for_input_are_refused_and_no_trace_is_left(capsys):
    nbflow.use("local", workers=1)
    fut = failed(job, 1)
    before = sys.gettrace()
    got = answers(debug(fut, capsys, "debug 1/0", "interact", "restart", "p y"))
    assert sys.gettrace() is before
    assert got["debug 1/0"] == "*** debug: not with commands= (it asks for input)"
    assert got["interact"] == "*** interact: not with commands= (it asks for input)"
    assert got["p y"] == "42"
    for wrong in ("p y", b"p y", [None, 3]):
        with pytest.raises(TypeError, match="commands must be a list of pdb commands as strings"):
            nbflow.debug(fut, commands=wrong)


def exits():
    local_val = 42  # noqa: F841
    raise SystemExit(3)


def test_a_task_raising_system_exit_on_dask_fails_with_it_and_keeps_its_worker(dask_cluster, capsys):
    engine = nbflow.use("dask", address=dask_cluster.scheduler_address)
    workers = set(engine.client.scheduler_info()["workers"])
    fut = nbflow.task(exits).submit()
    nbflow.wait([fut], timeout=WAIT)
    assert isinstance(fut.exception(), SystemExit) and fut.exception().args == (3,)
    assert answers(debug(fut, capsys, "p local_val"))["p local_val"] == "42"
    assert set(engine.client.scheduler_info()["workers"]) == workers  # (the worker was not ended by it)
