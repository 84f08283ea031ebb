"""Failures, retries, timeouts, cancellation and close on the local engine: outcomes, and no limit left held."""

from __future__ import annotations

import threading

import pytest
from limits_helpers import gpu_used, wait_for

import nbflow


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

    @nbflow.task(resources={"GPU": 1})
    def after_gpu():
        ran.append("after_gpu")

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
    # the GPU line is FIFO: once a GPU task submitted after the cancelled waiter has run, the line is past the
    # waiter, so it can no longer be granted late
    assert after_gpu.submit().result(30) is None
    assert ran == ["hold", "queued", "after_gpu"] and gpu_used() == 0
    counts = nbflow.occupancy()["tasks"]
    assert counts["cancelled"] == 3 and counts["finished"] == 3 and counts["waiting"] == 0


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
    left = lambda: [t.name for t in threading.enumerate() if t.name.startswith("nbflow-local")]  # noqa: E731
    try:
        wait_for(lambda: left() == [])
    except AssertionError:
        raise AssertionError(f"threads left: {left()}") from None
    assert gpu_used() == 0
    with pytest.raises(RuntimeError, match="closed"):
        queued.submit()


def test_keyboard_interrupt_during_gather_leaves_no_limit_held():
    import gc
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
        # sys._current_frames() makes frame objects under the interpreter's thread-list lock: a garbage collection
        # there that frees a threading.local (an engine of an earlier test) takes that lock again and deadlocks
        gc.disable()
        try:
            wait_for(lambda: in_gather(sys._current_frames().get(main)), what="the main thread to wait in gather")
        finally:
            gc.enable()
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
