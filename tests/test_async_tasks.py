"""Async tasks (``@nbflow.task`` on an ``async def``): the same contract as a sync task on local threads, local
child processes and Dask, plus what an event loop gives: thousands of waiting tasks without a thread each, limits
taken without blocking the loop, ``await task(x)``, subflows that never deadlock, timeouts and ``stop()`` that
cancel the coroutine (its ``finally`` runs), and task cells with a top-level ``await``.

Task bodies are module-level coroutine functions synchronised through files, so they run the same on the local
engine's event loop, in a child process and on a Dask worker. The Dask tests share one worker process with one
thread (and ``GPU=2`` over the fake devices ``3,5``), so every wait below that would hold a thread would deadlock.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from limits_helpers import context_fields, wait_for

import nbflow

WAIT = 120.0  # seconds: generous, the machine is a busy 2-core box
ENGINES = ["threads", "processes", "dask"]
DEVICES = "3,5,6,7"  # fake GPUs of the local engines
DASK_DEVICES = "3,5"  # the Dask worker's fake GPUs (its GPU resource: 2)


# --- task bodies (module level: child processes and Dask workers import them from this file) -----------------------


def mark(directory: str, name: str | None = None) -> str:
    """Record one call (an attempt) as a new file in ``directory``."""
    path = os.path.join(directory, name or uuid.uuid4().hex)
    Path(path).write_text(f"{time.time()}")
    return path


def calls(directory: str) -> int:
    return len(os.listdir(directory))


def log(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


async def until(check, what: str, timeout: float = WAIT) -> None:
    """Poll ``check()`` without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never {what}"
        await asyncio.sleep(0.02)


async def double(x):
    await asyncio.sleep(0.01)
    return 2 * x


async def add(a, b=0):
    await asyncio.sleep(0)
    return a + b


def sync_add(a, b=0):
    return a + b


async def gated(marks: str, release: str, value=None):
    """Mark that it started, then wait (awaiting, holding no thread) until ``release`` exists."""
    start = time.time()
    mark(marks)
    await until(lambda: os.path.exists(release), "released")
    return value if value is not None else (start, time.time())


async def flaky(directory: str, fails: int):
    """Fail the first ``fails`` attempts, then return how many attempts ran."""
    mark(directory)
    await asyncio.sleep(0)
    attempts = calls(directory)
    if attempts <= fails:
        raise OSError(f"attempt {attempts} failed")
    return attempts


async def boom():
    await asyncio.sleep(0)
    raise KeyError("missing")


async def whoami(pause: float = 0.05) -> dict:
    """What ``nbflow.current()`` says, before and after other coroutines ran on the same loop."""
    before = nbflow.current()
    await asyncio.sleep(pause)
    ctx = nbflow.current()
    assert ctx == before, (before, ctx)
    inner = await asyncio.create_task(_current_in_a_child_coroutine())  # asyncio tasks it creates are part of it
    in_thread = await asyncio.to_thread(nbflow.current)  # and threads it starts so
    return {
        **context_fields(ctx),
        "deadline": ctx.deadline,
        "inner": inner.key,
        "thread": in_thread.key,
    }


async def _current_in_a_child_coroutine():
    await asyncio.sleep(0)
    return nbflow.current()


async def overrun(marks: str, trail: str):
    """Runs until cancelled: records the ``CancelledError`` and that its ``finally`` ran."""
    mark(marks)
    try:
        await asyncio.sleep(WAIT)
    except asyncio.CancelledError:
        log(trail, "cancelled")
        raise
    finally:
        log(trail, "finally")


async def stubborn(marks: str):
    """Catches the cancellation of its timeout and returns anyway, late."""
    mark(marks)
    try:
        await asyncio.sleep(WAIT)
    except asyncio.CancelledError:
        await asyncio.sleep(0.3)
    return "late"


async def attempt_seen(directory: str) -> int:
    """Fails its first attempt; returns the attempt number ``nbflow.current()`` gives the next."""
    mark(directory)
    await asyncio.sleep(0)
    if calls(directory) == 1:
        raise OSError("first attempt")
    return nbflow.current().attempt


async def fails(v):
    x = v + 1  # noqa: F841 (a local to look at in the debugger)
    await asyncio.sleep(0)
    raise ValueError("async failure")


def returns_coroutine():
    """A sync function that meant to be ``async def``."""
    return asyncio.sleep(0)


async def computed(directory: str, x):
    mark(directory)
    await asyncio.sleep(0.05)
    return x * 10


async def meet(directory: str, name: str, expected: int):
    """A barrier: returns once ``expected`` tasks reached it, so they ran at the same time."""
    mark(directory, name)
    await until(lambda: calls(directory) >= expected, f"met {expected} ({calls(directory)} came)")
    return name


def sync_child(x):
    time.sleep(0.05)
    return x


