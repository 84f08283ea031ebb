"""Failures, retries, timeouts, cancellation and close on the local engine: outcomes, and no limit left held."""

from __future__ import annotations

import threading
import time

import pytest
from limits_helpers import gpu_used, wait_for

import nbflow


def test_failure_propagates_as_upstream_error_and_the_pool_keeps_working():
    nbflow.use("local", workers=2)
    ran = []

    @nbflow.task(name="download")
    def download(i):
        if i == 1:
            raise ConnectionError("host unreachable")
        return i

    @nbflow.task
    def infer(x):
        ran.append(x)
        return x * 10

    @nbflow.task
    def save(preds):
        ran.append(preds)
        return len(preds)

    images = [download.submit(i) for i in range(3)]
    preds = [infer.submit(image) for image in images]
    summary = save.submit({"all": preds})  # a dependency nested in a dict of a list
    with pytest.raises(ConnectionError, match="host unreachable"):
        images[1].result(30)
    err = preds[1].exception(30)
    assert isinstance(err, nbflow.UpstreamError) and err.failed == "download"
    assert "upstream task 'download' failed: ConnectionError: host unreachable" in str(err)
    assert isinstance(summary.exception(30), nbflow.UpstreamError)
    assert summary.exception().failed == "infer"
    assert str(summary.exception()).endswith("its upstream 'download' failed: ConnectionError: host unreachable")
    assert preds[1].status == "error" and summary.status == "error"
    assert nbflow.gather([preds[0], preds[2]], timeout=30) == [0, 20]
    assert sorted(ran) == [0, 2]  # neither dependent of the failure ever ran
    assert infer.submit(5).result(30) == 50
    assert nbflow.occupancy()["tasks"]["error"] == 3


def test_cancelled_dependency_fails_dependents_with_upstream_error():
    nbflow.use("local", workers=1)
    gate = threading.Event()

    @nbflow.task
    def block():
        assert gate.wait(60)

    @nbflow.task
    def step(x=None):
        return "ran"

    first = block.submit()
    second = step.submit()
    third = step.submit(second)
    assert second.cancel()
    gate.set()
    err = third.exception(30)
    assert isinstance(err, nbflow.UpstreamError) and err.failed == "step"
    assert second.status == "cancelled" and first.result(30) is None


def test_retries_rerun_until_success_and_fail_after_the_last():
    attempts = {"flaky": 0, "broken": 0}

    @nbflow.task(retries=2)
    def flaky():
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            raise OSError("try again")
        return "ok"

    @nbflow.task(retries=1)
    def broken():
        attempts["broken"] += 1
        raise ValueError(f"attempt {attempts['broken']}")

    assert flaky.submit().result(30) == "ok"
    with pytest.raises(ValueError, match="attempt 2"):
        broken.submit().result(30)
    assert attempts == {"flaky": 3, "broken": 2}


def test_retry_delay_gives_the_resources_back_while_it_waits():
    nbflow.limit("GPU", 1)
    failed_once = threading.Event()
    attempts = []

    @nbflow.task(resources={"GPU": 1}, retries=1, retry_delay=3)
    def infer():
        attempts.append(gpu_used())
        if len(attempts) == 1:
            failed_once.set()
            raise RuntimeError("CUDA error")
        return "ok"

    fut = infer.submit()
    assert failed_once.wait(30)
    with nbflow.concurrency("GPU", 1, timeout=2.5):  # free during the delay
        assert len(attempts) == 1 and not fut.done()
    assert fut.result(30) == "ok"
    assert attempts == [1.0, 1.0] and gpu_used() == 0


def test_timeout_fails_the_future_and_the_thread_keeps_its_share_until_it_returns():
    nbflow.use("local", workers=1)
    nbflow.limit("GPU", 1)
    stuck = threading.Event()

    @nbflow.task(resources={"GPU": 1}, timeout=0.3)
    def hang():
        assert stuck.wait(60)
        return "late"

    @nbflow.task
    def quick():
        return "quick"

    fut = hang.submit()
    with pytest.raises(nbflow.TaskTimeout, match="timeout of 0.3 s"):
        fut.result(30)
    assert fut.status == "error"
    # its thread cannot be stopped: the single worker slot is lent out, so other work still runs
    assert quick.submit().result(30) == "quick"
    assert gpu_used() == 1  # never over-committed: the share stays with the still-running thread
    stuck.set()
    wait_for(lambda: gpu_used() == 0)


