"""Task-cell analysis and execution, without a kernel: inputs/outputs from ast, capture, tracebacks, pickling."""

from __future__ import annotations

import sys
import threading

import cloudpickle
import pytest

from nbflow import context
from nbflow.magics.kernel_cell_analysis import analyze
from nbflow.magics.task_cell_code import CellCode


def plan(body: str):
    return analyze("\n" + body, "Cell In[1]")


def test_inputs_are_free_names_and_outputs_are_top_level_bindings():
    p = plan(
        """
import numpy as np, os.path
from math import tau as TAU
y = 2
z = y * x + w          # y was bound just above: not an input
total += 1             # read and written
def f(a, b=dflt):
    return a + g + len(b)
class C(Base):
    attr = cls_global
    def m(self):
        return meth_global
out = [q * k for q in items]
lam = lambda v: v + lamg
if (m := cond):
    late = 1
with open(p) as fh:
    data = fh.read()
h: int
r: int = 3
try:
    pass
except Exception as e:
    pass
del gone
"""
    )
    expected = {
        "x",
        "w",
        "total",
        "dflt",
        "g",
        "Base",
        "cls_global",
        "meth_global",
        "k",
        "items",
        "lamg",
        "cond",
        "p",
        "gone",
    }
    assert expected <= p.reads
    assert not {"y", "z", "a", "b", "q", "v", "self", "np", "os", "TAU", "f", "C", "e", "h"} & p.reads
    assert p.outputs == ("np", "os", "TAU", "y", "z", "total", "f", "C", "out", "lam", "m", "late", "fh", "data", "r")
    assert p.name_hint == "y"  # the first assigned variable (imports and definitions are not names for a task)
    assert not p.shows_value


@pytest.mark.parametrize(
    "source, hint",
    [
        ("for _i in range(40):\n    total = _i\nresult = total * 2", "result"),
        ("for _i in range(3):\n    pass", None),
        ("with open('f') as fh:\n    data = fh.read()", None),
        ("import os\ndef f(): pass\nx: int = 1", "x"),
        ("n += 1", "n"),
        ("a, b = 1, 2", "a"),
    ],
)
def test_a_task_cell_is_named_after_a_top_level_assignment_never_a_loop_variable(source, hint):
    assert plan(source).name_hint == hint


def test_conditional_binding_still_reads_the_notebook_value():
    p = plan("if flag:\n    n = 1\nprint(n)")
    assert {"flag", "n", "print"} <= p.reads and p.outputs == ("n",)


@pytest.mark.parametrize(
    ("body", "shows"),
    [("x = 1\nx", True), ("x = 1\nx;", False), ("x = 1", False), ("print(1)", False), ("f(1)", True), ("", False)],
)
def test_last_expression(body, shows):
    assert plan(body).shows_value is shows


def test_a_cell_runs_in_its_own_namespace_and_reports_outputs_stdout_and_value():
    body = (
        "\nimport sys\ny = x + 1\nprint('out', y)\nprint('err', file=sys.stderr)\nclass Table:\n"
        "    def _repr_html_(self):\n        return '<b>t</b>'\nTable()"
    )
    p = analyze(body, "Cell In[7]")
    result = CellCode(body, "Cell In[7]", p.outputs, p.shows_value)(x=41)
    assert result["outputs"]["y"] == 42 and set(result["outputs"]) == {"sys", "y", "Table"}
    assert (result["stdout"], result["stderr"]) == ("out 42\n", "err\n")
    assert result["value"]["text/html"] == "<b>t</b>"


def test_failure_carries_the_cells_traceback_and_partial_output():
    body = "\nprint('so far')\ndef inner():\n    return 1 / 0\nvalue = inner()"
    code = CellCode(body, "Cell In[3]", ("value",), False)
    with pytest.raises(ZeroDivisionError) as info:
        code()
    shown = context.take_report(info.value)
    assert not hasattr(info.value, "_nbflow_cell") and context.take_report(info.value) is None  # taken once
    assert shown["stdout"] == "so far\n"
    tb = shown["traceback"]
    assert tb.startswith('Traceback (most recent call last):\n  File "Cell In[3]", line 5, in <module>\n')
    assert '  File "Cell In[3]", line 4, in inner\n    return 1 / 0' in tb
    assert "task_cell_code.py" not in tb


def test_concurrent_cells_capture_only_their_own_prints(capsys):
    barrier = threading.Barrier(2, timeout=60)
    body = "\nfor i in range(50):\n    print(tag, i)\n    if i == 10:\n        barrier.wait()"
    results = {}

    def run(tag):
        results[tag] = CellCode(body, "Cell In[1]", ("i",), False)(tag=tag, barrier=barrier)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    print("the main thread is not captured")
    for t in threads:
        t.join()
    for tag in ("a", "b"):
        assert results[tag]["stdout"] == "".join(f"{tag} {i}\n" for i in range(50))
    assert capsys.readouterr().out == "the main thread is not captured\n"
    assert sys.stdout.write is not None  # the router passes other writes through


def test_a_cell_travels_by_value_for_processes_and_dask_workers():
    body = "\ndef double(v):\n    return 2 * v\nout = double(n)"
    code = cloudpickle.loads(cloudpickle.dumps(CellCode(body, "Cell In[2]", ("double", "out"), False)))
    result = code(n=4)
    assert result["outputs"]["out"] == 8
    assert cloudpickle.loads(cloudpickle.dumps(result["outputs"]["double"]))(5) == 10