async def fan_out(directory: str):
    """A subflow: two async tasks in parallel (they wait for each other), then two sync ones, awaited."""
    a, b = await asyncio.gather(
        nbflow.task(meet, name="a").submit(directory, "a", 2), nbflow.task(meet, name="b").submit(directory, "b", 2)
    )
    c, d = await asyncio.gather(nbflow.task(sync_child).submit(3), nbflow.task(sync_child).submit(4))
    return [a, b, c, d]


def sync_calls_directly() -> tuple:
    """A sync task running an async task's direct call to its end: the coroutine is the current task inside."""
    return nbflow.current().name, asyncio.run(nbflow.task(whoami, name="inner")(0))["name"], nbflow.current().name


async def calls_directly(x):
    """``await task(x)`` inside an async task: runs here, as its own task for ``nbflow.current()``."""
    outer = nbflow.current().name
    inner = await nbflow.task(whoami, name="inner")(0)
    blocking = nbflow.task(current_name, name="blocking")()  # a sync direct call in it: that task's, meanwhile
    again = nbflow.current().name
    return outer, inner["name"], blocking, again, await nbflow.task(double)(x)


def current_name() -> str:
    return nbflow.current().name


# --- engines ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """One worker process with one thread and ``GPU=2`` (fake devices 3,5), shared by this module's Dask tests."""
    import distributed

    base = tmp_path_factory.mktemp("async-dask")
    with pytest.MonkeyPatch.context() as env:  # inherited by the worker process
        env.setenv("NBFLOW_LIMITS_DIR", str(base / "limits"))
        env.setenv("NBFLOW_CACHE_DIR", str(base / "cache"))
        env.setenv("CUDA_VISIBLE_DEVICES", DASK_DEVICES)
        cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            resources={"GPU": 2},
            host="127.0.0.1",
            protocol="tcp://",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0", "dashboard": False},
        )
    try:
        yield cluster, base
    finally:
        cluster.close()


def use_dask(request, monkeypatch) -> None:
    """Connect to the module's cluster, with its worker's limits and cache directories."""
    cluster, base = request.getfixturevalue("dask_cluster")
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(base / "limits"))
    monkeypatch.setenv("NBFLOW_CACHE_DIR", str(base / "cache"))
    nbflow.use("dask", address=cluster.scheduler_address)


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch, tmp_path) -> str:
    kind = request.param
    if kind == "dask":
        use_dask(request, monkeypatch)
    else:
        monkeypatch.setenv("NBFLOW_CACHE_DIR", str(tmp_path / "cache"))
        nbflow.use("local", workers=2, processes=kind == "processes")
    return kind


@pytest.fixture
def spot(tmp_path):
    """A fresh directory for marks, and a release file path."""
    marks = tmp_path / f"marks-{uuid.uuid4().hex[:6]}"
    marks.mkdir()
    return str(marks), str(tmp_path / f"release-{uuid.uuid4().hex[:6]}")


def limit_name() -> str:
    """A limit of its own for each test (the Dask tests share the worker's limits directory)."""
    return f"async_{uuid.uuid4().hex[:8]}"


def used(name: str) -> float:
    return next((s.used for s in nbflow.limits() if s.name == name), 0.0)


# --- futures, dependencies, retries, current() ----------------------------------------------------------------------


def test_an_async_def_makes_an_async_task_whose_submit_and_map_return_futures(engine):
    plain = nbflow.task(double)
    optioned = nbflow.task(retries=1, name="twice")(double)
    assert plain.is_async and optioned.is_async and optioned.with_options(retries=0).is_async
    assert not nbflow.task(sync_add).is_async
    fut = plain.submit(21)
    assert isinstance(fut, nbflow.Future) and fut.result(WAIT) == 42 and fut.status == "finished"
    futs = optioned.map(range(5))
    assert all(isinstance(f, nbflow.Future) for f in futs) and futs[0].name == "twice"
    assert nbflow.gather(futs, timeout=WAIT) == [0, 2, 4, 6, 8]
    assert nbflow.gather(nbflow.task(add).map([1, 2], b=10), timeout=WAIT) == [11, 12]

    async def awaits():  # an nbflow future is awaitable from plain asyncio code too
        return await nbflow.task(add).submit(1, b=2), await asyncio.gather(*plain.map([1, 2]))

    assert asyncio.run(awaits()) == (3, [2, 4])


def test_dependencies_of_and_on_async_tasks_and_failed_upstreams(engine, spot):
    marks, _ = spot
    a, b = nbflow.task(double).submit(1), nbflow.task(sync_add).submit(2)
    total = nbflow.task(add).submit(a, b=nbflow.task(add).submit(b, b=a))  # async on async and on sync
    assert total.result(WAIT) == 6
    assert nbflow.task(sync_add).submit(total, 1).result(WAIT) == 7  # sync on async
    failed = nbflow.task(boom, name="load").submit()
    child = nbflow.task(flaky, name="child").submit(marks, failed)
    with pytest.raises(nbflow.UpstreamError, match="'load' failed: KeyError"):
        child.result(WAIT)
    assert calls(marks) == 0


