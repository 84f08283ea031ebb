"""The Dask engine against real ``dask scheduler`` / ``dask worker --resources`` processes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import distributed
import pytest
from _dask_procs import DaskProcs, free_port, wait_until

import nbflow
from nbflow.engines.dask import DaskEngine

GPU_WORKERS = {"gpu-a", "gpu-b"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The seed scenario: two workers with GPU=2 and one with MEMORY=100e9, two threads each."""
    base = tmp_path_factory.mktemp("dask")
    procs = DaskProcs(base, env={"NBFLOW_LIMITS_DIR": str(base / "limits")})
    try:
        procs.worker("gpu-a", "GPU=2")
        procs.worker("gpu-b", "GPU=2")
        procs.worker("mem", "MEMORY=100e9")
        yield procs
    finally:
        procs.close()


@pytest.fixture
def engine(cluster) -> DaskEngine:
    return nbflow.use("dask", address=cluster.address)


def worker_name(*_: object) -> str:
    return str(distributed.get_worker().name)


def block_until_set(event_name: str, marker_dir: str) -> str:
    """Say where this task runs (a file), then hold its resources until the test sets the Dask event."""
    name = worker_name()
    Path(marker_dir, uuid.uuid4().hex).write_text(name)
    distributed.Event(event_name).wait(120)
    return name


def started(marker_dir: Path) -> list[str]:
    return [p.read_text() for p in marker_dir.iterdir()]


def test_tasks_land_only_on_workers_with_their_resources(engine):
    gpu = nbflow.task(worker_name, resources={"GPU": 1}, name="infer")
    mem = nbflow.task(worker_name, resources="MEMORY=70GB", name="aggregate")
    anywhere = nbflow.task(worker_name, name="download")
    gpu_futs, mem_futs, free_futs = gpu.map(range(12)), mem.map(range(4)), anywhere.map(range(12))
    assert set(nbflow.gather(gpu_futs)) <= GPU_WORKERS
    assert set(nbflow.gather(mem_futs)) == {"mem"}
    assert set(nbflow.gather(free_futs)) <= GPU_WORKERS | {"mem"}
    assert all(f.status == "finished" for f in gpu_futs + mem_futs + free_futs)


def test_unsatisfiable_demands_raise_at_submit_naming_the_offers(engine):
    infer = nbflow.task(worker_name, name="infer")
    for demand in ({"GPU": 3}, {"TPU": 1}, {"GPU": 1, "MEMORY": 1}):  # the last: no single worker has both
        started_at = time.monotonic()
        with pytest.raises(nbflow.Unsatisfiable) as info:
            infer.with_options(resources=demand).submit()
        # at submit, after one scheduler round trip: never a wait for a worker (only a hang would take 30 s)
        assert time.monotonic() - started_at < 30
        message = str(info.value)
        assert "\n" not in message
        assert "gpu-a GPU=2" in message and "gpu-b GPU=2" in message and "mem MEMORY=1e+11" in message
        assert "infer" in message and "on_unsatisfiable='wait'" in message
    assert engine.occupancy()["tasks"] == nbflow.occupancy()["tasks"]
    assert sum(engine.occupancy()["tasks"].values()) == 0  # nothing was submitted


def test_waiting_for_a_worker_that_joins_later(cluster):
    patient = nbflow.use("dask", address=cluster.address, on_unsatisfiable="wait")
    strict = DaskEngine(address=cluster.address)
    try:
        tpu_task = nbflow.task(worker_name, resources={"TPU": 1}, name="tpu")
        with pytest.raises(nbflow.Unsatisfiable):
            strict.submit(tpu_task, (), {})
        fut = tpu_task.submit()
        assert not fut.done()
        cluster.worker("tpu", "TPU=1")
        assert fut.result(timeout=120) == "tpu"
        assert strict.submit(tpu_task, (), {}).result(timeout=120) == "tpu"  # the joined worker is seen
        cluster.stop_worker("tpu")
        wait_until(lambda: _raises_unsatisfiable(strict, tpu_task), timeout=60, what="the engine to see tpu leave")
        assert patient.occupancy()["tasks"]["finished"] == 1
    finally:
        strict.close()


def _raises_unsatisfiable(engine: DaskEngine, task: nbflow.Task) -> bool:
    try:
        engine.check(task.options.resources, task.name)
    except nbflow.Unsatisfiable:
        return True
    return False


def test_occupancy_counts_what_the_workers_hold(engine, tmp_path):
    markers = tmp_path / "started"
    markers.mkdir()
    event = distributed.Event(f"go-{uuid.uuid4().hex}", client=engine.client)
    hold = nbflow.task(block_until_set, resources={"GPU": 1}, name="infer")
    futs = [hold.submit(event.name, str(markers)) for _ in range(6)]  # 4 GPUs in all: 4 run, 2 wait
    try:
        wait_until(lambda: len(started(markers)) == 4, timeout=120, what="4 GPU tasks to start")
        snap = wait_until(lambda: _settled(engine.occupancy(), running=4, waiting=2), what="occupancy to settle")
        where = started(markers)
        by_name = {w["name"]: w for w in snap["workers"]}
        assert set(by_name) == GPU_WORKERS | {"mem"}
        for name in GPU_WORKERS:
            assert by_name[name]["resources"]["GPU"] == {"total": 2.0, "used": float(where.count(name))}
            assert by_name[name]["running"] == where.count(name)
            assert by_name[name]["host"] == "127.0.0.1"
        assert by_name["mem"]["resources"] == {"MEMORY": {"total": 1e11, "used": 0.0}}
        assert snap["tasks"]["running"] == 4 and snap["tasks"]["waiting"] == 2 and snap["engine"] == "dask"
        running = [f for f in futs if f.status == "running"]
        assert len(running) == 4 and {f.worker for f in running} <= GPU_WORKERS
        assert isinstance(snap["limits"], list)
    finally:
        event.set()
    assert sorted(nbflow.gather(futs, timeout=120)).count("gpu-a") >= 1
    idle = wait_until(lambda: _settled(engine.occupancy(), running=0, waiting=0), what="workers to go idle")
    assert all(r["used"] == 0 for w in idle["workers"] for r in w["resources"].values())
    assert idle["tasks"]["finished"] == 6


