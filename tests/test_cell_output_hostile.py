"""Whatever a task cell prints or shows, in a real kernel on every engine: text UTF-8 cannot carry (a file name
that is not UTF-8, a lone surrogate) shows escaped and breaks neither the cell, a later cell, the side channel
nor a Dask worker; an error of one of its displays shows under the task cell, never under another cell."""

from __future__ import annotations

import pytest

ENGINES = {
    "threads": "import nbflow",
    "processes": "import nbflow\nnbflow.use('local', processes=True)",
    "dask": "import nbflow\n%nbflow use dask --n-workers 1",
}
LIVE = 60  # seconds for live output to show: generous on a busy 2-core machine


def gate(path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(path)!r}):\n    time.sleep(0.01)\n"


def text(data: dict) -> str:
    return data.get("text/plain", "")


# Sent to the kernel as source: the escapes below are made there, at run time.
HOSTILE = r"""
import os, sys
from IPython.display import HTML
print(os.fsdecode(b"photo\xff.jpg"))
print("lone \ud800", file=sys.stderr)
display(HTML("<b>html \ud800</b>"))
"""
ODD_VALUE = r"""
class Odd:
    def __repr__(self):
        return "odd \udcff"
Odd()
"""


def live_cell_still_works(kernel, tmp_path) -> None:
    """A later task cell shows its prints live, finishes, and ``%nbflow wait`` reports nothing wrong."""
    go = tmp_path / "later-go"
    _, streams, _ = kernel.run("%%nbflow task --name later\n" + "print('later')\n" + gate(go)).display_ids()
    kernel.wait_display(streams, lambda data: text(data) == "later", timeout=LIVE)  # live, while it runs
    go.touch()
    waited = kernel.run("%nbflow wait later")
    assert waited.reply["status"] == "ok" and waited.stream("stderr") == ""


@pytest.mark.parametrize("engine", ENGINES)
def test_text_utf8_cannot_carry_shows_escaped_live_and_at_the_end_and_breaks_nothing(kernel, tmp_path, engine):
    assert kernel.run(ENGINES[engine]).reply["status"] == "ok"
    go = tmp_path / "go"
    status, streams, rich = kernel.run("%%nbflow task --name hostile" + HOSTILE + gate(go) + ODD_VALUE).display_ids()
    live = kernel.wait_display(streams, lambda data: "lone" in text(data), timeout=LIVE)  # sent while it runs
    assert text(live) == "photo\\udcff.jpg\nlone \\ud800"
    shown = kernel.wait_display(rich, lambda data: "html" in data.get("text/html", ""), timeout=LIVE)
    assert shown["text/html"] == "<b>html \\ud800</b>"

    go.touch()
    waited = kernel.run("%nbflow wait")
    assert waited.reply["status"] == "ok" and waited.stream("stderr") == ""
    kernel.drain()
    assert "done in" in text(kernel.displays[status])
    assert text(kernel.displays[streams]) == "photo\\udcff.jpg\nlone \\ud800"
    final = kernel.displays[rich]
    assert "<b>html \\ud800</b>" in final["text/html"] and "odd \\udcff" in final["text/html"]
    assert "odd \\udcff" in text(final)

    live_cell_still_works(kernel, tmp_path)
    counts = kernel.run("print(nbflow.engine().task_counts())").stream("stdout")
    assert "'running': 0" in counts and "'pending': 0" in counts, counts
    if engine == "dask":  # the worker that ran it is still there
        workers = kernel.run("print(len(nbflow.engine().client.scheduler_info()['workers']))").stream("stdout")
        assert workers == "1\n"


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_a_failure_whose_text_utf8_cannot_carry_shows_escaped_under_its_cell(kernel, tmp_path, engine):
    assert kernel.run(ENGINES[engine]).reply["status"] == "ok"
    failing = 'print("before \\ud800")\nraise ValueError("bad \\ud800 name")\n'
    _, streams, _ = kernel.run("%%nbflow task --name fails\n" + failing).display_ids()
    waited = kernel.run("%nbflow wait")
    assert waited.reply["status"] == "ok"
    assert waited.stream("stderr") == "nbflow: 1 task cell(s) failed: fails (ValueError)\n"
    kernel.drain()
    shown = text(kernel.displays[streams])
    hint = "(%nbflow debug fails opens the debugger where it raised; %nbflow replay fails runs it again here)"
    assert shown.startswith("before \\ud800\nTraceback") and shown.endswith(f"ValueError: bad \\ud800 name\n{hint}")

    blocking = '%%nbflow task --block --name blocks\nprint("before \\ud800")\nraise ValueError("bad \\udcff")'
    blocked = kernel.run(blocking)
    assert blocked.reply["status"] == "error" and blocked.stream("stdout") == "before \\ud800\n"
    assert "ValueError: bad \\udcff" in "\n".join(blocked.reply["traceback"])
    live_cell_still_works(kernel, tmp_path)


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_an_error_of_a_task_cells_display_shows_under_the_task_cell_not_under_the_running_cell(
    kernel, tmp_path, engine
):
    assert kernel.run(ENGINES[engine]).reply["status"] == "ok"
    go, shown = tmp_path / "go", tmp_path / "shown"
    cell = (
        "%%nbflow task --name shows\n"
        "class Bad:\n    def _repr_html_(self):\n        raise ValueError('no html for you')\n"
        "    def __repr__(self):\n        return 'Bad()'\n"
        + gate(go)
        + f"display(Bad())\nopen({str(shown)!r}, 'w').close()\n"
    )
    _, streams, rich = kernel.run(cell).display_ids()
    ordinary = kernel.run(f"open({str(go)!r}, 'w').close()\n" + gate(shown))  # runs while the task cell shows it
    assert ordinary.reply["status"] == "ok"
    own = [m for m in ordinary.messages if m["msg_type"] in ("error", "stream", "display_data", "execute_result")]
    assert own == []  # nothing of the task cell's lands under it (its display updates may go with its header)
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    kernel.drain()
    assert "ValueError" in text(kernel.displays[streams]) and "no html for you" in text(kernel.displays[streams])
    assert text(kernel.displays[rich]) == "Bad()"


def test_a_screen_shows_what_a_terminal_shows_however_the_text_is_cut_into_writes():
    from nbflow.magics.terminal import Screen

    screen = Screen()
    for i in range(41):  # print(f"{i}/40\r", end="") writes the text, then an empty end
        screen.write(f"{i}/40\r")
        screen.write("")
    screen.write("\n")
    for _ in range(100_000):
        screen.write(".")
    screen.write("\r\n")
    screen.write("lone \ud800\rred \x1b[31mx\x1b[0m")
    assert screen.text() == "40/40\n" + "." * 100_000 + "\nred \x1b[31mx\x1b[0m"
    assert screen.tail(2) == (1, "." * 100_000 + "\nred \x1b[31mx\x1b[0m")
    screen.write("\nphoto\udcff.jpg")
    assert screen.text().endswith("\nphoto\\udcff.jpg")