def test_retries_run_a_failed_async_task_again(engine, spot, tmp_path):
    marks, _ = spot
    fut = nbflow.task(flaky, retries=2).submit(marks, 2)
    assert fut.result(WAIT) == 3 and fut.attempt == 2
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(OSError, match="attempt 2 failed"):
        nbflow.task(flaky, retries=1, retry_delay=0.05).submit(str(again), 5).result(WAIT)
    assert calls(str(again)) == 2


def test_current_is_each_async_tasks_own_while_they_share_a_loop(engine, spot):
    assert nbflow.current() is None
    name = limit_name()
    nbflow.limit(name, 100)
    who = nbflow.task(whoami, limits={name: 1}, timeout=60, name="who")
    futs = who.map([0.05 * (i % 4) for i in range(12)])  # their awaits interleave on one loop
    records = nbflow.gather(futs, timeout=WAIT)
    for fut, r in zip(futs, records, strict=True):
        assert r["key"] == fut.key == r["inner"] == r["thread"]  # its own, also in asyncio tasks and threads it made
        assert (r["name"], r["attempt"], r["resources"]) == ("who", 0, {name: 1.0})
        assert r["worker"] and r["deadline"] is not None
    retried = nbflow.task(attempt_seen, retries=1).submit(spot[0])
    assert retried.result(WAIT) == 1 and retried.attempt == 1
    assert nbflow.current() is None


# --- concurrency without a thread each ------------------------------------------------------------------------------


def test_a_thousand_sleeping_async_tasks_finish_on_four_workers():
    nbflow.use("local", workers=4)
    nap = nbflow.task(asyncio.sleep, name="nap")
    start = time.monotonic()
    futs = nap.map([1] * 1000, range(1000))  # asyncio.sleep(1, result=i)
    assert nbflow.gather(futs, timeout=WAIT) == list(range(1000))
    assert time.monotonic() - start < 60  # a very generous bound: 250 s if each held one of the 4 threads


def test_two_hundred_sleeping_async_tasks_hold_no_thread_each(spot):
    marks, release = spot
    nbflow.use("local", workers=4)
    before = threading.active_count()
    futs = nbflow.task(gated).map([marks] * 200, [release] * 200, range(200))
    wait_for(lambda: calls(marks) == 200, timeout=WAIT, what="all 200 tasks to start")  # 4 threads: all at once
    assert threading.active_count() < min(50, before + 20)
    assert all(f.status == "running" for f in futs)
    Path(release).touch()
    assert nbflow.gather(futs, timeout=WAIT) == list(range(200))


def test_on_dask_two_hundred_async_tasks_run_at_once_on_one_thread(request, monkeypatch, spot):
    marks, release = spot
    use_dask(request, monkeypatch)
    futs = nbflow.task(gated).map([marks] * 200, [release] * 200, range(200))
    wait_for(lambda: calls(marks) == 200, timeout=WAIT, what="all 200 tasks to start on one worker thread")
    assert not any(f.done() for f in futs)
    Path(release).touch()
    assert nbflow.gather(futs, timeout=WAIT) == list(range(200))


# --- limits ---------------------------------------------------------------------------------------------------------


def test_limits_are_held_while_the_coroutine_runs_and_taken_without_blocking_the_loop(engine, spot):
    marks, release = spot
    name = limit_name()
    nbflow.limit(name, 1)
    holder = nbflow.task(gated, limits={name: 1}, name="holder")
    first, second = holder.submit(marks, release), holder.submit(marks, release)
    wait_for(lambda: calls(marks) == 1, timeout=WAIT, what="one holder to start")
    status = next(s for s in nbflow.limits() if s.name == name)
    assert status.used == 1 and [h.task for h in status.holders] == ["holder"]
    # one holds the limit, one waits for it: an unlimited async task still runs (the loop is not blocked)
    assert nbflow.task(double).submit(4).result(WAIT) == 8
    assert calls(marks) == 1 and not first.done() and not second.done()
    Path(release).touch()
    (a_start, a_end), (b_start, b_end) = nbflow.gather([first, second], timeout=WAIT)
    assert a_end <= b_start or b_end <= a_start  # never together
    with pytest.raises(KeyError):
        nbflow.task(boom, limits={name: 1}).submit().result(WAIT)
    wait_for(lambda: used(name) == 0, timeout=WAIT, what="the limit to be free")


