"""What a task cell prints, in a real kernel: shown as a terminal shows it, at a cost proportional to its size."""

from __future__ import annotations

import json
import queue

from magics_nb.kernel import Kernel, run_notebook

LINES = 20_000
PRINT_LINES = f"for i in range({LINES}):\n    print(f'line {{i:05d}} ' + 'x' * 40)\n"
BAR = (
    "import sys, time\n"
    "for i in range(41):\n"
    "    print(f'\\r\\x1b[32m{i}/40\\x1b[0m', end='', file=sys.stderr, flush=True)\n"
    "    time.sleep(0.005)\n"
    "print(file=sys.stderr)\n"
)


def output_bytes(kernel: Kernel, code: str, when_busy=None) -> int:
    """Bytes of output content on IOPub until ``code`` has run (display updates of other cells included);
    ``when_busy()`` is called once the kernel runs it."""
    total = 0
    msg_id = kernel.send(code)
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=120)
        kernel._track(msg)
        if msg["msg_type"] in ("stream", "display_data", "update_display_data", "execute_result"):
            total += len(json.dumps(msg["content"]))
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status":
            if msg["content"]["execution_state"] == "idle":
                return total
            if when_busy is not None:
                when_busy()


def test_iopub_traffic_of_a_task_cell_stays_within_twice_an_ordinary_cells(kernel, tmp_path):
    ordinary = output_bytes(kernel, PRINT_LINES)
    go = tmp_path / "go"
    waits = f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\n"
    task = output_bytes(kernel, "%%nbflow task --name printer\n" + waits + PRINT_LINES)
    task += output_bytes(kernel, "%nbflow wait", when_busy=go.touch)  # it prints while the wait runs
    try:
        while True:
            msg = kernel.kc.get_iopub_msg(timeout=0.5)
            if msg["msg_type"] == "update_display_data":
                task += len(json.dumps(msg["content"]))
    except queue.Empty:
        pass
    assert "line 19999" in json.dumps(kernel.displays)
    assert ordinary > LINES * 40
    assert task <= 2 * ordinary, f"task cell {task} bytes on IOPub, ordinary cell {ordinary}"


def test_a_task_cell_that_ends_while_no_cell_runs_costs_its_output_once(kernel):
    ordinary = output_bytes(kernel, PRINT_LINES)
    task = output_bytes(kernel, "%%nbflow task --name printer\n" + PRINT_LINES)
    while not any("done in" in data.get("text/plain", "") for data in kernel.displays.values()):
        msg = kernel.kc.get_iopub_msg(timeout=120)
        kernel._track(msg)
        if msg["msg_type"] == "update_display_data":
            task += len(json.dumps(msg["content"]))
    assert task <= 2 * ordinary, f"task cell {task} bytes on IOPub, ordinary cell {ordinary}"


def test_a_carriage_return_redraws_the_line_in_place_and_ansi_colours_are_kept(kernel):
    assert kernel.run("%%nbflow task --name bar\n" + BAR).reply["status"] == "ok"
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    kernel.drain()
    shown = [data["text/plain"] for data in kernel.displays.values() if "40/40" in data.get("text/plain", "")]
    assert len(shown) == 1
    assert shown[0] == "\x1b[32m40/40\x1b[0m", repr(shown[0])  # one line, as an ordinary cell shows it


def test_the_saved_notebook_is_no_larger_than_with_an_ordinary_cell():
    nb = run_notebook(["%load_ext nbflow", PRINT_LINES, "%%nbflow task --name printer\n" + PRINT_LINES, "%nbflow wait"])
    ordinary, task = (len(json.dumps(cell.outputs)) for cell in nb.cells[1:3])
    assert "line 19999" in json.dumps(nb.cells[2].outputs)  # all of it, once the cell has ended
    assert task <= ordinary + 1024, f"task cell outputs {task} bytes, ordinary cell {ordinary}"


SHOWS = (
    "import matplotlib.pyplot as plt\n"
    "from IPython.display import HTML, display\n"
    "display(HTML('<b>rich html</b>'))\n"
    "plt.plot([1, 2, 3])\n"
    "plt.show()\n"
    "fig, ax = plt.subplots()\n"
    "ax.bar([1, 2], [3, 4])\n"
    "fig\n"
)


def rich_outputs(kernel: Kernel, display_ids: list[str]) -> dict:
    kernel.drain()
    return kernel.displays[display_ids[2]]


def test_display_and_figures_of_a_task_cell_show_under_it_and_never_under_another_cell(kernel):
    assert kernel.run("%matplotlib inline\nimport threading\ngo = threading.Event()").reply["status"] == "ok"
    task = kernel.run("%%nbflow task --name shows\ngo.wait(60)\n" + SHOWS)
    ordinary = kernel.send("go.set()\nimport time\ntime.sleep(1)\nprint('ordinary')")  # runs while the task shows
    meanwhile = kernel.collect(ordinary)
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    after = kernel.run("print('after')")
    for execution in (meanwhile, after):  # nothing of the task cell, and no figure flushed under them
        new_outputs = [m["msg_type"] for m in execution.messages if m["msg_type"] in ("display_data", "execute_result")]
        assert new_outputs == []  # (updates of the task cell's own displays may go with its header)
    shown = rich_outputs(kernel, task.display_ids())
    assert "<b>rich html</b>" in shown["text/html"]
    assert shown["text/html"].count('<img src="data:image/png;base64,') == 2  # plt.show() and the last value
    assert "Figure size" in shown["text/plain"]
    assert kernel.run("import matplotlib.pyplot as plt\nprint(plt.get_fignums())").stream("stdout") == "[]\n"


def test_a_child_process_sends_its_figures_back_as_png_and_leaves_none_open(kernel):
    setup = "import nbflow\nnbflow.use('local', processes=True)"
    assert kernel.run(setup).reply["status"] == "ok"
    task = kernel.run(
        "%%nbflow task --name remote\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\nax.plot([3, 1])\nplt.show()\nprint('drawn')"
    )
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    shown = rich_outputs(kernel, task.display_ids())
    assert "image/png" in shown and "Figure size" in shown["text/plain"]
    printed = kernel.displays[task.display_ids()[1]]["text/plain"]
    assert printed == "drawn"  # no 'non-interactive' warning from plt.show() where nothing shows
    closed = "import matplotlib.pyplot as plt\nprint(type(fig).__name__, plt.get_fignums())"
    assert kernel.run(closed).stream("stdout") == "Figure []\n"  # the output value does not reopen in pyplot


def test_a_figure_a_task_cell_assigns_on_dask_workers_comes_back_closed(kernel):
    setup = "%matplotlib inline\nimport nbflow\nnbflow.use('dask', n_workers=1, threads_per_worker=1, processes=True)"
    assert kernel.run(setup).reply["status"] == "ok"
    cell = "%%nbflow task --name plot\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 3])"
    task = kernel.run(cell)
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    after = kernel.run("import matplotlib.pyplot as plt\nprint(type(fig).__name__, plt.get_fignums())")
    assert after.stream("stdout") == "Figure []\n"  # unpickled in the kernel, it did not join pyplot again
    assert [m for m in after.messages if m["msg_type"] in ("display_data", "execute_result")] == []
    shown = rich_outputs(kernel, task.display_ids())  # shown under the task cell instead, before its last value
    assert shown["text/html"].startswith('<img src="data:image/png;base64,') and "Line2D" in shown["text/plain"]
    kernel.run("nbflow.use('local')")
