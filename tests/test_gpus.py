"""GPUs by index: each running task knows which devices it holds, and no two tasks running at the same time
hold the same device, on every engine. No GPU here: fake device lists through ``CUDA_VISIBLE_DEVICES``."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
from _dask_procs import DaskProcs, wait_until
from limits_helpers import context_fields, wait_for

import nbflow

DEVICES = "3,5,6,7"


def record(gate: str, wave: int, hold: float = 0.2) -> dict:
    """A task: what ``nbflow.current()`` gave it, and when it ran. The first ``wave`` tasks all wait for each
    other, so they hold their devices at the same time; every task waits for the ``release`` file, if any."""
    ctx = nbflow.current()
    start = time.time()
    Path(gate, f"{ctx.key}-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = len([name for name in os.listdir(gate) if name not in ("hold", "release")])
        if started >= wave and (os.path.exists(Path(gate, "release")) or not Path(gate, "hold").exists()):
            break
        time.sleep(0.005)
    time.sleep(hold)
    return {
        **context_fields(ctx),
        "start": start,
        "end": time.time(),
    }


def fail_after(gate: str) -> None:
    """A GPU task that fails."""
    assert nbflow.current().gpus
    raise ValueError("boom")


def overrun(stopped: str) -> None:
    """A GPU task that runs past its timeout, then says when it has really stopped."""
    try:
        time.sleep(1.5)
    finally:
        Path(stopped).touch()


def per_device_peak(records: list[dict], group=lambda r: "") -> dict[tuple[str, str], int]:
    """For each (group, device id): the most tasks that held it at one moment."""
    peak: dict[tuple[str, str], int] = {}
    for r in records:
        for device in r["ids"].split(","):
            at_once = sum(
                1
                for o in records
                if group(o) == group(r) and device in o["ids"].split(",") and o["start"] <= r["start"] < o["end"]
            )
            key = (group(r), device)
            peak[key] = max(peak.get(key, 0), at_once)
    return peak


def assert_exclusive(records: list[dict], group=lambda r: "") -> None:
    """No two tasks that overlap in time (in the same group) hold the same device."""
    for a, b in itertools.combinations(records, 2):
        if group(a) == group(b) and a["start"] < b["end"] and b["start"] < a["end"]:
            shared = set(a["ids"].split(",")) & set(b["ids"].split(","))
            assert not shared, f"{a['key']} and {b['key']} ran together on GPU {shared}"


@pytest.fixture
def gate(tmp_path) -> str:
    path = tmp_path / "gate"
    path.mkdir()
    return str(path)


@pytest.fixture
def fake_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", DEVICES)
    nbflow.limit("GPU", 4)


def test_threads_hold_distinct_devices_and_know_their_ordinals(fake_gpus, gate):
    nbflow.use("local", workers=8)
    Path(gate, "hold").touch()
    step = nbflow.task(record, resources={"GPU": 1})
    futures = [step.submit(gate, 4) for _ in range(10)]
    wait_for(lambda: len(os.listdir(gate)) >= 5, timeout=60, what="four tasks holding a GPU")
    shown = nbflow.occupancy()["workers"][0]["gpus"]
    assert sorted(use["ids"] for use in shown) == ["3", "5", "6", "7"] and {use["task"] for use in shown} == {"record"}
    Path(gate, "release").touch()
    records = nbflow.gather(futures)
    assert_exclusive(records)
    assert max(per_device_peak(records).values()) == 1
    assert {r["ids"] for r in records[:4]} == {"3", "5", "6", "7"}  # the first four ran together, one GPU each
    for r in records:
        assert len(r["gpus"]) == 1 and r["ids"] == DEVICES.split(",")[r["gpus"][0]]  # cuda:{gpus[0]} in a thread
        assert r["env"] == DEVICES and r["resources"] == {"GPU": 1} and r["attempt"] == 0 and r["name"] == "record"
    assert nbflow.occupancy()["workers"][0]["gpus"] == []


def test_child_processes_see_only_their_device(fake_gpus, gate):
    nbflow.use("local", workers=4, processes=True)
    step = nbflow.task(record, resources={"GPU": 1})
    records = nbflow.gather([step.submit(gate, 4) for _ in range(8)])
    assert_exclusive(records)
    assert {r["ids"] for r in records[:4]} == {"3", "5", "6", "7"}
    for r in records:
        assert r["gpus"] == (0,) and r["env"] == r["ids"]  # ordinal 0 of the one device the child sees


def test_fractions_share_a_device_two_halves_at_a_time(fake_gpus, gate):
    nbflow.use("local", workers=8)
    step = nbflow.task(record, resources={"GPU": 0.5})
    records = nbflow.gather([step.submit(gate, 8) for _ in range(12)])
    peak = per_device_peak(records)
    assert set(peak.values()) == {2} and len(peak) == 4  # all four GPUs, never more than two halves on one


def test_several_gpus_and_a_direct_call(fake_gpus, gate):
    nbflow.use("local", workers=4)
    pair = nbflow.task(record, resources={"GPU": 2})
    records = nbflow.gather([pair.submit(gate, 2) for _ in range(4)])
    assert_exclusive(records)
    assert all(len(r["gpus"]) == 2 for r in records)
    assert {r["ids"] for r in records[:2]} == {"3,5", "6,7"}
    assert nbflow.current() is None  # outside a task
    direct = pair(gate, 0, 0)  # a direct call holds its GPUs as machine limits too
    assert direct["ids"] == "3,5" and direct["gpus"] == (0, 1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Worker ``a`` sees 4 fake GPUs, ``b`` has a GPU resource of 2 and no device list; ``c`` and ``d`` have no
    GPU resource and share the machine's through a ``GPU`` limit."""
    base = tmp_path_factory.mktemp("gpus")
    env = {"NBFLOW_LIMITS_DIR": str(base / "limits")}
    procs = DaskProcs(base, env=env)
    try:
        procs.worker("a", "GPU=4", nthreads=5, env={"CUDA_VISIBLE_DEVICES": DEVICES})
        procs.worker("b", "GPU=2", nthreads=3)
        procs.worker("c", nthreads=3, env={"CUDA_VISIBLE_DEVICES": DEVICES})
        procs.worker("d", nthreads=3, env={"CUDA_VISIBLE_DEVICES": DEVICES})
        procs.limits = str(base / "limits")
        yield procs
    finally:
        procs.close()


