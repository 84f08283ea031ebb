"""What every engine must do: one module, run against each engine (the definition of "an engine").

Each test gets a fresh engine from the ``engine`` fixture, parametrized over local threads, local processes
and an embedded Dask cluster; a new engine joins by adding itself to ``ENGINES``. Task bodies are module-level
functions synchronised through files, so they run the same in a thread, a child process or a Dask worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import time
import uuid
from pathlib import Path

import pytest
from limits_helpers import wait_for

import nbflow

ENGINES = {
    "threads": lambda workers: nbflow.use("local", workers=workers),
    "processes": lambda workers: nbflow.use("local", workers=workers, processes=True),
    "dask": lambda workers: nbflow.use("dask", n_workers=1, threads_per_worker=workers, processes=False),
}


@pytest.fixture(params=list(ENGINES))
def make(request):
    """``make(workers)`` selects a new engine of the parametrized kind with ``workers`` parallel slots."""
    return ENGINES[request.param]


@pytest.fixture
def engine(make):
    return make(4)


# --- task bodies ------------------------------------------------------------------------------------------


def echo(x):
    return x


def add(a, b=0):
    return a + b


def mark(directory: str) -> str:
    """Record one call (an attempt) as a new file in ``directory``; returns its path."""
    path = os.path.join(directory, uuid.uuid4().hex)
    Path(path).write_text(f"{time.time()}")
    return path


def hold(directory: str, release: str, value=None):
    """Mark that it started, then wait (polling, so a Dask timeout can stop it) until ``release`` exists."""
    mark(directory)
    deadline = time.monotonic() + 120
    while not os.path.exists(release):
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.01)
    return value


def flaky(directory: str, fails: int):
    """Fail the first ``fails`` attempts, then return how many attempts ran."""
    mark(directory)
    attempts = len(os.listdir(directory))
    if attempts <= fails:
        raise OSError(f"attempt {attempts} failed")
    return attempts


def boom():
    raise KeyError("missing")


class NeedsTwo(Exception):
    """An exception whose class cannot be rebuilt from its ``args`` (pickling calls ``NeedsTwo("x and y")``)."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def raise_needs_two():
    raise NeedsTwo("x", "y")


def pipeline(n: int) -> list[int]:
    """A task that runs tasks and waits for them (nested)."""
    square = nbflow.task(lambda x: x * x, name="square")
    return nbflow.gather(square.map(range(n)))


def calls(directory: str) -> int:
    return len(os.listdir(directory))


# async task bodies (``async def``): the same checks, their coroutines awaited on the engine's event loop, in a
# child process or on a Dask worker


async def async_echo(x):
    await asyncio.sleep(0)
    return x


async def async_add(a, b=0):
    await asyncio.sleep(0.01)
    return a + b


async def async_hold(directory: str, release: str, value=None):
    """``hold``, awaiting: it holds no thread while it waits for ``release``."""
    mark(directory)
    deadline = time.monotonic() + 120
    while not os.path.exists(release):
        assert time.monotonic() < deadline, "never released"
        await asyncio.sleep(0.01)
    return value


async def async_flaky(directory: str, fails: int):
    await asyncio.sleep(0)
    return flaky(directory, fails)


async def async_boom():
    await asyncio.sleep(0)
    raise KeyError("missing")


async def async_current(pause: float) -> tuple:
    await asyncio.sleep(pause)  # others run on the same loop meanwhile
    ctx = nbflow.current()
    return ctx.key, ctx.name, ctx.attempt, dict(ctx.resources), bool(ctx.worker)


@pytest.fixture
def spot(tmp_path):
    """A fresh directory for marks, and a release file path."""
    marks = tmp_path / f"marks-{uuid.uuid4().hex[:6]}"
    marks.mkdir()
    return str(marks), str(tmp_path / f"release-{uuid.uuid4().hex[:6]}")


# --- futures: submit, map, gather, wait, as_completed -----------------------------------------------------


def test_submit_map_and_gather_return_values_in_order(engine):
    assert nbflow.task(add).submit(2, b=3).result(60) == 5
    futs = nbflow.task(add).map(range(5), range(10, 15))
    assert nbflow.gather(futs, timeout=60) == [10, 12, 14, 16, 18]
    assert nbflow.gather(nbflow.task(add).map([1, 2], b=10), timeout=60) == [11, 12]
    assert all(f.status == "finished" for f in futs)


