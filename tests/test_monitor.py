"""The live panel's kernel side: its synced snapshot, the shared poller, the static fallback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import nbflow
from nbflow.panel import Monitor
from nbflow.render import format_amount, format_duration, render_html, render_text

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def poller_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nbflow-monitor"]


@pytest.fixture
def panels():
    """Panels made in a test are closed after it, so no poller outlives it (it would recreate an engine)."""
    made: list[Monitor] = []
    yield made
    for panel in made:
        panel.close()
    assert not poller_threads()


def wait_for_snapshot(panel: Monitor, predicate, what: str, timeout: float = 60) -> dict:
    """Wait, via the trait's change events, until the panel's snapshot satisfies ``predicate``."""
    hit = threading.Event()

    def check(_change=None) -> None:
        if predicate(panel.snapshot):
            hit.set()

    panel.observe(check, "snapshot")
    try:
        check()
        assert hit.wait(timeout), f"the panel never showed {what}; it shows {panel.snapshot}"
    finally:
        panel.unobserve(check, "snapshot")
    return panel.snapshot


def count_messages(panel: Monitor) -> list[dict]:
    """Record what the widget sends to the front-end (its comm is a dummy outside a kernel)."""
    sent: list[dict] = []
    send = panel.comm.send

    def recording_send(data=None, metadata=None, buffers=None):
        sent.append(data)
        return send(data=data, metadata=metadata, buffers=buffers)

    panel.comm.send = recording_send
    return sent


class Source:
    """A snapshot source: ``n`` workers, a counter bumped per call (so every call is a change), can fail."""

    def __init__(self, workers: int = 2) -> None:
        self.calls = 0
        self.workers = workers
        self.fail: Exception | None = None

    def __call__(self) -> dict:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return synthetic(self.workers, tick=self.calls)


def synthetic(workers: int, tick: int = 0) -> dict:
    """A snapshot of the occupancy shape: ``workers`` × (GPU, CPU, MEMORY), one limit with two holders."""
    now = time.time()
    return {
        "engine": "dask",
        "time": now,
        "workers": [
            {
                "name": f"tcp://127.0.0.1:{40000 + i}",
                "host": "127.0.0.1",
                "resources": {
                    "GPU": {"total": 2.0, "used": float((i + tick) % 3)},
                    "CPU": {"total": 8.0, "used": float(i % 9)},
                    "MEMORY": {"total": 100e9, "used": 70e9 * (i % 2)},
                },
                "running": i % 3,
                "waiting": i % 2,
                "queued": tick,
            }
            for i in range(workers)
        ],
        "tasks": {"pending": 1, "waiting": 2, "running": 3, "finished": tick, "error": 0, "cancelled": 0},
        "limits": [
            {
                "name": "GPU",
                "capacity": 2.0,
                "used": 2.0,
                "waiting": 1,
                "holders": [
                    {"pid": 4242, "host": "gpu-box", "task": "infer-1", "amount": 1.0, "since": now - 3.2},
                    {"pid": 4243, "host": "gpu-box", "task": "infer-2", "amount": 1.0, "since": now - 75},
                ],
            }
        ],
    }


def gpu_used(snap: dict) -> float:
    return sum(w["resources"].get("GPU", {}).get("used", 0) for w in snap["workers"])


def test_panel_follows_a_local_pipeline(panels):
    nbflow.use("local", workers=4)
    nbflow.limit("GPU", 2)
    release, started = threading.Event(), threading.Semaphore(0)

    @nbflow.task(resources={"GPU": 1}, name="infer")
    def infer(i):
        started.release()
        assert release.wait(60)
        return i

    panel = nbflow.monitor(interval=0.05)
    panels.append(panel)
    assert isinstance(panel, Monitor) and gpu_used(panel.snapshot) == 0
    sent = count_messages(panel)
    futures = infer.map(range(3))
    assert started.acquire(timeout=60) and started.acquire(timeout=60)

    busy = wait_for_snapshot(
        panel, lambda s: gpu_used(s) == 2 and s["tasks"]["waiting"] == 1, "two GPU tasks running, one waiting"
    )
    [worker] = busy["workers"]
    assert worker["resources"]["GPU"] == {"total": 2.0, "used": 2.0}
    assert (worker["running"], worker["waiting"]) == (2, 1)
    assert busy["tasks"]["running"] == 2
    [gpu] = [lim for lim in busy["limits"] if lim["name"] == "GPU"]
    assert gpu["used"] == 2.0 and [h["task"] for h in gpu["holders"]] == ["infer", "infer"]
    assert sent and all(set(msg["state"]) == {"snapshot"} for msg in sent)  # one trait per message

    release.set()
    assert nbflow.gather(futures, timeout=60) == [0, 1, 2]
    done = wait_for_snapshot(panel, lambda s: s["tasks"]["finished"] == 3 and gpu_used(s) == 0, "all three done")
    assert done["tasks"]["running"] == done["tasks"]["waiting"] == 0


def test_one_message_per_change_and_none_when_only_the_time_moved(panels):
    source = Source()
    panel = Monitor(interval=3600, source=source)  # the poller stays out of the way
    panels.append(panel)
    sent = count_messages(panel)

    assert panel.refresh() is True
    assert len(sent) == 1 and sent[0]["method"] == "update" and list(sent[0]["state"]) == ["snapshot"]
    assert sent[0]["state"]["snapshot"]["workers"][0]["queued"] == source.calls

    same = dict(panel.snapshot, time=panel.snapshot["time"] + 5)
    assert panel.refresh(same) is False and len(sent) == 1


def test_close_stops_the_thread(panels):
    panel = Monitor(interval=0.01, source=Source())
    assert len(poller_threads()) == 1
    wait_for_snapshot(panel, lambda s: s["tasks"]["finished"] >= 3, "a few ticks")
    panel.close()
    assert not poller_threads()
    assert panel.comm is None


def test_panels_share_one_poller(panels):
    shared, other = Source(), Source(workers=1)
    events: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for key, source in (("a", shared), ("b", shared), ("c", other)):
        panel = Monitor(interval=0.2, source=source)
        panel.observe(lambda change, key=key: events[key].append(change["new"]["tasks"]["finished"]), "snapshot")
        panels.append(panel)
    assert len(poller_threads()) == 1

    wait_for_snapshot(panels[1], lambda s: len(events["a"]) >= 5 and len(events["b"]) >= 5, "five ticks")
    wait_for_snapshot(panels[2], lambda s: len(events["c"]) >= 5, "five ticks")
    assert len(poller_threads()) == 1
    # panels on one source tick together: one snapshot per tick feeds both (2 calls were the constructors)
    assert shared.calls - 2 <= max(len(events["a"]), len(events["b"])) + 1
    assert set(events["a"][1:-1]) <= set(events["b"])

    panels[0].close()
    assert len(poller_threads()) == 1  # still serving the other two
    n = len(events["b"])
    wait_for_snapshot(panels[1], lambda s: len(events["b"]) > n, "a tick after one panel closed")
    panels[1].close()
    panels[2].close()
    assert not poller_threads()

    again = Monitor(interval=0.05, source=other)  # the next panel starts a new poller
    panels.append(again)
    assert len(poller_threads()) == 1


def test_fallback_mimebundle_has_text_and_html(panels):
    panel = Monitor(interval=3600, source=lambda: synthetic(2))
    panels.append(panel)
    data, _metadata = panel._repr_mimebundle_()
    assert data[WIDGET_MIME]["model_id"] == panel.model_id
    text, page = data["text/plain"], data["text/html"]
    assert "dask engine" in text and "tcp://127.0.0.1:40001 (127.0.0.1): GPU 1/2, CPU 1/8, MEMORY 70 GB/100 GB" in text
    assert "pid 4243@gpu-box task infer-2 holds 1 for 1 min 15 s" in text
    assert "<table>" in page and "<td>tcp://127.0.0.1:40000</td>" in page and "MEMORY 0/100 GB" in page
    assert "infer-1" in page and "<script" not in page


def test_fallback_escapes_html():
    snap = synthetic(1)
    snap["workers"][0]["name"] = "<img src=x onerror=alert(1)>"
    assert "<img" not in render_html(snap) and "&lt;img" in render_html(snap)
    assert "<img src=x" in render_text(snap)


def test_a_failing_source_shows_the_error_and_keeps_the_last_data(panels):
    source = Source()
    panel = Monitor(interval=0.02, source=source)
    panels.append(panel)
    source.fail = ConnectionError("scheduler tcp://127.0.0.1:8786 gone")
    failed = wait_for_snapshot(panel, lambda s: "error" in s, "the error")
    assert failed["error"] == "ConnectionError: scheduler tcp://127.0.0.1:8786 gone"
    assert len(failed["workers"]) == 2  # the last good data stays on screen
    assert "error: ConnectionError" in render_text(failed)
    source.fail = None
    wait_for_snapshot(panel, lambda s: "error" not in s, "recovery")
    assert poller_threads()


def test_a_panel_that_cannot_send_does_not_stop_the_others(panels, caplog):
    broken = Monitor(interval=0.02, source=Source())
    panels.append(broken)

    def closed_socket(*args, **kwargs):
        raise OSError("socket closed")

    broken.comm.send = closed_socket
    working = Monitor(interval=0.02, source=Source())
    panels.append(working)
    wait_for_snapshot(working, lambda s: s["tasks"]["finished"] >= 5, "ticks next to a broken panel")
    assert "refreshing the nbflow panel" in caplog.text and "socket closed" in caplog.text


@pytest.mark.parametrize("interval", [0, -1, "fast", True, float("nan")])
def test_bad_interval_is_a_clear_error(interval):
    with pytest.raises(ValueError, match="monitor interval must be seconds > 0"):
        nbflow.monitor(interval=interval)
    assert not poller_threads()


def test_an_unclosed_panel_does_not_hold_up_interpreter_exit(tmp_path):
    script = (
        "from nbflow.panel import Monitor\n"
        "import threading, time\n"
        "m = Monitor(interval=0.01, source=lambda: {'engine': 'local', 'time': time.time(), 'workers': [],"
        " 'tasks': {}, 'limits': []})\n"
        "assert [t for t in threading.enumerate() if t.name == 'nbflow-monitor']\n"
        "print('exiting')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "exiting\n", done.stderr


def test_formats():
    assert [format_amount("MEMORY", x) for x in (70e9, 512, 1.5e6)] == ["70 GB", "512", "1.5 MB"]
    assert [format_amount("GPU", x) for x in (2.0, 0.5, 1 / 3)] == ["2", "0.5", "0.333"]
    assert [format_duration(s) for s in (3.21, 75, 7800, -1)] == ["3.2 s", "1 min 15 s", "2 h 10 min", "0.0 s"]


def test_import_nbflow_does_not_import_the_widget_stack():
    code = (
        "import sys, nbflow; print(sorted(m for m in ('anywidget', 'ipywidgets', 'nbflow.panel') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_front_end_ships_with_the_package():
    assert "export default" in Monitor._esm and "render(" in Monitor._esm
    assert ".nbflow-monitor" in Monitor._css and "--jp-ui-font-color1" in Monitor._css


def test_no_public_function_is_shadowed_by_a_submodule_of_the_same_name():
    code = (
        "import importlib, pkgutil, nbflow\n"
        "subs = {m.name for m in pkgutil.iter_modules(nbflow.__path__) if not m.name.startswith('_')}\n"
        "for name in subs: importlib.import_module('nbflow.' + name)\n"
        "clash = sorted(subs & set(nbflow.__all__))\n"
        "shadowed = sorted(n for n in nbflow.__all__ if type(getattr(nbflow, n)).__name__ == 'module')\n"
        "print(clash, shadowed)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout == "[] []\n", done.stdout + done.stderr


def wait_for_file(path: str) -> int:
    """A task body for the Dask engine (a worker process): hold until the test creates ``path``."""
    import pathlib

    while not pathlib.Path(path).exists():
        time.sleep(0.05)
    return 1


def test_panel_on_the_dask_engine(panels, tmp_path):
    nbflow.use("dask", n_workers=2, resources=[{"GPU": 2}, {"MEMORY": 100e9}])
    infer = nbflow.task(resources={"GPU": 1}, name="infer")(wait_for_file)
    panel = nbflow.monitor(interval=0.05)
    panels.append(panel)
    release = tmp_path / "release"
    future = infer.submit(str(release))

    def gpu_worker(snap):
        return [w for w in snap["workers"] if "GPU" in w["resources"]]

    busy = wait_for_snapshot(panel, lambda s: gpu_used(s) == 1, "the GPU task running")
    assert busy["engine"] == "dask" and len(busy["workers"]) == 2
    [gpu] = gpu_worker(busy)
    assert gpu["resources"]["GPU"] == {"total": 2.0, "used": 1.0} and gpu["running"] == 1
    [memory] = [w for w in busy["workers"] if "MEMORY" in w["resources"]]
    assert memory["resources"]["MEMORY"] == {"total": 100e9, "used": 0.0}
    assert "GPU 1/2" in render_text(busy) and "MEMORY 0/100 GB" in render_text(busy)

    release.touch()
    assert future.result(timeout=60) == 1
    done = wait_for_snapshot(panel, lambda s: gpu_used(s) == 0 and s["tasks"]["finished"] == 1, "the task done")
    assert gpu_worker(done)[0]["running"] == 0