def _settled(snap, running: int, waiting: int):
    workers = snap["workers"]
    ok = sum(w["running"] for w in workers) == running and sum(w["waiting"] for w in workers) == waiting
    heard = snap["tasks"]["running"] == running  # the workers' start events reach the client a moment later
    return snap if ok and heard else None


def test_dependencies_are_passed_as_dask_futures(engine):
    make = nbflow.task(lambda n: list(range(n)), name="make")
    combine = nbflow.task(lambda xs, d: sum(xs[0]) + len(d["k"][0]) + d["k"][1], name="combine")
    a = make.submit(5)
    b = combine.submit([a], {"k": (a, 7)})  # nested in a list and in a tuple inside a dict
    assert b.result(timeout=60) == 10 + 5 + 7
    deps = engine.client.run_on_scheduler(
        lambda dask_scheduler, key: [d.key for d in dask_scheduler.tasks[key].dependencies], key=b.key
    )
    assert deps == [a.key]  # the scheduler knows the dependency: its value never came through here
    assert isinstance(a.dask, distributed.Future)


def test_cancel_drops_a_waiting_task_and_leaves_a_running_one(engine, tmp_path):
    markers = tmp_path / "started"
    markers.mkdir()
    event = distributed.Event(f"go-{uuid.uuid4().hex}", client=engine.client)
    hold = nbflow.task(block_until_set, resources={"GPU": 2}, name="infer")
    futs = [hold.submit(event.name, str(markers)) for _ in range(3)]  # GPU=2 each: 2 run, 1 waits
    try:
        wait_until(lambda: _settled(engine.occupancy(), running=2, waiting=1), what="2 running, 1 waiting")
        waiting = next(f for f in futs if f.status == "waiting")
        running = next(f for f in futs if f.status == "running")
        assert waiting.cancel() and not running.cancel()  # as concurrent.futures: a running task is not stopped
        assert (waiting.status, running.status) == ("cancelled", "running")
        snap = wait_until(lambda: _settled(engine.occupancy(), running=2, waiting=0), what="the waiting task to go")
        assert snap["tasks"]["cancelled"] == 1 and snap["tasks"]["running"] == 2
        assert not engine.client.run_on_scheduler(
            lambda dask_scheduler, key: key in dask_scheduler.tasks, key=waiting.key
        )
    finally:
        event.set()
    nbflow.wait(futs, timeout=60)  # the workers may go idle before the client hears that the task finished
    idle = wait_until(lambda: _settled(engine.occupancy(), running=0, waiting=0), what="workers to go idle")
    assert all(r["used"] == 0 for w in idle["workers"] for r in w["resources"].values())
    assert len(started(markers)) == 2  # the cancelled waiting task never ran
    assert [f.status for f in futs].count("finished") == 2
    assert idle["tasks"]["cancelled"] == 1


def test_timeout_fails_the_task_and_frees_the_worker(engine):
    slow = nbflow.task(lambda: time.sleep(60), resources={"GPU": 2}, timeout=1, name="slow")
    futs = [slow.submit() for _ in range(2)]  # one per GPU worker: both GPU=2 slots taken, then freed
    for fut in futs:
        with pytest.raises(nbflow.TaskTimeout, match="slow.*timeout of 1 s"):
            fut.result(timeout=60)
    quick = nbflow.task(worker_name, resources={"GPU": 2}, name="quick")
    assert set(nbflow.gather(quick.map(range(2)), timeout=60)) <= GPU_WORKERS


def test_an_existing_client_is_used_and_its_cluster_left_running(cluster):
    client = distributed.Client(cluster.address, set_as_default=False)
    eng = nbflow.use(client)
    assert eng.client is client and eng.kind == "dask" and nbflow.engine() is eng
    assert nbflow.task(worker_name, resources={"GPU": 1}).submit().result(timeout=60) in GPU_WORKERS
    eng.close()
    assert cluster.worker_names() == GPU_WORKERS | {"mem"}


def test_unreachable_scheduler_fails_within_the_connect_timeout():
    address = f"tcp://127.0.0.1:{free_port()}"
    started_at = time.monotonic()
    with pytest.raises(nbflow.NbflowError) as info:
        nbflow.use("dask", address=address, connect_timeout=2)
    assert time.monotonic() - started_at < 2 + 30  # bounded by the connect timeout: only a hang takes longer
    assert isinstance(info.value, ConnectionError)
    assert address in str(info.value) and "dask scheduler" in str(info.value) and "\n" not in str(info.value)
