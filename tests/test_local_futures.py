"""``nbflow.Future`` and friends on the local engine behave like ``concurrent.futures``; ``map``, ``with_options``."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest
from limits_helpers import wait_for

import nbflow


@nbflow.task
def echo(x):
    return x


@nbflow.task
def block(gate, x):
    assert gate.wait(60)
    return x


def test_wait_first_completed_and_timeout_like_concurrent_futures():
    nbflow.use("local", workers=2)
    gate = threading.Event()
    slow, fast = block.submit(gate, "slow"), echo.submit("fast")
    done, not_done = nbflow.wait([slow, fast], return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    done, not_done = nbflow.wait([slow], timeout=0.05)
    assert (done, not_done) == (set(), {slow})
    failing = nbflow.task(lambda: 1 / 0).submit()
    done, not_done = nbflow.wait([slow, failing], return_when=cf.FIRST_EXCEPTION)
    assert done == {failing} and not_done == {slow}
    gate.set()
    assert nbflow.wait([slow, fast]).not_done == set()


def test_as_completed_yields_in_completion_order_and_times_out():
    nbflow.use("local", workers=3)
    gates = [threading.Event() for _ in range(3)]
    futs = [block.submit(gate, i) for i, gate in enumerate(gates)]
    order = []
    it = nbflow.as_completed(futs, timeout=30)
    for i in (2, 0, 1):
        gates[i].set()
        order.append(next(it).result())
    assert order == [2, 0, 1]
    with pytest.raises(StopIteration):
        next(it)
    gate = threading.Event()
    late = block.submit(gate, "late")
    with pytest.raises(TimeoutError):
        list(nbflow.as_completed([late], timeout=0.05))
    gate.set()
    assert [f.result() for f in nbflow.as_completed([late])] == ["late"]


def test_map_zips_iterables_passes_kwargs_and_resolves_futures():
    @nbflow.task
    def combine(a, b, sep="-"):
        return f"{a}{sep}{b}"

    futs = combine.map(["x", echo.submit("y"), "z"], [1, 2, 3, 4], sep=":")
    assert nbflow.gather(futs, timeout=30) == ["x:1", "y:2", "z:3"]  # shortest wins, like map()
    assert combine.map([], []) == []


def test_with_options_returns_a_changed_copy_and_checks_its_input():
    nbflow.limit("GPU", 1)

    @nbflow.task(name="infer")
    def infer():
        return sorted((h.task, lim.name) for lim in nbflow.limits() for h in lim.holders)

    on_gpu = infer.with_options(name="infer-gpu", resources={"GPU": 1}, retries=2)
    assert (on_gpu.name, on_gpu.options.retries, dict(on_gpu.options.resources)) == ("infer-gpu", 2, {"GPU": 1.0})
    assert (infer.name, infer.options.retries, dict(infer.options.resources)) == ("infer", 0, {})
    assert on_gpu.submit().result(30) == [("infer-gpu", "GPU")]
    assert infer.submit().result(30) == []
    with pytest.raises(TypeError, match="unknown task option.*valid: name, resources"):
        infer.with_options(gpus=1)
    with pytest.raises(nbflow.ResourceSpecError, match="retries"):
        infer.with_options(retries=-1)


def test_status_goes_pending_waiting_running_finished():
    nbflow.use("local", workers=2)
    nbflow.limit("GPU", 1)
    upstream_gate, seen = threading.Event(), {}
    futs: list[nbflow.Future] = []

    @nbflow.task(resources={"GPU": 1})
    def infer(x):
        seen["inside"] = futs[0].status
        return x

    upstream = block.submit(upstream_gate, 1)
    with nbflow.concurrency("GPU", 1):  # another holder has the only GPU
        futs.append(infer.submit(upstream))
        assert futs[0].status == "pending"  # its dependency has not finished
        upstream_gate.set()
        wait_for(lambda: futs[0].status == "waiting")  # ready, but blocked on GPU
        assert nbflow.occupancy()["tasks"]["waiting"] == 1
    assert futs[0].result(30) == 1
    assert seen["inside"] == "running" and futs[0].status == "finished"
    assert repr(futs[0]).startswith("<nbflow.Future infer-") and "finished on nbflow-local" in repr(futs[0])


def test_cancelled_futures_count_as_done_for_wait_and_as_completed_at_once():
    nbflow.use("local", workers=2)
    nbflow.limit("GPU", 1)
    infer = nbflow.task(resources={"GPU": 1})(lambda x: x)
    with nbflow.concurrency("GPU", 1):  # the task waits in the grant stage: no pool thread will notify it
        fut = infer.submit(1)
        wait_for(lambda: fut.status == "waiting")
        assert fut.cancel() and fut.cancel()  # a second cancel is a no-op that still says True
        done, not_done = nbflow.wait([fut], timeout=5)
        assert done == {fut} and not not_done
        assert list(nbflow.as_completed([fut], timeout=5)) == [fut]
    assert fut.status == "cancelled" and nbflow.occupancy()["tasks"]["cancelled"] == 1
    assert infer.submit(2).result(30) == 2  # the grant stage dropped it and keeps working


def test_a_task_travels_by_value_with_all_its_options():
    import cloudpickle

    task = nbflow.task(lambda x: x + 1, name="n", resources={"GPU": 1}, limits="disk=2", retries=2, timeout=3)
    copy = cloudpickle.loads(cloudpickle.dumps(task.with_options(retry_delay=0.5)))
    assert copy.options == task.with_options(retry_delay=0.5).options and copy.fn(1) == 2
