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
