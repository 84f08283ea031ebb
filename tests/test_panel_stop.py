"""The panel's running-task list and its stop message in a real kernel: the message a stop button sends over the
widget's comm stops that task, and the panel shows it stopping, then gone (the browser test clicks the button)."""

from __future__ import annotations

import queue
import time

from magics_nb.kernel import Kernel

SETUP = """
import threading, time, nbflow
release = threading.Event()

@nbflow.task(name="spin")
def spin():
    while not release.is_set():  # pure Python: TaskStopped arrives at once
        pass

@nbflow.task(name="held")
def held():
    release.wait()  # a C call: stopping until it returns

spun, holding = spin.submit(), held.submit()
panel = nbflow.monitor(interval=0.1)
"""


def panel_state(kernel: Kernel, predicate, what: str, timeout: float = 60) -> tuple[str, dict]:
    """Read iopub until the panel's synced snapshot satisfies ``predicate``; its comm id and that snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        for comm_id, state in kernel.widgets.items():
            snap = state.get("snapshot")
            if snap is not None and predicate(snap):
                return comm_id, snap
        left = deadline - time.monotonic()
        if left <= 0:
            shown = [s.get("snapshot", {}).get("running") for s in kernel.widgets.values()]
            raise AssertionError(f"the panel never showed {what}; its running list: {shown}")
        try:
            kernel._track(kernel.kc.get_iopub_msg(timeout=min(left, 1)))
        except queue.Empty:
            pass


def rows(snap: dict) -> dict[str, dict]:
    return {row["name"]: row for row in snap.get("running", [])}


def click_stop(kernel: Kernel, comm_id: str, key: str) -> None:
    """What the front end's stop button sends: a custom message on the widget's comm."""
    content = {"comm_id": comm_id, "data": {"method": "custom", "content": {"stop": key}}}
    kernel.kc.shell_channel.send(kernel.kc.session.msg("comm_msg", content))


def test_the_stop_message_stops_the_task_and_the_panel_shows_it(kernel):
    ex = kernel.run(SETUP)
    assert ex.reply["status"] == "ok", ex.reply
    comm, snap = panel_state(kernel, lambda s: {"spin", "held"} <= rows(s).keys(), "both tasks running")
    assert {row["status"] for row in rows(snap).values()} == {"running"}
    assert all(row["worker"] for row in rows(snap).values())  # where each runs

    click_stop(kernel, comm, rows(snap)["spin"]["key"])
    panel_state(kernel, lambda s: "spin" not in rows(s) and s["tasks"]["cancelled"] == 1, "spin stopped")

    click_stop(kernel, comm, rows(snap)["held"]["key"])
    _, snap = panel_state(kernel, lambda s: rows(s).get("held", {}).get("status") == "stopping", "held stopping")
    assert snap["tasks"]["stopping"] == 1
    click_stop(kernel, comm, "no-such-key")  # a stale button (the task ended meanwhile) is ignored
    assert kernel.run("print(nbflow.panel.stop_task('no-such-key'))").stream("stdout") == "False\n"
    ex = kernel.run("release.set()\nnbflow.wait([spun, holding])\nprint(spun.status, holding.status)")
    assert ex.stream("stdout") == "cancelled cancelled\n"
    panel_state(kernel, lambda s: not rows(s) and s["tasks"]["cancelled"] == 2, "no running task")
    assert kernel.run("panel.close()").reply["status"] == "ok"
