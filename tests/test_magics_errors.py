"""Bad ``%nbflow`` arguments in a real kernel: one line of ``UsageError``, no traceback; ``%nbflow?`` is the help."""

from __future__ import annotations

import socket

import pytest
from magics_nb.kernel import Kernel


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    k = Kernel({"NBFLOW_LIMITS_DIR": str(tmp_path_factory.mktemp("limits"))})
    k.run("%load_ext nbflow")
    yield k
    k.close()


def one_line_error(kernel: Kernel, code: str, ename: str = "UsageError") -> str:
    """Run ``code``; assert it failed with ``ename`` shown as one line and no traceback frames; return the line."""
    ex = kernel.run(code)
    assert ex.reply["status"] == "error", ex.reply
    assert ex.reply["ename"] == ename, ex.reply
    errors = [m["content"] for m in ex.messages if m["msg_type"] == "error"]
    if ename == "UsageError":  # IPython prints these to stderr itself: no error output, no traceback
        assert errors == [] and ex.reply["traceback"] == []
        shown = ex.stream("stderr")
    else:
        assert len(errors) == 1
        shown = "\n".join(errors[0]["traceback"]) + "\n"
    assert shown.count("\n") == 1 and shown.startswith(f"{ename}: "), shown
    return shown


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("%%nbflow task --resources GPU=abc\nx = 1", "amount of 'GPU' must be a number > 0"),
        ("%%nbflow task --resources GPU=-1\nx = 1", "amount of 'GPU'"),
        ("%%nbflow task --resources =1\nx = 1", "must look like NAME=AMOUNT"),
        ("%%nbflow task --limits gpu/0=1\nx = 1", "invalid limit/resource name"),
        ("%%nbflow task --bogus\nx = 1", "unrecognized arguments: --bogus"),
        ("%%nbflow task --retries -1\nx = 1", "--retries: must be a whole number >= 0"),
        ("%%nbflow task --timeout soon\nx = 1", "--timeout: must be seconds > 0"),
        ("%%nbflow task --resources\nx = 1", "--resources: expected at least one argument"),
        ("%nbflow use dask --resources GPU=abc", "amount of 'GPU'"),
        ("%nbflow use local --workers 0", "--workers: must be a whole number >= 1"),
        ("%nbflow use local --n-workers 2", "unrecognized arguments: --n-workers 2"),
        ("%nbflow use spark", "unknown engine 'spark'; use 'local' or 'dask'"),
        ("%nbflow use dask tcp://127.0.0.1:8786 --n-workers 2", "describe a new cluster"),
        ("%nbflow limit GPU lots", "amount of 'GPU' must be a number > 0"),
        ("%nbflow limit ../GPU 2", "invalid limit/resource name"),
        ("%nbflow limit GPU", "give a CAPACITY, --rate or both"),
        ("%nbflow wait nosuchcell", "no task cell named 'nosuchcell'"),
        ("%nbflow cancel", "name the task cells to cancel, or use --all"),
        ("%nbflow task", "is a cell magic"),
        ("%%nbflow wait\nx = 1", "the cell magic is '%%nbflow task'"),
    ],
)
def test_bad_arguments_give_one_line(kernel, code, says):
    assert says in one_line_error(kernel, code)


def test_unknown_subcommand_lists_the_valid_ones(kernel):
    shown = one_line_error(kernel, "%nbflow frobnicate")
    assert "unknown subcommand 'frobnicate'" in shown
    for sub in ("use", "limit", "limits", "status", "monitor", "wait", "cancel", "task"):
        assert sub in shown.split("valid subcommands:")[1]


def test_library_errors_at_submit_are_one_line_with_their_own_class(kernel):
    one_line_error(kernel, "%%nbflow task --resources NOSUCH=1\nx = 1", ename="NoSuchLimit")
    kernel.run("%nbflow limit GPU 2")
    shown = one_line_error(kernel, "%%nbflow task --resources GPU=3\nx = 1", ename="Unsatisfiable")
    assert "GPU" in shown
    assert kernel.run("print(repr(x))").reply["status"] == "error"  # nothing was bound


def test_unreachable_scheduler_is_one_line(kernel):
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    shown = one_line_error(kernel, f"%nbflow use dask tcp://127.0.0.1:{port}", ename="SchedulerUnreachable")
    assert f"no Dask scheduler answered at tcp://127.0.0.1:{port}" in shown


def test_syntax_error_in_a_task_cell_points_at_its_line(kernel):
    shown = one_line_error(kernel, "%%nbflow task\nx = 1\ny = (\n")
    assert "SyntaxError in the cell, line 3: '(' was never closed: y = (" in shown


def test_help(kernel):
    ex = kernel.run("%nbflow?")
    page = ex.reply["payload"][0]["data"]["text/plain"]
    for usage in (
        "%nbflow use local",
        "%nbflow use dask",
        "%nbflow limit [--rate RATE] [--burst N] NAME [CAPACITY]",
        "%nbflow wait",
        "%nbflow cancel",
        "%nbflow task [--name NAME]",
        "--resources",
        "--block",
    ):
        assert usage in page, usage


def test_a_cached_task_cell_with_an_input_it_cannot_hash_says_what_to_do_and_is_not_left_submitting(kernel, tmp_path):
    kernel.run(f"import os, threading\nos.environ['NBFLOW_CACHE_DIR'] = {str(tmp_path)!r}\nlk = threading.Lock()")
    ex = kernel.run("%%nbflow task --cache --name locked\nout1 = str(lk)")
    assert ex.reply["status"] == "error" and ex.reply["ename"] == "UsageError", ex.reply
    shown = ex.stream("stderr")
    assert shown.count("\n") == 1 and "cannot hash argument 'lk'" in shown and "drop --cache" in shown, shown
    assert "cache_key" not in shown  # a task cell has no such option
    [status, *_] = ex.display_ids()
    kernel.wait_display(status, lambda data: "not submitted" in data.get("text/plain", ""))
    assert kernel.run("print(repr(out1))").reply["status"] == "error"  # nothing was bound
