"""Kernel > Interrupt during ``%nbflow wait`` / ``--block`` in a real kernel: the wait stops, the task does not."""

from __future__ import annotations

import pytest
from magics_nb.kernel import Kernel, interrupt_while_blocked


@pytest.fixture
def kernel(limits_dir):
    k = Kernel({"NBFLOW_LIMITS_DIR": str(limits_dir)})
    assert k.run("%load_ext nbflow\nimport threading\ngate = threading.Event()").reply["status"] == "ok"
    yield k
    k.run("gate.set()")
    k.close()


def test_interrupting_wait_keeps_the_task_which_rebinds_later(kernel):
    kernel.run('%%nbflow task\ngate.wait(300)\nv = 5\nprint("v computed")')
    ex = interrupt_while_blocked(kernel, 'print("blocking")\n%nbflow wait')
    assert ex.reply["traceback"] == [
        "KeyboardInterrupt: stopped waiting; 1 task cell(s) keep running and rebind their outputs when done: v "
        "(%nbflow stop v stops them)"
    ]
    assert kernel.run("print(type(v).__name__, v.done())").stream("stdout") == "Future False\n"
    kernel.run("gate.set()")
    kernel.run("%nbflow wait v")
    assert kernel.run("print(v)").stream("stdout") == "5\n"


def test_interrupting_a_blocking_cell_moves_its_output_to_a_live_display(kernel):
    # a thread of the task prints uncaptured, so under the running cell: the signal that the cell blocks now
    cell = "\n".join(
        [
            "%%nbflow task --block",
            'threading.Thread(target=print, args=("blocking",)).start()',
            "gate.wait(300)",
            "w = 7",
            'print("w")',
        ]
    )
    ex = interrupt_while_blocked(kernel, cell)
    status, printed, _ = ex.display_ids()  # created when interrupted, under the interrupted cell
    assert kernel.displays[status]["text/plain"].startswith("[nbflow] w: running")
    kernel.run("gate.set()")
    kernel.run("%nbflow wait")
    assert kernel.run("print(w)").stream("stdout") == "7\n"
    assert kernel.displays[printed]["text/plain"] == "w"
