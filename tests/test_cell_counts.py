"""A task cell counts as one task, by its own state, however many names it assigns: in ``task_counts()``,
``occupancy()`` and so in the panel."""

from __future__ import annotations

import json

import pytest

ENGINES = {
    "threads": "import nbflow",
    "dask": "import nbflow\n%nbflow use dask --n-workers 1",
}
TRAIN = "%%nbflow task --name train\nstep = 3\nloss = 0.5\nfrom math import tau\n"
BROKEN = "%%nbflow task --name broken\ndef helper():\n    return 1\nbad = 1\nraise ValueError('broken on purpose')\n"
AFTER = "%%nbflow task --name after\nmore = loss * 2\n"  # an output of ``train`` as its input


def counts(kernel) -> dict:
    shown = kernel.run(
        "import json\nprint(json.dumps([nbflow.engine().task_counts(), nbflow.occupancy()['tasks']]))"
    ).stream("stdout")
    engine_counts, panel_counts = json.loads(shown)
    assert engine_counts == panel_counts
    return {status: n for status, n in engine_counts.items() if n}


@pytest.mark.parametrize("engine", ENGINES)
def test_each_task_cell_counts_once_by_its_state_whatever_it_assigns(kernel, engine):
    assert kernel.run(ENGINES[engine]).reply["status"] == "ok"
    setup = "@nbflow.task\ndef download(i):\n    return i\nfutures = download.map(range(8))\nnbflow.gather(futures)"
    assert kernel.run(setup).reply["status"] == "ok"
    for cell in (TRAIN, BROKEN, AFTER):
        assert kernel.run(cell).reply["status"] == "ok"
    waited = kernel.run("%nbflow wait")
    assert waited.stream("stderr") == "nbflow: 1 task cell(s) failed: broken (ValueError)\n"
    assert counts(kernel) == {"finished": 8 + 2, "error": 1}
