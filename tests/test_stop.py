"""``Future.stop()`` and ``nbflow.stop()`` on the local engine, threads and processes (Dask: ``test_stop_dask``):
a stopped task ends cancelled, is not retried, fails its dependents with ``UpstreamError``, and its shares are
free once it has really stopped."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _dask_procs import wait_until
from limits_helpers import gpu_used, wait_for

import nbflow

WAIT = 60.0  # seconds: a generous deadline for whatever is not a bound under test (CI is a busy 2-core box)


@pytest.fixture(autouse=True)
def no_unexpected_state(caplog):
    """No future is notified twice: ``concurrent.futures`` logs that as CRITICAL "unexpected state"."""
    caplog.set_level(logging.CRITICAL, logger="concurrent.futures")
    yield
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert not bad, bad


def spin_forever() -> None:
    """A pure-Python loop: stoppable only at a bytecode."""
    n = 0
    while True:
        n += 1


# --- local threads ---------------------------------------------------------------------------------------------


def test_a_thread_in_a_python_loop_runs_its_finally_frees_its_share_and_is_never_retried():
    nbflow.use("local", workers=2)
    nbflow.limit("GPU", 1)
    entered, cleaned, release = threading.Event(), threading.Event(), threading.Event()
    attempts = []
    swallowed = []

    @nbflow.task(resources={"GPU": 1}, retries=3)
    def loop():
        attempts.append(nbflow.current().attempt)
        try:
            try:
                entered.set()
                spin_forever()
            except Exception as exc:  # user code's broad except must not swallow the stop
                swallowed.append(exc)
        finally:
            cleaned.set()
            assert release.wait(WAIT)  # a C call: the task is still stopping, holding its share

    @nbflow.task
    def dependent(x):
        return x

    @nbflow.task(resources={"GPU": 1})
    def next_holder():
        return gpu_used()

    fut = loop.submit()
    after = dependent.submit(fut)
    assert entered.wait(WAIT)
    wait_for(lambda: fut.status == "running", WAIT)
    assert fut.stop() is True
    assert cleaned.wait(WAIT)  # its finally ran
    assert fut.status == "stopping" and not fut.done()
    assert gpu_used() == 1  # still held: it has not really stopped
    counts = nbflow.engine().task_counts()
    assert counts["stopping"] == 1 and counts["running"] == 0
    assert fut.stop() is True  # asking again changes nothing
    release.set()
    with pytest.raises(cf.CancelledError):
        fut.result(WAIT)
    assert fut.cancelled() and fut.status == "cancelled"
    assert isinstance(after.exception(WAIT), nbflow.UpstreamError)
    assert attempts == [0] and swallowed == []  # never retried, the except Exception saw nothing
    assert next_holder.submit().result(WAIT) == 1  # the share was free: the next holder took it
    wait_for(lambda: gpu_used() == 0, WAIT)
    counts = nbflow.engine().task_counts()
    assert counts["cancelled"] == 1 and counts["stopping"] == 0 and counts["error"] == 1


def test_a_thread_stuck_in_a_c_call_reads_stopping_and_keeps_its_share_until_the_call_returns():
    nbflow.use("local", workers=1)
    nbflow.limit("GPU", 1)
    entered, release = threading.Event(), threading.Event()
    after_the_call = []

    @nbflow.task(resources={"GPU": 1})
    def stuck():
        entered.set()
        release.wait(WAIT)  # one C call (a lock acquire): no bytecode runs until it returns
        after_the_call.append("ran on")  # never: TaskStopped comes at the first bytecode after the call

    @nbflow.task(resources={"GPU": 1})
    def next_holder():
        return "next"

    fut = stuck.submit()
    assert entered.wait(WAIT)
    wait_for(lambda: fut.status == "running", WAIT)
    waiting = next_holder.submit()
    wait_for(lambda: waiting.status == "waiting", WAIT)
    assert fut.stop(grace=0)
    assert not fut.done() and fut.status == "stopping"
    assert gpu_used() == 1 and waiting.status == "waiting"
    release.set()
    with pytest.raises(cf.CancelledError):
        fut.result(WAIT)
    assert waiting.result(WAIT) == "next"
    assert after_the_call == []
    wait_for(lambda: gpu_used() == 0, WAIT)


def test_a_thread_stopped_while_it_queues_in_nbflow_concurrency_leaves_the_limit_usable_by_others():
    """The stop lands as the wait for the limit's gate returns, inside nbflow's own code: the gate is unlocked."""
    nbflow.use("local", workers=2)
    nbflow.limit("X", 1)
    first = nbflow.machine_limits.acquire("X")
    head = cf.ThreadPoolExecutor(1)
    second = head.submit(nbflow.machine_limits.acquire, "X")  # the head of the queue: holds the gate as it waits

    @nbflow.task
    def third():
        with nbflow.concurrency("X"):  # blocks on the gate, behind the head
            return "never"

    fut = third.submit()
    wait_for(lambda: [lim.waiting for lim in nbflow.limits() if lim.name == "X"] == [2], WAIT)
    assert fut.stop()
    first.release()
    second.result(WAIT).release()
    head.shutdown()
    with pytest.raises(cf.CancelledError):
        fut.result(WAIT)
    code = "import nbflow; nbflow.machine_limits.acquire('X', timeout=30).release(); print('granted')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)
    assert done.stdout == "granted\n", done.stderr  # another process gets the limit: its gate is not left locked


def test_stops_landing_anywhere_in_a_loop_of_limit_entries_and_submits_leave_every_share_free_and_counts_right():
    """A stop lands at any bytecode of the task, also inside nbflow code it calls (taking or giving back a share,
    counting a submit): that code holds the stop back until it is done, so nothing is left taken or miscounted."""
    nbflow.use("local", workers=2)
    nbflow.limit("X", 1)

    @nbflow.task
    def noop():
        return None

    @nbflow.task
    def churn(started):
        started.set()
        while True:
            with nbflow.concurrency("X"):
                noop.submit()

    for i in range(40):
        started = threading.Event()
        fut = churn.submit(started)
        assert started.wait(WAIT)
        time.sleep((i % 8) * 0.0007)  # where the stop lands varies; what must hold does not depend on it
        assert fut.stop()
        with pytest.raises(cf.CancelledError):
            fut.result(WAIT)
        assert [lim.used for lim in nbflow.limits() if lim.name == "X"] == [0], i
    nbflow.machine_limits.acquire("X", timeout=WAIT).release()
    engine = nbflow.engine()
    wait_for(lambda: engine.task_counts()["pending"] + engine.task_counts()["running"] == 0, WAIT)
    counts = engine.task_counts()
    assert counts["cancelled"] == 40 and counts["stopping"] == 0, counts


def test_a_task_not_running_yet_is_cancelled_at_once_never_runs_and_frees_nothing_it_did_not_hold(tmp_path):
    nbflow.use("local", workers=1)
    nbflow.limit("GPU", 1)
    gate = threading.Event()
    ran: list[str] = []

    @nbflow.task(resources={"GPU": 1})
    def holder():
        assert gate.wait(WAIT)
        return "held"

    @nbflow.task
    def upstream():
        assert gate.wait(WAIT)
        return 1

    @nbflow.task
    def on_deps(x):
        ran.append("on_deps")

    @nbflow.task
    def queued():
        ran.append("queued")

    @nbflow.task(resources={"GPU": 1})
    def for_gpu():
        ran.append("for_gpu")

    first = holder.submit()  # the one pool thread and the one GPU share
    wait_for(lambda: first.status == "running", WAIT)
    pending = on_deps.submit(upstream.submit())
    behind = queued.submit()
    waiting = for_gpu.submit()
    wait_for(lambda: waiting.status == "waiting", WAIT)
    assert (pending.status, behind.status) == ("pending", "pending")
    assert nbflow.stop([pending, behind, waiting], grace=0) == 3
    for fut in (pending, behind, waiting):
        assert fut.cancelled() and fut.status == "cancelled"
        with pytest.raises(cf.CancelledError):
            fut.result(WAIT)
    assert gpu_used() == 1 and first.status == "running"  # the holder's share is still its own
    gate.set()
    assert first.result(WAIT) == "held"
    assert for_gpu.submit().result(WAIT) is None and queued.submit().result(WAIT) is None  # after the stopped ones
    assert ran == ["for_gpu", "queued"]  # the stopped ones never ran
    wait_for(lambda: gpu_used() == 0, WAIT)
    counts = nbflow.engine().task_counts()
    assert counts["cancelled"] == 3 and counts["pending"] == counts["waiting"] == counts["stopping"] == 0


def test_a_task_in_its_retry_delay_is_cancelled_at_once_and_never_tried_again():
    engine = nbflow.use("local", workers=1)
    attempts = []

    @nbflow.task(retries=1, retry_delay=60)
    def flaky():
        attempts.append(nbflow.current().attempt)
        raise OSError("flaky")

    fut = flaky.submit()
    wait_for(lambda: attempts and fut.status == "pending" and fut in [r.fut for r in engine._delayed], WAIT)
    assert fut.stop()
    assert fut.cancelled() and fut.status == "cancelled"
    assert engine._delayed == {} and engine._delays._armed == 0  # its timer is gone with it
    assert attempts == [0]


def test_stop_returns_what_the_future_became_and_refuses_a_bad_grace():
    nbflow.use("local", workers=2)

    @nbflow.task
    def ok():
        return 1

    @nbflow.task
    def fails():
        raise ValueError("no")

    done, failed = ok.submit(), fails.submit()
    assert done.result(WAIT) == 1 and isinstance(failed.exception(WAIT), ValueError)
    assert done.stop() is False and failed.stop() is False
    assert (done.status, failed.status) == ("finished", "error")
    gate = threading.Event()
    blocked = nbflow.task(lambda: gate.wait(WAIT), name="blocked")
    futs = [blocked.submit() for _ in range(3)]
    try:
        assert nbflow.stop(futs[:2] + [done, failed], grace=0) == 2
        assert futs[0].stop() is True and futs[0].stop() is True  # stopped (or cancelled): True every time
    finally:
        gate.set()
    nbflow.wait(futs, timeout=WAIT)
    assert [f.status for f in futs] == ["cancelled", "cancelled", "finished"]
    assert nbflow.stop(futs[0]) == 1  # one future: its own count
    for bad in (-1, "abc", float("nan"), True):
        with pytest.raises(nbflow.ResourceSpecError, match="^grace must be") as info:
            futs[2].stop(grace=bad)
        assert "\n" not in str(info.value)
        with pytest.raises(nbflow.ResourceSpecError, match="^grace must be"):
            nbflow.stop([futs[2]], grace=bad)
    assert futs[2].status == "finished"


# --- processes=True ----------------------------------------------------------------------------------------------


def rendezvous(folder: str, count: int) -> int:
    """In a child: wait until ``count`` tasks are in at once (so each pool thread has started its child)."""
    import os
    import time

    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def test_a_child_that_ignores_sigterm_is_killed_after_grace_and_the_next_gpu_task_starts_within_1_5_s(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nbflow.use("local", workers=2, processes=True)
    nbflow.limit("GPU", 1)
    together = nbflow.task(rendezvous, name="together")
    (tmp_path / "warm").mkdir()
    warm = {f.result(WAIT) for f in [together.submit(str(tmp_path / "warm"), 2) for _ in range(2)]}
    assert len(warm) == 2  # both pool threads have their child: the bound below measures no child start-up
    started = tmp_path / "started"

    @nbflow.task(resources={"GPU": 1}, retries=3)
    def deaf(path):
        import os

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        while True:
            pass

    fut = deaf.submit(str(started))
    wait_for(lambda: started.exists() and started.read_text(), WAIT)
    child = int(started.read_text())
    # the next GPU holder: a grant in this process, which never waits for a child to start (a task sent to the
    # stopped thread would wait for a fresh child: start-up is not what this bound is about)
    with cf.ThreadPoolExecutor(1) as pool:
        granted = pool.submit(lambda: (nbflow.machine_limits.acquire("GPU", timeout=WAIT), time.monotonic()))
        wait_for(lambda: [lim.waiting for lim in nbflow.limits() if lim.name == "GPU"] == [1], WAIT)
        stopped_at = time.monotonic()
        assert fut.stop(grace=0.5)
        holding, began = granted.result(WAIT)
    holding.release()
    assert began - stopped_at <= 1.5, f"the next GPU holder got it {began - stopped_at:.2f} s after stop()"
    with pytest.raises(cf.CancelledError):
        fut.result(WAIT)  # (the share is free when the child dies, a moment before its thread has reaped it)
    assert fut.attempt == 0  # not retried
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # killed and reaped
    (tmp_path / "after").mkdir()
    after = {f.result(WAIT) for f in [together.submit(str(tmp_path / "after"), 2) for _ in range(2)]}
    assert len(after) == 2 and child not in after  # the pool keeps working: the stopped thread has a fresh child
    wait_for(lambda: gpu_used() == 0, WAIT)


def test_a_child_that_exits_on_sigterm_stops_at_once_and_one_that_handles_it_is_not_reused(tmp_path):
    nbflow.use("local", workers=1, processes=True)
    nbflow.limit("GPU", 1)

    @nbflow.task(resources={"GPU": 1})
    def hold(path, handle):
        import os
        import sys

        if handle:  # the task's finally runs, and the task returns: the child lives on
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        try:
            while True:
                pass
        finally:
            with open(path + ".finally", "w") as f:
                f.write("ran")

    @nbflow.task(resources={"GPU": 1})
    def pid():
        import os

        return os.getpid()

    for handle in (False, True):
        marker = tmp_path / f"started-{handle}"
        fut = hold.submit(str(marker), handle)
        wait_for(lambda m=marker: m.exists() and m.read_text(), WAIT)
        child = int(marker.read_text())
        stopped_at = time.monotonic()
        assert fut.stop(grace=WAIT)  # the grace never runs out: the child ends on SIGTERM
        with pytest.raises(cf.CancelledError):
            fut.result(WAIT)
        assert time.monotonic() - stopped_at < WAIT / 2
        assert Path(str(marker) + ".finally").exists() == handle
        assert pid.submit().result(WAIT) != child  # a child that got SIGTERM is never reused
    wait_for(lambda: gpu_used() == 0, WAIT)


def test_stopping_again_with_a_shorter_grace_kills_the_child_now(tmp_path):
    nbflow.use("local", workers=1, processes=True)
    nbflow.limit("GPU", 1)
    started = tmp_path / "started"

    @nbflow.task(resources={"GPU": 1})
    def deaf(path):

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(path, "w").close()
        while True:
            pass

    fut = deaf.submit(str(started))
    wait_for(started.exists, WAIT)
    assert fut.stop(grace=WAIT * 10)  # SIGTERM, ignored: it would be killed only after the grace
    assert fut.status == "stopping" and gpu_used() == 1
    stopped_at = time.monotonic()
    assert fut.stop(grace=0)  # the shorter grace counts: SIGKILL now
    with pytest.raises(cf.CancelledError):
        fut.result(WAIT)
    assert time.monotonic() - stopped_at < WAIT / 2
    wait_for(lambda: gpu_used() == 0, WAIT)


def test_a_stop_that_lands_while_the_child_is_being_set_up_still_stops_the_task(monkeypatch):
    """The stop is held up (only the order of events matters here): it reads "no child yet", then goes on once the
    pool thread has started one; that child must not then run the task."""
    from nbflow import thread_stop
    from nbflow.engines import procpool

    stop, start = thread_stop.StoppableCall.stop, procpool.ChildProcess.start
    child_started = threading.Event()

    def started_start(self, env):
        pid = start(self, env)
        child_started.set()
        return pid

    def late_stop(self, exc=nbflow.TaskStopped):
        assert child_started.wait(WAIT)  # the pool thread has a child, and would hand it the task
        stop(self, exc)

    monkeypatch.setattr(procpool.ChildProcess, "start", started_start)
    monkeypatch.setattr(thread_stop.StoppableCall, "stop", late_stop)
    nbflow.use("local", workers=1, processes=True)
    fut = nbflow.task(spin_forever).submit()
    wait_for(lambda: fut.status == "running", WAIT)
    assert fut.stop(grace=0.1)
    nbflow.wait([fut], timeout=WAIT)
    assert fut.cancelled()


def fork_and_popen_then_sleep(folder: str) -> None:
    """A child that starts a forked helper (it inherits the child's pipe and shares) and a subprocess, then waits."""
    helper = os.fork()
    if helper == 0:
        time.sleep(600)
        os._exit(0)
    sub = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(folder, "pids").write_text(f"{helper} {sub.pid}")
    time.sleep(600)


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's zombie is reaped by init in its own time)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stopped_child_takes_what_it_started_with_it_and_its_share_is_freed(tmp_path):
    """A forked helper would keep the child's pipe and the shares' descriptors open: the whole process group goes."""
    nbflow.use("local", workers=1, processes=True)
    nbflow.limit("GPU", 1)
    fut = nbflow.task(fork_and_popen_then_sleep, resources={"GPU": 1}).submit(str(tmp_path))
    pids_file = tmp_path / "pids"
    wait_until(pids_file.exists, WAIT, "the child to start its helper and subprocess")
    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert fut.stop(grace=WAIT)  # SIGTERM alone ends them all: the grace is never waited out
    with pytest.raises(cf.CancelledError):
        fut.result(WAIT)
    wait_for(lambda: gpu_used() == 0, WAIT)
    wait_for(lambda: not any(alive(pid) for pid in pids), WAIT)


def spawn_a_pool() -> list[int]:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return pool.map(abs, [-1, -2])


def test_a_child_may_start_its_own_processes():
    """E.g. a DataLoader's workers: the child running tasks is not a daemonic process."""
    nbflow.use("local", workers=1, processes=True)
    assert nbflow.task(spawn_a_pool).submit().result(WAIT) == [1, 2]
