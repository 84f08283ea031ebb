"""Task cells in notebooks executed by nbclient in a real kernel: values, and output under the right cell."""

from __future__ import annotations

import re

from magics_nb.kernel import cell_text, run_notebook

PIPELINE = [
    "%load_ext nbflow\n%nbflow use local --workers 4",
    "import threading\ngate = threading.Event()",
    '%%nbflow task\nprint("a starts")\ngate.wait(120)\na = 20\nprint("a ends")',
    '%%nbflow task\nb = a + 1\nprint("b got", a)\nb * 2',
    'print("ordinary cell:", type(b).__name__, b.done())\ngate.set()',
    "%nbflow wait",
    "print(a, b)",
]


def test_dependent_task_cells_show_output_under_their_own_cells():
    nb = run_notebook(PIPELINE)
    texts = [cell_text(cell) for cell in nb.cells]
    task_a, task_b, ordinary, _, final = texts[2:]
    assert re.search(r"\[nbflow\] a: done in [0-9.]+ s\na starts\na ends", task_a), task_a
    assert re.search(r"\[nbflow\] b: done in [0-9.]+ s\nb got 20", task_b), task_b
    assert "42" in task_b  # the last expression's value, shown under its cell
    assert ordinary == "ordinary cell: Future False\n"  # ran while the tasks were pending; none of their output
    assert final == "20 21\n"


FAILING = [
    "%load_ext nbflow",
    '%%nbflow task\nx = 1\nprint("before the error")\ny = x / 0\n',
    "%%nbflow task\nz = y + 1",
    "%nbflow wait",
    "print(type(y).__name__, y.exception().failed, z.exception().failed)",
    ('%%nbflow task --block\nprint("blocking cell prints")\nw = {}["missing"]', ["raises-exception"]),
    '%%nbflow task --block\nprint("fine")\nv = 6 * 7\nv',
]


def test_failure_shows_the_cells_own_traceback_and_dependents_get_upstream_error():
    nb = run_notebook(FAILING)
    failing, dependent, wait, check, blocking_failure, blocking = (cell_text(cell) for cell in nb.cells[1:])
    # the traceback under the failing cell, with that cell's line numbers (line 1 is the %%nbflow line)
    assert re.search(r"\[nbflow\] x: failed after [0-9.]+ s\nbefore the error\n", failing), failing
    assert 'File "Cell In[2]", line 4, in <module>\n    y = x / 0' in failing
    hint = "(%nbflow debug x opens the debugger where it raised; %nbflow replay x runs it again here)"
    assert failing.rstrip().endswith(f"ZeroDivisionError: division by zero\n{hint}")
    assert "magics" not in failing  # no nbflow frames
    assert re.search(r"\[nbflow\] z: failed after .*\nUpstreamError: upstream task 'x.y' failed", dependent)
    assert "2 task cell(s) failed: x (ZeroDivisionError), z (UpstreamError)" in wait
    assert check == "Future x z\n"  # the names stay bound to their failed futures
    # --block: output and error like an ordinary cell, as real outputs of the cell (nbval sees these)
    error = [out for out in nb.cells[5].outputs if out.output_type == "error"]
    assert [out.ename for out in error] == ["KeyError"]
    assert "blocking cell prints" in blocking_failure and 'File "Cell In[6]", line 3' in blocking_failure
    assert blocking == "fine\n\n42"
    assert [out.output_type for out in nb.cells[6].outputs] == ["stream", "display_data"]


DASK = [
    "%load_ext nbflow\n%nbflow use dask --n-workers 1 --resources GPU=1",
    "import os\nkernel_pid = os.getpid()",
    "%%nbflow task --resources GPU=1\nimport os\nwhere = os.getpid()\ndata = list(range(5))\n"
    'print("worker?", where != kernel_pid)',
    '%%nbflow task --resources GPU=1\ntotal = sum(data)\nprint("total", total)\ntotal * 10',
    "%%nbflow task\nbad = data[99]",
    "%%nbflow task\nworse = bad + 1",
    "%nbflow wait",
    "print(total, where != kernel_pid, type(worse.exception()).__name__)",
    "%nbflow status",
]


def test_task_cells_on_the_dask_engine():
    nb = run_notebook(DASK)
    texts = [cell_text(cell) for cell in nb.cells]
    assert "nbflow: using the dask engine" in texts[0]
    first, second, bad, worse, _, final, status = texts[2:]
    assert re.search(r"\[nbflow\] where: done in [0-9.]+ s\nworker\? True", first), first
    assert re.search(r"\[nbflow\] total: done in [0-9.]+ s\ntotal 10\n100", second), second
    assert 'File "Cell In[5]", line 2, in <module>\n    bad = data[99]' in bad and "IndexError" in bad
    assert "UpstreamError: upstream task 'bad.bad' failed" in worse
    assert final == "10 True UpstreamError\n"
    assert "GPU 0/1" in status


def _failing_cell(engine: str, options: str = "") -> list:
    return [
        f"%load_ext nbflow\n%nbflow use {engine}",
        f'%%nbflow task {options}\nprint("so far")\nx = {{}}["missing"]',
        "%nbflow wait",
    ]


def test_a_failed_cell_in_a_child_process_or_a_timed_dask_task_shows_its_traceback_and_output_so_far():
    for engine, options in (("local --processes", ""), ("dask --n-workers 1", "--timeout 60")):
        nb = run_notebook(_failing_cell(engine, options))
        failing, wait = cell_text(nb.cells[1]), cell_text(nb.cells[2])
        assert re.search(r"\[nbflow\] x: failed after [0-9.]+ s\nso far\n", failing), (engine, failing)
        assert 'File "Cell In[2]", line 3, in <module>\n    x = {}["missing"]' in failing, (engine, failing)
        assert "1 task cell(s) failed: x (KeyError)" in wait, (engine, wait)
