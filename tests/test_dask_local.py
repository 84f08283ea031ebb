"""The Dask engine on its embedded LocalCluster: per-worker resources, nested tasks, bad input."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading

import distributed
import psutil
import pytest
from limits_helpers import wait_for

import nbflow
from nbflow.engines.dask import DaskEngine


def where(*_: object) -> str:
    return str(distributed.get_worker().name)


def test_embedded_cluster_gives_each_worker_its_own_resources():
    before = _listening()
    engine = nbflow.use("dask", n_workers=3, threads_per_worker=2, resources=[{"GPU": 2}, {"GPU": 2}, "MEMORY=100e9"])
    assert isinstance(engine, DaskEngine) and nbflow.engine() is engine
    assert engine.client.scheduler.address.startswith("tcp://127.0.0.1:")
    opened = _listening() - before
    assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}  # scheduler, workers, HTTP: 127.0.0.1 only
    gpu = nbflow.task(where, resources={"GPU": 1})
    mem = nbflow.task(where, resources="MEMORY=70GB")
    assert set(nbflow.gather(gpu.map(range(8)))) <= {"0", "1"}
    assert set(nbflow.gather(mem.map(range(3)))) == {"2"}
    offers = {w["name"]: w["resources"] for w in engine.occupancy()["workers"]}
    assert offers == {
        "0": {"GPU": {"total": 2.0, "used": 0.0}},
        "1": {"GPU": {"total": 2.0, "used": 0.0}},
        "2": {"MEMORY": {"total": 1e11, "used": 0.0}},
    }
    with pytest.raises(nbflow.Unsatisfiable, match="0 GPU=2; 1 GPU=2; 2 MEMORY=1e"):
        gpu.with_options(resources={"GPU": 4}).submit()
    cluster = engine.cluster
    engine.close()  # returns at once; the cluster it started shuts down in the background
    wait_for(lambda: cluster.status.name == "closed", timeout=60)


def _listening() -> set[tuple[str, int]]:
    """Listening sockets of this process and its children."""
    me = psutil.Process()
    pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def outer(n: int) -> list[int]:
    """A pipeline inside a task: submits tasks and waits on them, from the worker."""
    assert nbflow.engine().kind == "dask"
    square = nbflow.task(lambda x: x * x, name="square")
    return nbflow.gather(square.map(range(n)))


def test_nested_tasks_with_one_single_threaded_worker():
    nbflow.use("dask", n_workers=1, threads_per_worker=1, processes=False)
    pipeline = nbflow.task(outer, name="pipeline")
    assert nbflow.gather(pipeline.map([2, 3, 4]), timeout=120) == [[0, 1], [0, 1, 4], [0, 1, 4, 9]]
    # deeper: a task running pipelines, under a timeout (its function runs in a helper thread)
    deeper = nbflow.task(lambda: nbflow.gather(pipeline.map([1, 2])), name="subflows", timeout=120)
    assert deeper.submit().result(timeout=120) == [[0], [0, 1]]


def test_a_plain_future_from_elsewhere_is_a_dependency_that_never_blocks_submit():
    nbflow.use("dask", n_workers=1, threads_per_worker=2, processes=False)
    plus_one = nbflow.task(lambda x: x + 1, name="plus_one")
    given = nbflow.Future("given")
    fut = plus_one.submit(given)
    assert not fut.done()
    given.set_result(41)
    assert fut.result(timeout=60) == 42
    failed = nbflow.Future("broken")
    dependent = plus_one.submit([failed])
    failed.set_exception(OSError("disk full"))
    with pytest.raises(nbflow.UpstreamError, match="'broken' failed: OSError: disk full"):
        dependent.result(timeout=60)


def test_futures_are_awaitable_and_results_come_on_demand():
    import asyncio

    engine = nbflow.use("dask", n_workers=1, threads_per_worker=2, processes=False)
    fut = nbflow.task(lambda: {"big": list(range(1000))}).submit()
    assert asyncio.run(_await(fut))["big"][-1] == 999
    counts = engine.occupancy()["tasks"]
    assert counts["finished"] == 1 and sum(counts.values()) == 1


async def _await(fut):
    return await fut


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"on_unsatisfiable": "later"}, nbflow.EngineConfigError, "on_unsatisfiable must be 'raise' or 'wait'"),
        ({"resources": [{"GPU": "abc"}]}, nbflow.ResourceSpecError, "GPU"),
        ({"resources": [{"GPU": 1}], "n_workers": 2}, TypeError, "n_workers=2 but resources lists 1"),
        ({"address": "tcp://127.0.0.1:1", "n_workers": 2}, TypeError, "only apply to an embedded cluster"),
    ],
)
def test_bad_options_fail_before_anything_starts(options, error, match):
    with pytest.raises(error, match=match):
        DaskEngine(**options)


def test_import_nbflow_does_not_import_distributed():
    code = "import sys, nbflow; print('distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_call_runs_here_holding_limits():
    engine = nbflow.use("dask", n_workers=1, threads_per_worker=1, processes=False)
    nbflow.limit("gpu-host", 1)
    seen = []
    job = nbflow.task(
        lambda x: seen.append([s.used for s in nbflow.limits() if s.name == "gpu-host"]) or x, limits={"gpu-host": 1}
    )
    assert job(7) == 7 and seen == [[1.0]]  # held while it ran, here
    assert [s.used for s in nbflow.limits() if s.name == "gpu-host"] == [0.0]
    assert engine.occupancy()["tasks"]["finished"] == 0  # nothing went to the cluster


def test_a_task_cancelled_on_the_cluster_or_by_close_is_done_for_wait():
    engine = nbflow.use("dask", n_workers=1, threads_per_worker=1, processes=False)
    event = distributed.Event("go", client=engine.client)
    blocker = nbflow.task(lambda name: distributed.Event(name).wait(120), name="blocker")
    running, queued = blocker.submit(event.name), blocker.submit(event.name)
    engine.client.cancel([queued.dask])  # cancelled behind nbflow's back, with the client
    done, _ = nbflow.wait([queued], timeout=60)
    assert done == {queued} and queued.status == "cancelled"
    engine.close()  # cancels what is still pending
    done, _ = nbflow.wait([running], timeout=60)
    assert done == {running} and running.status == "cancelled"


def test_gather_fetches_finished_values_in_one_trip_and_dropped_futures_free_the_cluster(monkeypatch):
    engine = nbflow.use("dask", n_workers=1, threads_per_worker=2, processes=False)
    double = nbflow.task(lambda x: 2 * x, name="double")
    futures = double.map(range(20))
    nbflow.wait(futures, timeout=60)
    trips = []
    real_gather = engine.client.gather
    monkeypatch.setattr(engine.client, "gather", lambda fs: trips.append(len(fs)) or real_gather(fs))
    assert nbflow.gather(futures) == [2 * i for i in range(20)]
    assert trips == [20]
    del futures
    keys = engine.client.run_on_scheduler(_scheduler_keys)
    wait_for(lambda: not engine.client.run_on_scheduler(_scheduler_keys), what=f"the cluster to drop {keys}")


def _scheduler_keys(dask_scheduler) -> list:
    return list(dask_scheduler.tasks)


def test_tasks_of_one_small_notebook_function_share_its_globals_on_a_worker():
    nbflow.use("dask", n_workers=1, threads_per_worker=2, processes=False)
    notebook = {"__name__": "__main__"}  # defined as in a notebook cell: Dask pickles it by value
    exec("loaded = []\ndef infer(x):\n    loaded.append(x)\n    return len(loaded)\n", notebook)
    infer = nbflow.task(notebook["infer"])
    assert sorted(nbflow.gather(infer.map(range(10)), timeout=60)) == list(range(1, 11))
    assert notebook["loaded"] == []  # the worker's copy, not the notebook's, like any Dask task
    notebook["weights"] = bytes(100_000)  # a function closing over data is unpickled afresh for each task
    exec("def infer_big(x):\n    loaded.append(len(weights))\n    return len(loaded)\n", notebook)
    infer_big = nbflow.task(notebook["infer_big"])
    assert nbflow.gather(infer_big.map(range(3)), timeout=60) == [1, 1, 1]


def test_done_callbacks_run_outside_dasks_loop_so_they_may_block():
    engine = nbflow.use("dask", n_workers=1, threads_per_worker=2, processes=False)
    gate = distributed.Event("gate", client=engine.client)
    fut = nbflow.task(lambda: distributed.Event("gate").wait(60) and 5, name="gated").submit()
    seen = queue.Queue()
    fut.add_done_callback(lambda f: seen.put((threading.current_thread().name, f.result())))  # fetches: blocks
    gate.set()
    thread, value = seen.get(timeout=60)
    assert value == 5 and thread != "IO loop"
    fut.add_done_callback(lambda f: seen.put((threading.current_thread().name, f.result())))  # already done
    assert seen.get(timeout=60) == (threading.current_thread().name, 5)


def test_a_running_task_reads_running_on_its_worker_name_with_nobody_asking(tmp_path):
    nbflow.use("dask", n_workers=1, threads_per_worker=2, processes=False)
    release = tmp_path / "release"

    def hold() -> str:
        import os
        import time

        while not os.path.exists(release):
            time.sleep(0.01)
        return str(distributed.get_worker().name)

    fut = nbflow.task(hold).submit()
    wait_for(lambda: fut.status == "running", timeout=60)  # reported by the worker, no occupancy() call
    assert fut.worker == "0"  # the worker's name, as occupancy() shows it, not its address
    release.touch()
    assert fut.result(60) == "0"
