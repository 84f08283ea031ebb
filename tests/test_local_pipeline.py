"""The local engine runs the seed pipeline inside its limits, keeps unlimited work flowing, reports occupancy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from limits_helpers import wait_for

import nbflow
from nbflow.futures import STATUSES


class Peak:
    """Counts tasks inside a block and remembers the most at once (measured inside the tasks, not by timing)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def seed_pipeline(peak: Peak):
    @nbflow.task
    def download(i):
        time.sleep(0.1)
        return f"image{i}"

    @nbflow.task(resources={"GPU": 1})
    def infer(image):
        with peak:
            time.sleep(0.3)
        return image.upper()

    @nbflow.task
    def save(pred):
        time.sleep(0.05)
        return f"saved {pred}"

    return download, infer, save


@pytest.mark.parametrize("workers", [8, 2])
def test_seed_pipeline_results_and_gpu_peak_exactly_two(workers):
    nbflow.use("local", workers=workers)
    nbflow.limit("GPU", 2)
    peak = Peak()
    download, infer, save = seed_pipeline(peak)
    outs = [save.submit(infer.submit(download.submit(i))) for i in range(6)]
    assert nbflow.gather(outs, timeout=60) == [f"saved IMAGE{i}" for i in range(6)]
    assert peak.peak == 2
    assert [f.status for f in outs] == ["finished"] * 6
    (gpu,) = [lim for lim in nbflow.limits() if lim.name == "GPU"]
    assert gpu.used == 0 and gpu.holders == []


def test_unlimited_tasks_keep_flowing_while_gpu_tasks_wait():
    nbflow.use("local", workers=2)
    nbflow.limit("GPU", 1)
    release = threading.Event()

    @nbflow.task(resources={"GPU": 1})
    def hold(i):
        assert release.wait(60)
        return i

    @nbflow.task
    def free(i):
        return i * 2

    gpu = hold.map(range(4))
    wait_for(lambda: gpu[0].status == "running", what="the first GPU task to run")
    quick = free.map(range(50))  # only 1 of 2 workers is busy: the 3 waiting GPU tasks hold none
    assert nbflow.gather(quick, timeout=30) == [i * 2 for i in range(50)]
    assert [f.status for f in gpu[1:]] == ["waiting"] * 3
    workers = nbflow.occupancy()["workers"][0]
    assert workers["running"] == 1 and workers["waiting"] == 3
    release.set()
    assert nbflow.gather(gpu, timeout=30) == [0, 1, 2, 3]


def test_occupancy_snapshot_counts_and_resources():
    nbflow.use("local", workers=3)
    nbflow.limit("GPU", 2)
    gate = threading.Event()

    @nbflow.task(resources={"GPU": 1})
    def infer(i):
        assert gate.wait(60)
        return i

    @nbflow.task
    def boom():
        raise ValueError("no")

    futs = infer.map(range(3))
    nbflow.wait([boom.submit()])
    wait_for(lambda: nbflow.occupancy()["tasks"]["running"] >= 2, what="2 tasks to run")
    snap = nbflow.occupancy()
    json.dumps(snap)  # plain and JSON-able
    assert snap["engine"] == "local"
    assert set(snap["tasks"]) == set(STATUSES)
    assert snap["tasks"]["running"] == 2 and snap["tasks"]["waiting"] == 1 and snap["tasks"]["error"] == 1
    (worker,) = snap["workers"]
    assert worker["name"] == "local" and worker["resources"]["GPU"] == {"total": 2.0, "used": 2.0}
    assert (worker["running"], worker["waiting"], worker["queued"]) == (2, 1, 0)
    assert [(h["task"], h["pid"]) for h in snap["limits"][0]["holders"]] == [("infer", os.getpid())] * 2
    gate.set()
    nbflow.wait(futs)
    snap = nbflow.occupancy()
    assert snap["tasks"]["finished"] == 3 and snap["tasks"]["running"] == 0
    assert snap["workers"][0]["resources"]["GPU"]["used"] == 0


def test_unknown_or_too_large_resources_fail_at_submit_and_hold_nothing():
    nbflow.limit("GPU", 2)

    @nbflow.task(resources={"TPU": 1})
    def tpu():
        return 1

    @nbflow.task(resources={"GPU": 3})
    def greedy():
        return 1

    with pytest.raises(nbflow.NoSuchLimit, match=r'nbflow.limit\("TPU", n\)'):
        tpu.submit()
    with pytest.raises(nbflow.Unsatisfiable, match="capacity 2"):
        greedy.submit()
    assert nbflow.engine().occupancy()["tasks"]["pending"] == 0
    assert all(lim.used == 0 for lim in nbflow.limits())
    assert nbflow.gather([greedy.with_options(resources={"GPU": 2}).submit()], timeout=30) == [1]


def test_limits_option_adds_to_resources_and_is_held_while_running():
    nbflow.limit("GPU", 2)
    nbflow.limit("host-gpu", 1)
    seen = []

    @nbflow.task(resources={"GPU": 1}, limits={"host-gpu": 1, "GPU": 1})
    def both():
        seen.extend((lim.name, lim.used) for lim in nbflow.limits())
        return "ok"

    assert both.submit().result(30) == "ok"
    assert sorted(seen) == [("GPU", 2.0), ("host-gpu", 1.0)]
    assert all(lim.used == 0 for lim in nbflow.limits())


def test_direct_call_runs_here_holding_its_resources():
    nbflow.limit("GPU", 1)
    here = threading.current_thread()

    @nbflow.task(resources={"GPU": 1})
    def infer(x):
        (gpu,) = nbflow.limits()
        assert threading.current_thread() is here
        return x, [(h.task, h.pid) for h in gpu.holders]

    @nbflow.task
    def download():
        return 7

    assert infer(download.submit()) == (7, [("infer", os.getpid())])
    assert nbflow.limits()[0].used == 0


def test_await_future_in_asyncio():
    import asyncio

    @nbflow.task
    def double(x):
        return 2 * x

    async def main():
        first = await double.submit(21)
        return first, await asyncio.gather(*(double.submit(i) for i in range(3)))

    assert asyncio.run(main()) == (42, [0, 2, 4])


def test_import_nbflow_does_not_import_heavy_modules():
    code = "import sys, nbflow; print(sorted(m for m in ('distributed', 'dask', 'IPython', 'ipywidgets', "
    code += "'anywidget', 'cloudpickle', 'multiprocessing') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