def test_wait_and_as_completed_follow_concurrent_futures(engine, spot):
    marks, release = spot
    slow = nbflow.task(hold).submit(marks, release, "slow")
    fast = nbflow.task(echo).submit("fast")
    done, not_done = nbflow.wait([slow, fast], timeout=60, return_when=cf.FIRST_COMPLETED)
    assert (done, not_done) == ({fast}, {slow})
    assert nbflow.wait([slow], timeout=0.05) == (set(), {slow})
    with pytest.raises(TimeoutError):
        list(nbflow.as_completed([slow], timeout=0.05))
    Path(release).touch()
    assert [f.result() for f in nbflow.as_completed([slow], timeout=60)] == ["slow"]


def test_an_exception_keeps_its_type_and_message_and_the_engine_keeps_working(engine):
    fut = nbflow.task(boom).submit()
    with pytest.raises(KeyError, match="missing"):
        fut.result(60)
    assert fut.status == "error" and isinstance(fut.exception(), KeyError)
    assert nbflow.task(echo).submit(1).result(60) == 1


def test_an_exception_that_cannot_be_rebuilt_keeps_its_type_name_message_and_traceback(engine):
    exc = nbflow.task(raise_needs_two).submit().exception(60)
    if not isinstance(exc, NeedsTwo):  # it crossed a process boundary
        assert isinstance(exc, nbflow.RemoteError) and exc.type_name == "NeedsTwo"
        assert "raise_needs_two" in exc.remote_traceback
    assert str(exc).endswith("x and y")


# --- dependencies ------------------------------------------------------------------------------------------


def test_futures_in_arguments_are_dependencies_also_inside_containers(engine):
    a, b = nbflow.task(echo).submit(1), nbflow.task(echo).submit(2)
    total = nbflow.task(lambda xs, d: sum(xs) + d["k"]).submit([a, (b,)][0:1] + [b], {"k": a})
    assert total.result(60) == 4
    chained = nbflow.task(add).submit(total, b=nbflow.task(echo).submit(10))
    assert chained.result(60) == 14


def test_a_failed_dependency_fails_its_dependents_with_upstream_error_and_they_never_run(engine, spot):
    marks, _ = spot
    failed = nbflow.task(boom, name="load").submit()
    child = nbflow.task(mark, name="child").submit(failed)
    grandchild = nbflow.task(mark, name="grandchild").submit([child])
    with pytest.raises(nbflow.UpstreamError, match="'load' failed: KeyError"):
        child.result(60)
    with pytest.raises(nbflow.UpstreamError, match="'child' failed: its upstream 'load' failed"):
        grandchild.result(60)
    assert child.exception().failed == "load" and grandchild.exception().failed == "child"
    assert calls(marks) == 0


# --- retries, retry delay, timeouts ---------------------------------------------------------------------------


def test_retries_run_failed_attempts_again_and_the_last_error_is_final(engine, spot, tmp_path):
    marks, _ = spot
    fut = nbflow.task(flaky, retries=2).submit(marks, 2)
    assert fut.result(60) == 3 and fut.attempt == 2
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(OSError, match="attempt 2 failed"):
        nbflow.task(flaky, retries=1).submit(str(again), 5).result(60)
    assert calls(str(again)) == 2


def test_a_retry_delay_holds_nothing_while_the_task_is_pending(engine, spot):
    marks, _ = spot
    nbflow.limit("conf", 1)
    fut = nbflow.task(flaky, limits={"conf": 1}, retries=1, retry_delay=600).submit(marks, 1)
    wait_for(lambda: fut.attempt == 1, timeout=60)  # the first attempt failed and will be retried
    assert fut.status == "pending" and calls(marks) == 1 and _used("conf") == 0
    other = nbflow.task(echo, limits={"conf": 1}).submit("ran during the delay")
    assert other.result(60) == "ran during the delay"
    assert fut.status == "pending" and calls(marks) == 1
    nbflow.engine().close()  # a run waiting out its delay ends with the engine
    with pytest.raises(RuntimeError, match="engine was closed"):
        fut.result(60)


