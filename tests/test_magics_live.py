"""What a task cell shows while it runs, on every engine, in a real kernel: under that cell, live, and as it
stays once the cell has ended (progress bars, figures, ``display()``)."""

from __future__ import annotations

import time

import pytest
from magics_nb.kernel import run_notebook

from nbflow import sidechannel
from nbflow.magics.capture import Displays
from nbflow.magics.live import CHUNK, Inbox, reporting
from nbflow.magics.terminal import Screen

WIDGET = "application/vnd.jupyter.widget-view+json"
ENGINES = {
    "threads": "import nbflow",
    "processes": "import nbflow\nnbflow.use('local', processes=True)",
    "dask": "import nbflow\nnbflow.use('dask', n_workers=1, threads_per_worker=2, processes=True)",
}


def gate(path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(path)!r}):\n    time.sleep(0.01)\n"


def text(data: dict) -> str:
    return data.get("text/plain", "")


@pytest.mark.parametrize("engine", ENGINES)
def test_prints_and_a_progress_bar_show_live_under_the_task_cell_and_never_under_another(kernel, tmp_path, engine):
    assert kernel.run(ENGINES[engine]).reply["status"] == "ok"
    go = tmp_path / "go"
    cell = (
        "%%nbflow task --name live\nfrom tqdm.auto import tqdm\nprint('first')\n"
        "for i in tqdm(range(30)):\n    pass\n" + gate(go) + "print('second')\n"
    )
    status, streams, rich = kernel.run(cell).display_ids()
    kernel.wait_display(streams, lambda data: "first" in text(data))  # while the cell waits for the gate
    if engine == "threads":  # tqdm.auto in the kernel: a live ipywidgets bar
        bar = kernel.wait_display(rich, lambda data: WIDGET in data)
        assert kernel.widgets[bar[WIDGET]["model_id"]]["_model_name"] == "HBoxModel"
    else:  # elsewhere no widget can live: tqdm's text bar, redrawn in place on one line
        shown = kernel.wait_display(streams, lambda data: "30/30" in text(data))
        assert text(shown).count("|") == 2 and "| 0/30" not in text(shown)

    meanwhile = kernel.run("print('ordinary')")  # an ordinary cell while the task cell runs
    assert meanwhile.stream("stdout") == "ordinary\n"
    assert [m for m in meanwhile.messages if m["msg_type"] in ("display_data", "execute_result", "stream")] == [
        m for m in meanwhile.messages if m["msg_type"] == "stream" and m["content"]["text"] == "ordinary\n"
    ]
    assert "second" not in text(kernel.displays[streams])

    go.touch()
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    kernel.drain()
    assert "done in" in text(kernel.displays[status])
    printed = text(kernel.displays[streams])
    assert printed.startswith("first\n") and "second" in printed
    if engine == "threads":  # the bar ends as its final text line: what shows where no widget manager runs
        assert text(kernel.displays[rich]).startswith("100%|██████████| 30/30 [")
        assert WIDGET not in kernel.displays[rich]
    else:
        assert [line for line in printed.splitlines() if "30/30" in line] == [printed.splitlines()[-1]]  # stderr


def test_a_bar_next_to_a_figure_shows_live_in_one_output_widget_then_as_static_outputs(kernel, tmp_path):
    go = tmp_path / "go"
    cell = (
        "%%nbflow task --name mixed\nimport matplotlib.pyplot as plt\nfrom tqdm.auto import tqdm\n"
        "plt.plot([1, 2])\nplt.show()\nfor i in tqdm(range(5)):\n    pass\n"
        "for i in tqdm(range(5), leave=False):\n    pass\n" + gate(go)
    )
    assert kernel.run("%matplotlib inline").reply["status"] == "ok"
    _, _, rich = kernel.run(cell).display_ids()
    view = kernel.wait_display(rich, lambda data: WIDGET in data)
    box = view[WIDGET]["model_id"]
    assert kernel.widgets[box]["_model_name"] == "OutputModel"
    outputs = kernel.widgets[box]["outputs"]
    assert "image/png" in outputs[0]["data"] and WIDGET in outputs[1]["data"]  # in the order made
    assert len(outputs) == 2  # the bar with leave=False is gone, as under an ordinary cell

    go.touch()
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    kernel.drain()
    final = kernel.displays[rich]
    assert WIDGET not in final and box in kernel.closed  # static now; the Output widget is closed
    assert final["text/html"].startswith('<img src="data:image/png;base64,')
    assert "100%|██████████| 5/5 [" in final["text/html"]


