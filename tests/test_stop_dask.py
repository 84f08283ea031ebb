"""``Future.stop()`` on the Dask engine, with a real scheduler and ``dask worker`` processes (and an embedded
LocalCluster): the worker's thread running the task is stopped, the run ends cancelled, the thread is free."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest
from _dask_procs import DaskProcs, wait_until
from test_stop import WAIT, no_unexpected_state, spin_forever  # noqa: F401 - the fixture applies here too

import nbflow


def loop_on_worker(marker: str) -> None:
    """Say (a file) that the task runs on its worker (its pid: a task with a timeout runs in a helper thread, where
    ``distributed.get_worker()`` is not set), then loop in pure Python."""
    Path(marker).write_text(str(os.getpid()))
    try:
        spin_forever()
    finally:
        Path(marker + ".finally").write_text("ran")


def worker_pid(marker: str | None = None) -> str:
    if marker is not None:
        Path(marker).write_text("ran")
    return str(os.getpid())


@pytest.fixture(scope="module")
def dask_worker(tmp_path_factory):
    """A real scheduler and one ``dask worker --nthreads 1 --resources GPU=1``."""
    base = tmp_path_factory.mktemp("dask-stop")
    procs = DaskProcs(base, env={"NBFLOW_LIMITS_DIR": str(base / "limits")})
    try:
        procs.worker("one", "GPU=1", nthreads=1)
        yield procs
    finally:
        procs.close()


def stop_running_on_dask(tmp_path: Path, timeout: float | None = None) -> None:
    """Stop a task looping on the worker's only thread; the next task on that thread then runs."""
    marker = str(tmp_path / f"loop-{uuid.uuid4().hex}")
    loop = nbflow.task(loop_on_worker, resources={"GPU": 1}, retries=2, timeout=timeout, name="loop")
    fut = loop.submit(marker)
    wait_until(lambda: os.path.exists(marker), WAIT, "the loop to start on the worker")
    wait_until(lambda: fut.status == "running", WAIT, "the client to hear that it runs")
    assert fut.stop()
    with pytest.raises(cf.CancelledError):
        fut.result(WAIT)
    assert fut.status == "cancelled" and fut.attempt == 0
    wait_until(lambda: os.path.exists(marker + ".finally"), WAIT, "its finally block")
    after = nbflow.task(worker_pid, resources={"GPU": 1}, name="after")
    assert after.submit().result(WAIT) == Path(marker).read_text()  # the worker's only thread was free


def test_dask_a_running_task_stops_and_frees_the_workers_only_thread(dask_worker, tmp_path):
    nbflow.use("dask", address=dask_worker.address)
    stop_running_on_dask(tmp_path)


def test_dask_a_running_task_with_a_timeout_stops_and_frees_the_workers_only_thread(dask_worker, tmp_path):
    nbflow.use("dask", address=dask_worker.address)
    stop_running_on_dask(tmp_path, timeout=WAIT * 2)


def test_dask_a_queued_task_is_cancelled_at_once_and_never_runs(dask_worker, tmp_path):
    engine = nbflow.use("dask", address=dask_worker.address)
    marker = str(tmp_path / "loop")
    queued_marker = tmp_path / "queued"
    running = nbflow.task(loop_on_worker, resources={"GPU": 1}, name="loop").submit(marker)
    wait_until(lambda: os.path.exists(marker), WAIT, "the loop to start")
    queued = nbflow.task(worker_pid, resources={"GPU": 1}, name="queued").submit(str(queued_marker))
    assert queued.status == "waiting"
    assert queued.stop()
    assert queued.cancelled() and queued.status == "cancelled"
    assert nbflow.stop([running]) == 1
    with pytest.raises(cf.CancelledError):
        running.result(WAIT)
    after = nbflow.task(worker_pid, resources={"GPU": 1}, name="after")
    assert after.submit().result(WAIT) == Path(marker).read_text()
    assert not queued_marker.exists()
    counts = engine.task_counts()
    assert counts["cancelled"] == 2 and counts["finished"] == 1


def test_dask_embedded_local_cluster_stops_a_running_task(tmp_path):
    nbflow.use("dask", n_workers=1, threads_per_worker=1, processes=False, resources={"GPU": 1})
    stop_running_on_dask(tmp_path)