def test_cancel_before_running_never_runs_and_frees_resources():
    nbflow.use("local", workers=1)
    nbflow.limit("GPU", 1)
    gate = threading.Event()
    ran = []

    @nbflow.task(resources={"GPU": 1})
    def hold():
        assert gate.wait(60)
        ran.append("hold")

    @nbflow.task(resources={"GPU": 1})
    def waits_for_gpu():
        ran.append("gpu")

    @nbflow.task
    def queued():
        ran.append("queued")

    @nbflow.task
    def dependent(x):
        ran.append("dependent")

    holder = hold.submit()
    wait_for(lambda: holder.status == "running")
    waiting, ready = waits_for_gpu.submit(), queued.submit()
    pending = dependent.submit(holder)
    wait_for(lambda: waiting.status == "waiting")
    assert ready.status == "pending"
    for fut in (waiting, ready, pending):
        assert fut.cancel()
        assert fut.status == "cancelled"
    assert not holder.cancel()  # running: too late
    gate.set()
    holder.result(30)
    wait_for(lambda: gpu_used() == 0)
    assert queued.submit().result(30) is None  # the pool still works
    time.sleep(0.6)  # a grant poll period: a cancelled waiter must not be granted late
    assert ran == ["hold", "queued"] and gpu_used() == 0
    counts = nbflow.occupancy()["tasks"]
    assert counts["cancelled"] == 3 and counts["finished"] == 2 and counts["waiting"] == 0


def test_close_returns_at_once_cancels_what_has_not_started_and_running_tasks_finish_in_the_background():
    engine = nbflow.use("local", workers=1)
    nbflow.limit("GPU", 1)
    gate = threading.Event()

    @nbflow.task(resources={"GPU": 1})
    def running():
        assert gate.wait(60)
        return "done"

    @nbflow.task(resources={"GPU": 1})
    def waiting():
        return "never"

    @nbflow.task
    def queued():
        return "never"

    first = running.submit()
    wait_for(lambda: first.status == "running")
    later = [waiting.submit(), queued.submit(), queued.submit(first)]
    wait_for(lambda: later[0].status == "waiting")
    engine.close()  # returns at once: the running task goes on in the background
    assert [f.status for f in later] == ["cancelled"] * 3
    assert first.status == "running"
    gate.set()
    assert first.result(30) == "done"
    wait_for(lambda: [t.name for t in threading.enumerate() if t.name.startswith("nbflow-local")] == [])
    assert gpu_used() == 0
    with pytest.raises(RuntimeError, match="closed"):
        queued.submit()


def test_keyboard_interrupt_during_gather_leaves_no_limit_held():
    import signal
    import sys

    from nbflow.futures import gather

    nbflow.limit("GPU", 1)
    gate = threading.Event()

    @nbflow.task(resources={"GPU": 1})
    def infer(i):
        assert gate.wait(60)
        return i

    def in_gather(frame) -> bool:
        while frame is not None and frame.f_code is not gather.__code__:
            frame = frame.f_back
        return frame is not None

    def interrupt_main_once_it_waits_in_gather():
        main = threading.main_thread().ident
        wait_for(lambda: in_gather(sys._current_frames().get(main)), what="the main thread to wait in gather")
        signal.pthread_kill(main, signal.SIGINT)

    futs = infer.map(range(3))
    threading.Thread(target=interrupt_main_once_it_waits_in_gather).start()
    with pytest.raises(KeyboardInterrupt):
        nbflow.gather(futs)
    assert not any(f.done() for f in futs)
    gate.set()
    assert nbflow.gather(futs, timeout=30) == [0, 1, 2]  # the tasks were not lost
    wait_for(lambda: gpu_used() == 0)
    assert all(lim.holders == [] for lim in nbflow.limits())