def test_display_and_plt_show_in_a_child_process_come_back_live_as_rich_outputs(kernel, tmp_path):
    assert kernel.run(ENGINES["processes"]).reply["status"] == "ok"
    go = tmp_path / "go"
    cell = (
        "%%nbflow task --name rich\nimport matplotlib.pyplot as plt\nfrom IPython.display import HTML, Markdown\n"
        "class Broken:\n    def _repr_html_(self):\n        raise ValueError('no html')\n    def __repr__(self):\n"
        "        return 'broken repr'\n"
        "display(HTML('<b>bold</b>'))\nplt.plot([1, 2])\nplt.show()\n"
        + gate(go)
        + "display(Markdown('*md*'), Broken())\n"
    )
    _, streams, rich = kernel.run(cell).display_ids()
    live = kernel.wait_display(rich, lambda data: "<img" in data.get("text/html", ""))  # before the cell ends
    assert live["text/html"].startswith("<b>bold</b><img")
    go.touch()
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    kernel.drain()
    final = kernel.displays[rich]
    assert final["text/html"].count("<img") == 1  # plt.show() closed it: not shown again at the end
    assert "<em>md</em>" in final["text/html"] and "broken repr" in final["text/plain"]
    assert "Figure size" in final["text/plain"]


def test_saved_notebook_keeps_a_bar_as_its_last_text_line_and_no_widget():
    nb = run_notebook(
        ["%load_ext nbflow", "%%nbflow task --name bar\nfrom tqdm.auto import tqdm\nfor i in tqdm(range(7)):\n    pass",
         "%nbflow wait"]
    )  # fmt: skip
    outputs = nb.cells[1].outputs
    assert all(WIDGET not in out.get("data", {}) for out in outputs)
    assert [out.data["text/plain"][:20] for out in outputs if "7/7" in out.data.get("text/plain", "")] == [
        "100%|██████████| 7/7"
    ]


def test_a_flood_of_output_sends_only_its_tail_and_counts_the_lines_left_out():
    out, err, displays = Screen(), Screen(), Displays()
    sent = []
    inbox = Inbox(keep=100)
    sidechannel.listen("flood", lambda report: (sent.append(report), inbox.receive(report)))
    try:
        with reporting("flood", out, err, displays):
            for i in range(50_000):
                out.write(f"line {i}\n")
            out.write("x" * (3 * CHUNK))  # one line longer than a report carries
            err.write("\rhalf\rdone")
            deadline = time.monotonic() + 60
            while not any("stderr" in report for report in sent):
                assert time.monotonic() < deadline
                time.sleep(0.01)
    finally:
        sidechannel.forget("flood")
    assert all(len(report["stdout"][1]) <= CHUNK for report in sent if "stdout" in report)  # not 600 kB at once
    shown = inbox.streams()
    assert shown["stdout"].startswith("[nbflow] ... 50000 earlier lines")
    assert shown["stdout"].endswith("x" * 100) and len(shown["stdout"]) < 2 * CHUNK
    assert shown["stderr"] == "done"
    assert out.fresh is None and out.text().endswith("x")  # the cell's own screen still has all of it


def test_pyplot_is_per_thread_so_an_ordinary_cell_neither_shows_nor_closes_a_running_task_cells_figure(kernel):
    setup = "%matplotlib inline\nimport threading\nmade, go = threading.Event(), threading.Event()"
    assert kernel.run(setup).reply["status"] == "ok"
    task = kernel.run(
        "%%nbflow task --name plots\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1, 2])\nmade.set()\ngo.wait(60)\nplt.title('task figure')\nplt.show()"
    )
    ordinary = kernel.run(
        "import matplotlib.pyplot as plt\nassert made.wait(60)\nprint(plt.get_fignums())\nplt.plot([3, 4])\n"
    )  # ends with the inline backend showing, then closing, every figure it can see
    assert ordinary.stream("stdout") == "[]\n"
    shown = [m for m in ordinary.messages if m["msg_type"] == "display_data"]
    assert len(shown) == 1 and "image/png" in shown[0]["content"]["data"]  # its own figure only
    assert kernel.run("go.set()\n%nbflow wait").reply["status"] == "ok"
    kernel.drain()
    rich = kernel.displays[task.display_ids()[2]]
    assert "image/png" in rich and "Figure size" in rich["text/plain"]  # drawn on after the ordinary cell ended
    assert kernel.run("print(plt.get_fignums())").stream("stdout") == "[]\n"


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_clear_output_starts_the_task_cells_output_over_and_clears_no_other_cell(kernel, engine):
    assert kernel.run(ENGINES[engine]).reply["status"] == "ok"
    cell = (
        "%%nbflow task --name clears\nfrom IPython.display import HTML, clear_output\n"
        "for i in range(3):\n    clear_output(wait=True)\n    print(f'step {i}')\n    display(HTML(f'<i>{i}</i>'))\n"
    )
    task = kernel.run(cell)
    waited = kernel.run("%nbflow wait")
    kernel.drain()
    _, streams, rich = task.display_ids()
    assert text(kernel.displays[streams]) == "step 2"
    assert kernel.displays[rich]["text/html"] == "<i>2</i>"
    assert all(m["msg_type"] != "clear_output" for m in task.messages + waited.messages)