def test_a_direct_call_holds_the_tasks_limits_while_awaited(engine, spot):
    marks, release = spot
    name = limit_name()
    nbflow.limit(name, 1)
    holder = nbflow.task(gated, limits={name: 1}, name="direct")

    async def main():
        call = asyncio.ensure_future(holder(marks, release, "called"))
        await until(lambda: calls(marks) == 1, "started")
        held = used(name)
        Path(release).touch()
        return held, await call

    assert asyncio.run(main()) == (1.0, "called")
    assert used(name) == 0


# --- await task(x), subflows ----------------------------------------------------------------------------------------


def test_await_task_runs_inside_an_async_task_and_via_asyncio_run(engine, spot):
    marks, _ = spot
    assert nbflow.task(calls_directly).submit(5).result(WAIT) == (
        "calls_directly",
        "inner",
        "blocking",
        "calls_directly",
        10,
    )
    assert nbflow.task(sync_calls_directly).submit().result(WAIT) == (
        "sync_calls_directly",
        "inner",
        "sync_calls_directly",
    )
    assert asyncio.run(nbflow.task(double)(4)) == 8
    assert asyncio.run(nbflow.task(flaky, retries=1)(marks, 1)) == 2  # with its retries
    direct = asyncio.run(nbflow.task(whoami, name="here")(0))
    assert direct["name"] == "here" and nbflow.current() is None


@pytest.mark.parametrize("kind", ["threads", "processes", "dask"])
def test_a_subflow_runs_its_tasks_in_parallel_and_never_deadlocks_on_one_worker(kind, request, monkeypatch, spot):
    marks, _ = spot
    if kind == "dask":
        use_dask(request, monkeypatch)  # one worker, one thread
    else:
        nbflow.use("local", workers=1, processes=kind == "processes")
    flow = nbflow.task(fan_out)
    assert flow.submit(marks).result(WAIT) == ["a", "b", 3, 4]  # a and b waited for each other: in parallel
    again = Path(marks, "again")
    again.mkdir()
    assert nbflow.gather(flow.map([str(again)]), timeout=WAIT) == [["a", "b", 3, 4]]


# --- timeouts, stop -------------------------------------------------------------------------------------------------


def test_a_timeout_cancels_the_coroutine_then_fails_with_task_timeout_and_is_retried(engine, spot, tmp_path):
    marks, _ = spot
    trail = str(tmp_path / "trail")
    timeout = 5 if engine == "processes" else 0.5  # a child's start-up counts against the timeout
    fut = nbflow.task(overrun, timeout=timeout, retries=1, name="slow").submit(marks, trail)
    with pytest.raises(nbflow.TaskTimeout, match=f"'slow' ran longer than its timeout of {timeout:g} s"):
        fut.result(WAIT)
    assert calls(marks) == 2 and fut.attempt == 1
    if engine != "processes":  # (the coroutine is cancelled as the attempt ends: its finally runs soon after)
        expected = ["cancelled", "finally"] * 2
        wait_for(lambda: os.path.exists(trail) and Path(trail).read_text().split() == expected, WAIT, "both finally")
    assert nbflow.task(double).submit(1).result(WAIT) == 2


@pytest.mark.parametrize("kind", ["threads", "dask"])
def test_a_coroutine_that_swallows_its_timeouts_cancellation_still_fails_with_task_timeout(kind, request, monkeypatch):
    marks = request.getfixturevalue("tmp_path") / "marks"
    marks.mkdir()
    if kind == "dask":
        use_dask(request, monkeypatch)
    else:
        nbflow.use("local", workers=2)
    fut = nbflow.task(stubborn, timeout=0.5, retries=1).submit(str(marks))
    with pytest.raises(nbflow.TaskTimeout):
        fut.result(WAIT)  # its late return value is no result
    assert calls(str(marks)) == 2


def test_stop_cancels_a_running_async_task_and_one_waiting_for_its_limit(engine, spot, tmp_path):
    marks, _ = spot
    trail = str(tmp_path / "trail")
    name = limit_name()
    nbflow.limit(name, 1)
    long = nbflow.task(overrun, limits={name: 1}, name="long")
    fut, waiting = long.submit(marks, trail), long.submit(marks, trail)
    wait_for(lambda: calls(marks) == 1 and fut.status == "running", timeout=WAIT, what="the task to run")
    assert waiting.stop()  # it waits for the limit: it never runs
    nbflow.wait([waiting], timeout=WAIT)
    assert waiting.cancelled() and fut.status == "running"
    assert fut.stop()
    nbflow.wait([fut], timeout=WAIT)
    assert fut.cancelled() and fut.status == "cancelled" and calls(marks) == 1
    if engine != "processes":  # (a child process gets SIGTERM, as for a sync task)
        assert Path(trail).read_text().split() == ["cancelled", "finally"]
    wait_for(lambda: used(name) == 0, timeout=WAIT, what="the limit to be free")
    assert nbflow.task(double).submit(2).result(WAIT) == 4