def test_a_timeout_fails_the_attempt_with_task_timeout_and_is_retried(engine, spot):
    marks, release = spot
    # the timeout must outlast the start of the task: a process attempt starts a fresh child (the timed-out one
    # is killed), and its start-up counts against the timeout
    timeout = 5 if getattr(engine, "processes", False) else 0.5
    slow = nbflow.task(hold, timeout=timeout, retries=1, name="slow")
    fut = slow.submit(marks, release)
    with pytest.raises(nbflow.TaskTimeout, match=f"'slow' ran longer than its timeout of {timeout:g} s"):
        fut.result(60)
    assert calls(marks) == 2  # a timed-out attempt is retried like any failure
    Path(release).touch()
    assert nbflow.task(echo).submit("after").result(60) == "after"


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1, 0, 1e12, "5"])
def test_timeouts_and_delays_must_be_finite_seconds(bad):
    with pytest.raises(nbflow.ResourceSpecError, match="timeout must be"):
        nbflow.task(timeout=bad)
    if bad != 0:
        with pytest.raises(nbflow.ResourceSpecError, match="retry_delay must be"):
            nbflow.task(retry_delay=bad)(echo)


# --- status, cancel, limits ------------------------------------------------------------------------------------


def test_status_moves_from_pending_to_running_to_finished_with_nobody_asking(engine, spot):
    marks, release = spot
    first = nbflow.task(hold, name="first").submit(marks, release, 1)
    second = nbflow.task(add, name="second").submit(first, 1)
    wait_for(lambda: first.status == "running", timeout=60)  # no occupancy() call anywhere
    assert second.status == "pending" and first.worker
    Path(release).touch()
    assert second.result(60) == 2
    assert (first.status, second.status) == ("finished", "finished")
    counts = wait_for(lambda: (c := nbflow.engine().task_counts())["finished"] == 2 and c, timeout=30)
    assert counts["running"] == counts["pending"] == 0


def test_cancel_stops_a_task_that_has_not_started_but_not_a_running_one(engine, spot, tmp_path):
    marks, release = spot
    running = nbflow.task(hold, name="running").submit(marks, release, "done")
    wait_for(lambda: running.status == "running", timeout=60)
    later_marks = tmp_path / "later"
    later_marks.mkdir()
    pending = nbflow.task(mark, name="pending").submit(str(later_marks), running)
    dependent = nbflow.task(mark, name="dependent").submit(str(later_marks), [pending])
    assert pending.cancel() and pending.cancelled() and pending.status == "cancelled"
    assert not running.cancel()
    with pytest.raises(nbflow.UpstreamError, match="upstream task 'pending' was cancelled"):
        dependent.result(60)
    Path(release).touch()
    assert running.result(60) == "done"
    assert nbflow.wait([pending], timeout=1).done == {pending}  # wait() sees a cancelled future at once
    assert calls(str(later_marks)) == 0
    assert nbflow.engine().task_counts()["cancelled"] == 1


def test_limits_are_held_while_a_task_runs_and_freed_however_it_ends(engine, spot):
    marks, release = spot
    nbflow.limit("conf", 1)
    first = nbflow.task(hold, limits={"conf": 1}, name="holder").submit(marks, release)
    second = nbflow.task(hold, limits={"conf": 1}, name="holder").submit(marks, release)
    wait_for(lambda: calls(marks) == 1, timeout=60)
    status = next(s for s in nbflow.limits() if s.name == "conf")
    assert status.used == 1 and [h.task for h in status.holders] == ["holder"]
    Path(release).touch()
    nbflow.wait([first, second], timeout=60)
    times = sorted(float(Path(marks, name).read_text()) for name in os.listdir(marks))
    assert len(times) == 2
    failing = nbflow.task(boom, limits={"conf": 1}).submit()
    with pytest.raises(KeyError):
        failing.result(60)
    wait_for(lambda: _used("conf") == 0, timeout=30)


def _used(name: str) -> float:
    return next((s.used for s in nbflow.limits() if s.name == name), 0.0)


# --- nested tasks, direct calls, close ------------------------------------------------------------------------


def test_a_task_may_submit_and_wait_for_tasks_even_with_one_worker(make):
    make(1)
    outer = nbflow.task(pipeline, name="pipeline")
    assert nbflow.gather(outer.map([2, 3]), timeout=120) == [[0, 1], [0, 1, 4]]


def test_a_direct_call_runs_here_with_retries(engine, spot):
    marks, _ = spot
    assert nbflow.task(flaky, retries=1)(marks, 1) == 2
    assert nbflow.task(add)(nbflow.task(echo).submit(1), b=1) == 2