def test_dask_a_task_stopped_before_the_client_heard_it_runs_is_cancelled_and_stopped(dask_worker, tmp_path):
    from nbflow.engines.dask_worker_events import STARTED_TOPIC

    engine = nbflow.use("dask", address=dask_worker.address)
    engine.client.subscribe_topic(STARTED_TOPIC, lambda event: None)  # the worker's "it runs" never arrives
    marker = str(tmp_path / "loop")
    fut = nbflow.task(loop_on_worker, resources={"GPU": 1}, name="loop").submit(marker)
    wait_until(lambda: os.path.exists(marker), WAIT, "the loop to start")
    assert fut.status == "waiting"
    assert fut.stop()  # cancelled at once, and stopped on the worker all the same
    assert fut.cancelled() and fut.status == "cancelled"
    wait_until(lambda: os.path.exists(marker + ".finally"), WAIT, "its finally block")
    after = nbflow.task(worker_pid, resources={"GPU": 1}, name="after")
    assert after.submit().result(WAIT) == Path(marker).read_text()


def test_dask_a_task_waiting_on_its_worker_for_a_machine_limit_stops_without_it(dask_worker, tmp_path, monkeypatch):
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", dask_worker.env["NBFLOW_LIMITS_DIR"])  # the worker's machine limits
    nbflow.limit("LICENSE", 1)
    nbflow.use("dask", address=dask_worker.address)
    marker = tmp_path / "ran"
    with nbflow.concurrency("LICENSE"):
        fut = nbflow.task(worker_pid, limits={"LICENSE": 1}, name="licensed").submit(str(marker))
        wait_until(lambda: fut.status == "running", WAIT, "the worker to start it (it waits there for the limit)")
        assert fut.stop()
        with pytest.raises(cf.CancelledError):
            fut.result(WAIT)
        after = nbflow.task(worker_pid, name="after")
        assert after.submit().result(WAIT)  # the worker's thread is free
    assert not marker.exists()
    assert [lim.used for lim in nbflow.limits() if lim.name == "LICENSE"] == [0]  # no late grant to the stopped task


GATE = threading.Event()  # an embedded cluster's workers are threads of this process: the test opens it


def wait_on_gate() -> None:
    """One C call (a lock acquire) until the test opens the gate: the task cannot stop before that."""
    GATE.wait()


def test_dask_closing_the_engine_while_a_task_is_stopping_leaves_it_cancelled():
    engine = nbflow.use("dask", n_workers=1, threads_per_worker=1, processes=False)
    GATE.clear()
    fut = nbflow.task(wait_on_gate, name="gated").submit()
    try:
        wait_until(lambda: fut.status == "running", WAIT, "the task to run")
        assert fut.stop()
        assert fut.status == "stopping"
        engine.close()
        assert fut.cancelled() and fut.status == "cancelled"
    finally:
        GATE.set()




def loop_then_ignore_stops(marker: str) -> None:
    """Say where it runs (the worker's pid), then loop; the first run swallows stops (so that its worker can be
    killed while it is stopping), a run after it does not."""
    first = not os.path.exists(marker + ".first")
    Path(marker + ".first").touch()
    Path(marker).write_text(str(os.getpid()))
    while True:
        try:
            spin_forever()
        except BaseException:
            if not first:
                raise


def test_dask_a_stopping_task_whose_worker_dies_is_not_run_to_an_end_elsewhere(tmp_path):
    procs = DaskProcs(tmp_path / "dask")
    try:
        procs.worker("first", nthreads=1)
        nbflow.use("dask", address=procs.address)
        marker = tmp_path / "where"
        fut = nbflow.task(loop_then_ignore_stops, name="stubborn").submit(str(marker))
        wait_until(lambda: fut.status == "running", WAIT, "the task to run")
        first_pid = marker.read_text()
        assert fut.stop() and fut.status == "stopping"
        marker.unlink()
        procs.worker("second", nthreads=1)
        procs.stop_worker("first", signal.SIGKILL)  # Dask runs the task again, on the second worker
        with pytest.raises(cf.CancelledError):
            fut.result(WAIT)  # it is stopped there too, and ends cancelled
        assert fut.status == "cancelled" and marker.read_text() != first_pid
        after = nbflow.task(worker_pid, name="after").submit()
        assert after.result(WAIT) == marker.read_text()  # the second worker's only thread is free again
    finally:
        procs.close()