def test_dask_workers_hand_out_their_own_devices_and_take_them_back_however_a_task_ends(cluster, gate, tmp_path):
    nbflow.use("dask", address=cluster.address)
    Path(gate, "hold").touch()
    step = nbflow.task(record, resources={"GPU": 1})
    futures = [step.submit(gate, 6) for _ in range(6)]
    wait_for(lambda: len(os.listdir(gate)) >= 7, timeout=60, what="six tasks holding a GPU")
    shown = {w["name"]: sorted(use["ids"] for use in w["gpus"]) for w in nbflow.occupancy()["workers"]}
    assert shown["a"] == ["3", "5", "6", "7"] and shown["b"] == ["0", "1"]
    Path(gate, "release").touch()
    records = nbflow.gather(futures)
    assert_exclusive(records, group=lambda r: r["worker"])
    assert sorted((r["worker"], r["ids"]) for r in records) == [
        ("a", "3"), ("a", "5"), ("a", "6"), ("a", "7"), ("b", "0"), ("b", "1")
    ]  # fmt: skip
    for r in records:
        visible = DEVICES.split(",") if r["worker"] == "a" else ["0", "1"]
        assert r["ids"] == visible[r["gpus"][0]]

    # a failed task and a timed-out one give their devices back (the latter once it has really stopped)
    with pytest.raises(ValueError):
        nbflow.task(fail_after, resources={"GPU": 1}).submit(gate).result(timeout=60)
    stopped = tmp_path / "stopped"
    late = nbflow.task(overrun, resources={"GPU": 1}, timeout=0.3).submit(str(stopped))
    with pytest.raises(nbflow.TaskTimeout):
        late.result(timeout=60)
    wait_until(stopped.exists, what="the timed-out task to stop")
    wait_until(lambda: all(not w["gpus"] for w in nbflow.occupancy()["workers"]), what="every GPU given back")
    again = Path(gate, "..", "again")
    again.mkdir()
    records = nbflow.gather([step.submit(str(again), 6) for _ in range(6)])
    assert_exclusive(records, group=lambda r: r["worker"])
    assert len({(r["worker"], r["ids"]) for r in records}) == 6  # all six devices free again


def test_dask_workers_sharing_a_machines_gpus_through_a_limit_get_distinct_devices(cluster, gate, monkeypatch):
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", cluster.limits)
    nbflow.limit("GPU", 4)
    nbflow.use("dask", address=cluster.address)
    step = nbflow.task(record, limits={"GPU": 1})
    records = nbflow.gather([step.submit(gate, 4) for _ in range(8)])
    slots = [{**r, "ids": str(r["gpus"][0])} for r in records]  # the machine's GPU k: slot k of the limit
    assert_exclusive(slots)  # machine-wide: across workers
    assert per_device_peak(slots) == {("", k): 1 for k in "0123"}  # every slot used, one task at a time
    for r in records:  # each worker names slot k by its own device list (b has none: 0..n-1)
        assert r["ids"] == (DEVICES.split(",") if r["worker"] != "b" else ["0", "1", "2", "3"])[r["gpus"][0]]


@pytest.fixture
def kernel_env() -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": "3,5"}


def test_a_task_cell_sees_its_context(kernel):
    assert kernel.run("%nbflow limit GPU 2").reply["status"] == "ok"
    cell = "%%nbflow task --resources GPU=1 --name infer\nimport nbflow\nctx = nbflow.current()"
    assert kernel.run(cell).reply["status"] == "ok"
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    shown = kernel.run("print(ctx.name, ctx.gpus, ctx.cuda_visible_devices, ctx.resources)").stream("stdout")
    assert shown == "infer (0,) 3 {'GPU': 1.0}\n"


def test_device_ids_are_kept_as_given_and_fractions_that_do_not_pack_share_the_least_loaded():
    from nbflow.devices import Table, choose, listed, physical

    value = " GPU-8a1b , MIG-GPU-8a1b/1/0 ,2"
    assert listed(value) == ["GPU-8a1b", "MIG-GPU-8a1b/1/0", "2"]
    assert physical([1, 2], value) == "MIG-GPU-8a1b/1/0,2"
    with pytest.raises(nbflow.Unsatisfiable, match="GPU slot 3 has no device"):
        physical([3], value)  # past the list: refused, never a made-up id
    assert physical([3], None) == "3"  # no list: ordinal k is device k
    assert listed("") == [] and listed(None) is None
    assert choose([0.5, 0.0], 0.5) == (0,)  # the fullest device it fits on
    assert choose([0.6, 0.6], 0.8) == (0,)  # fits nowhere: the least loaded is shared, not nothing given
    assert choose([1.0, 0.5, 0.0], 2) == (1, 2) and choose([], 1) == () and choose([0.0], 0) == ()
    table = Table(2)
    first, second = table.take(0.5), table.take(0.5)
    whole = table.take(1)
    assert (first, second, whole) == ((0,), (0,), (1,))
    table.give(first, 0.5)
    table.give(second, 0.5)
    assert table.take(1) == (0,) and table.load == [1.0, 1.0]