def test_close_cancels_what_has_not_started_and_refuses_new_tasks(engine, spot):
    marks, release = spot
    running = nbflow.task(hold, name="running").submit(marks, release, "done")
    wait_for(lambda: running.status == "running", timeout=60)
    blocked = [nbflow.task(add).submit(running, i) for i in range(3)]
    engine.close()
    assert [f.status for f in blocked] == ["cancelled"] * 3
    Path(release).touch()
    nbflow.wait([running], timeout=60)
    assert running.done()
    with pytest.raises(RuntimeError, match="closed"):
        nbflow.task(echo).submit(1)


# --- async tasks: the same contract for an ``async def`` ------------------------------------------------------------


def test_async_tasks_return_values_in_order_and_can_be_awaited(engine):
    assert nbflow.task(async_add).submit(2, b=3).result(60) == 5
    futs = nbflow.task(async_add).map(range(5), range(10, 15))
    assert nbflow.gather(futs, timeout=60) == [10, 12, 14, 16, 18]
    assert all(f.status == "finished" for f in futs)

    async def awaiting():
        return await asyncio.gather(*nbflow.task(async_echo).map([1, 2]))

    assert asyncio.run(awaiting()) == [1, 2]
    with pytest.raises(KeyError, match="missing"):
        nbflow.task(async_boom).submit().result(60)


def test_async_tasks_take_futures_as_dependencies_and_fail_after_a_failed_upstream(engine, spot):
    marks, _ = spot
    a, b = nbflow.task(async_echo).submit(1), nbflow.task(echo).submit(2)
    total = nbflow.task(lambda xs, d: sum(xs) + d["k"]).submit([a, b], {"k": a})  # sync on async
    chained = nbflow.task(async_add).submit(total, b=nbflow.task(async_echo).submit(10))
    assert chained.result(60) == 14
    failed = nbflow.task(async_boom, name="load").submit()
    child = nbflow.task(async_flaky, name="child").submit(marks, failed)
    with pytest.raises(nbflow.UpstreamError, match="'load' failed: KeyError"):
        child.result(60)
    assert calls(marks) == 0


def test_async_retries_run_failed_attempts_again(engine, spot, tmp_path):
    marks, _ = spot
    fut = nbflow.task(async_flaky, retries=2).submit(marks, 2)
    assert fut.result(60) == 3 and fut.attempt == 2
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(OSError, match="attempt 2 failed"):
        nbflow.task(async_flaky, retries=1).submit(str(again), 5).result(60)
    assert calls(str(again)) == 2


def test_an_async_timeout_fails_the_attempt_with_task_timeout_and_is_retried(engine, spot):
    marks, release = spot
    timeout = 5 if getattr(engine, "processes", False) else 0.5  # (a child's start-up counts, as above)
    fut = nbflow.task(async_hold, timeout=timeout, retries=1, name="slow").submit(marks, release)
    with pytest.raises(nbflow.TaskTimeout, match=f"'slow' ran longer than its timeout of {timeout:g} s"):
        fut.result(60)
    assert calls(marks) == 2
    Path(release).touch()
    assert nbflow.task(async_echo).submit("after").result(60) == "after"


def test_async_limits_are_held_while_the_coroutine_runs_and_freed_however_it_ends(engine, spot):
    marks, release = spot
    nbflow.limit("conf", 1)
    first = nbflow.task(async_hold, limits={"conf": 1}, name="holder").submit(marks, release, 1)
    second = nbflow.task(async_hold, limits={"conf": 1}, name="holder").submit(marks, release, 2)
    wait_for(lambda: calls(marks) == 1, timeout=60)
    status = next(s for s in nbflow.limits() if s.name == "conf")
    assert status.used == 1 and [h.task for h in status.holders] == ["holder"]
    assert nbflow.task(async_echo).submit("free").result(60) == "free"  # not blocked by the waiting one
    assert calls(marks) == 1
    Path(release).touch()
    assert nbflow.gather([first, second], timeout=60) == [1, 2]
    with pytest.raises(KeyError):
        nbflow.task(async_boom, limits={"conf": 1}).submit().result(60)
    wait_for(lambda: _used("conf") == 0, timeout=30)


def test_current_names_each_running_async_task(engine):
    nbflow.limit("conf", 10)
    futs = nbflow.task(async_current, limits={"conf": 1}, name="who").map([0.02 * (i % 3) for i in range(6)])
    for fut, (key, name, attempt, holds, has_worker) in zip(futs, nbflow.gather(futs, timeout=60), strict=True):
        assert (key, name, attempt, holds, has_worker) == (fut.key, "who", 0, {"conf": 1.0}, True)
    assert nbflow.current() is None
