"""``nbflow.Future`` and friends on the local engine behave like ``concurrent.futures``; ``map``, ``with_options``."""

from __future__ import annotations

import threading

import pytest
from limits_helpers import wait_for

import nbflow


@nbflow.task
def block(gate, x):
    assert gate.wait(60)
    return x


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


def test_a_task_travels_by_value_with_all_its_options():
    import cloudpickle

    task = nbflow.task(lambda x: x + 1, name="n", resources={"GPU": 1}, limits="disk=2", retries=2, timeout=3)
    copy = cloudpickle.loads(cloudpickle.dumps(task.with_options(retry_delay=0.5)))
    assert copy.options == task.with_options(retry_delay=0.5).options and copy.fn(1) == 2


def test_a_self_referential_argument_is_passed_as_it_is_unless_it_holds_futures():
    loop = [1]
    loop.append(loop)
    assert nbflow.task(lambda xs: xs[1] is xs).submit(loop).result(30)
    fut = nbflow.task(lambda: 1).submit()
    cyclic = [fut]
    cyclic.append(cyclic)
    with pytest.raises(nbflow.TaskArgumentError, match="contains itself and holds futures"):
        nbflow.task(len).submit(cyclic)


def test_cancelling_a_queued_task_logs_nothing(caplog):
    """A future cancelled before its start is skipped by the pool without concurrent.futures' CRITICAL
    "in unexpected state" log line."""
    nbflow.use("local", workers=1)
    release = threading.Event()
    started = threading.Event()

    @nbflow.task
    def hold():
        started.set()
        release.wait(60)
        return "held"

    busy = hold.submit()
    assert started.wait(60)
    queued = nbflow.task(lambda: "never").submit()
    assert queued.cancel() and queued.status == "cancelled"
    release.set()
    assert busy.result(timeout=60) == "held"
    assert nbflow.task(lambda: "after").submit().result(timeout=60) == "after"  # the pool has passed the cancelled one
    assert not [r for r in caplog.records if "unexpected state" in r.getMessage()]


def test_a_future_has_every_field_of_a_standard_future_and_its_condition_works():
    """nbflow's Future sets the standard Future's fields itself (with a lighter condition): none may be missing on
    this Python, and waiting on the condition (result with a timeout, wait, as_completed) works."""
    import concurrent.futures as cf

    from nbflow.futures import Future

    fut = Future("f")
    assert set(vars(cf.Future())) <= set(vars(fut))
    with pytest.raises(cf.TimeoutError):
        fut.result(timeout=0.05)
    done, pending = cf.wait([fut], timeout=0.05)
    assert not done and pending == {fut}
    threading.Timer(0.1, fut.set_result, args=(7,)).start()
    assert [f.result() for f in cf.as_completed([fut], timeout=30)] == [7]
    assert fut.result(timeout=0) == 7
    assert fut._condition.acquire(blocking=False) and fut._condition._is_owned()
    fut._condition.release()
