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
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
from limits_helpers import wait_for

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
        "key": ctx.key,
        "name": ctx.name,
        "attempt": ctx.attempt,
        "worker": ctx.worker,
        "resources": dict(ctx.resources),
        "gpus": ctx.gpus,
        "ids": ctx.cuda_visible_devices,
        "env": os.environ.get("CUDA_VISIBLE_DEVICES"),
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
    if engine != "processes":  # (a child process is killed at its timeout, as for a sync task)
        assert Path(trail).read_text().split() == ["cancelled", "finally"] * 2  # before the future failed
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


# --- mistakes, caching, debugging -----------------------------------------------------------------------------------


def test_a_sync_function_returning_a_coroutine_fails_with_a_one_line_error(engine):
    fut = nbflow.task(returns_coroutine).submit()
    with pytest.raises(nbflow.NbflowError, match="returned a coroutine.*async def") as failed:
        fut.result(WAIT)
    assert "\n" not in str(failed.value) and "'returns_coroutine'" in str(failed.value)
    with pytest.raises(nbflow.NbflowError, match="async def"):
        nbflow.task(returns_coroutine)()  # a direct call too


def test_a_cached_async_task_runs_once_per_key_and_is_a_hit_after(engine, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    step = nbflow.task(computed, cache=True)
    first = step.map([str(runs)] * 3, [1, 1, 2])  # the same key twice in one batch
    assert nbflow.gather(first, timeout=WAIT) == [10, 10, 20]
    assert calls(str(runs)) == 2
    again = step.submit(str(runs), 1)
    assert again.result(WAIT) == 10 and again.cached is not None and calls(str(runs)) == 2
    assert asyncio.run(step(str(runs), 2)) == 20 and calls(str(runs)) == 2  # a direct call hits too
    assert asyncio.run(step(str(runs), 3)) == 30 and calls(str(runs)) == 3
    assert step.submit(str(runs), 3).cached is not None


def test_a_failed_async_task_is_debugged_where_it_raised(engine, capsys):
    fut = nbflow.task(fails).submit(41)
    nbflow.wait([fut], timeout=WAIT)
    assert isinstance(fut.exception(), ValueError)
    capsys.readouterr()
    nbflow.debug(fut, commands=["p x", "p v"])
    out = capsys.readouterr().out
    assert "post-mortem of task 'fails'" in out and "ValueError: async failure" in out
    assert re.search(r"test_async_tasks\.py\(\d+\)fails\(\)", out)
    assert "(Pdb) p x\n42\n" in out and "(Pdb) p v\n41\n" in out
    with pytest.raises(ValueError, match="async failure"):
        fut.replay()  # its coroutine run to its end here

    async def in_a_running_loop():  # as in a kernel, whose thread runs its event loop
        return fut.replay()

    with pytest.raises(ValueError, match="async failure"):
        asyncio.run(in_a_running_loop())


# --- GPUs -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_async_gpu_tasks_hold_distinct_devices_on_the_local_engines(kind, monkeypatch, spot):
    marks, _ = spot
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", DEVICES)
    nbflow.limit("GPU", 4)
    nbflow.use("local", workers=4, processes=kind == "processes")

    async def on_gpu(i):  # (a closure: travels by value to the children)
        await meet(marks, str(i), 4)  # all four at once
        return await whoami(0)

    records = nbflow.gather(nbflow.task(on_gpu, resources={"GPU": 1}).map(range(4)), timeout=WAIT)
    assert sorted(r["ids"] for r in records) == ["3", "5", "6", "7"]
    for r in records:
        assert r["resources"] == {"GPU": 1.0} and len(r["gpus"]) == 1
        if kind == "threads":
            assert r["ids"] == DEVICES.split(",")[r["gpus"][0]] and r["env"] == DEVICES
        else:
            assert r["gpus"] == (0,) and r["env"] == r["ids"]  # the child sees its device only
    direct = asyncio.run(nbflow.task(whoami, resources={"GPU": 2})(0))  # a direct call holds its GPUs too
    assert direct["ids"] == "3,5" and direct["gpus"] == (0, 1)
    wait_for(lambda: used("GPU") == 0, timeout=WAIT, what="the GPUs to be free")


def test_async_gpu_tasks_on_dask_hold_the_workers_devices(request, monkeypatch, spot, tmp_path):
    marks, release = spot
    use_dask(request, monkeypatch)
    third = tmp_path / "third"
    third.mkdir()
    step = nbflow.task(gated, resources={"GPU": 1})
    pair = step.map([marks] * 2, [release] * 2)
    wait_for(lambda: calls(marks) == 2, timeout=WAIT, what="two GPU tasks to run at once")
    waiting = step.submit(str(third), release)
    time.sleep(0.5)
    assert calls(str(third)) == 0  # the worker's GPU=2 is taken
    Path(release).touch()
    nbflow.gather([*pair, waiting], timeout=WAIT)
    assert calls(str(third)) == 1
    who = nbflow.task(whoami, resources={"GPU": 1})
    records = nbflow.gather(who.map([0.3, 0.3]), timeout=WAIT)
    assert sorted(r["ids"] for r in records) == ["3", "5"]  # together, distinct devices
    for r in records:
        assert r["ids"] == DASK_DEVICES.split(",")[r["gpus"][0]] and r["resources"] == {"GPU": 1.0}


# --- task cells with a top-level await ------------------------------------------------------------------------------


@pytest.fixture
def ip():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbflow")
    yield shell
    shell.run_line_magic("nbflow", "wait")


@pytest.mark.parametrize("use", ["local --workers 2", "local --processes --workers 1"])
def test_a_task_cell_with_a_top_level_await(ip, use):
    ip.run_line_magic("nbflow", f"use {use}")
    body = "import asyncio\nx = await asyncio.sleep(0.1, result=5)\ny = x + 1\nawait asyncio.sleep(0, result=y * 2)"
    ip.run_cell_magic("nbflow", "task", body)
    cell = ip.magics_manager.registry["NbflowMagics"].cells.unwaited()[-1]
    ip.run_line_magic("nbflow", "wait")
    assert cell.outcome == "finished", cell.report
    assert (ip.user_ns["x"], ip.user_ns["y"]) == (5, 6) and cell.report["value"]["text/plain"] == "12"


def test_a_task_cell_with_a_top_level_await_in_a_real_kernel(kernel):
    cell = "%%nbflow task\nimport asyncio\nx = await asyncio.sleep(0.1, result=5)\ny = [x, x + 1]"
    assert kernel.run(cell).reply["status"] == "ok"
    assert kernel.run("%nbflow wait").reply["status"] == "ok"
    assert kernel.run("print(x, y)").stream("stdout") == "5 [5, 6]\n"


# --- what a hostile user tried ---------------------------------------------------------------------------------------


async def never_gives_up(marks: str, release: str):
    """Swallows every cancellation and waits again, until the test releases it."""
    mark(marks)
    while not os.path.exists(release):
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
    return "late"


async def holds_the_loop(marks: str, release: str):
    """Never awaits until the test releases it (it blocks its loop: a mistake, whose timeout still fires)."""
    mark(marks)
    deadline = time.monotonic() + WAIT
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "late"


@pytest.mark.parametrize("kind", ["threads", "dask"])
def test_a_timeout_ends_an_attempt_that_swallows_every_cancellation_at_its_deadline(kind, request, monkeypatch, spot):
    marks, release = spot
    if kind == "dask":
        use_dask(request, monkeypatch)
    else:
        nbflow.use("local", workers=2)
    fut = nbflow.task(never_gives_up, timeout=0.5, retries=1).submit(marks, release)
    try:
        with pytest.raises(nbflow.TaskTimeout):
            fut.result(WAIT)  # (before the release: the attempts still run, swallowing their cancellations)
        assert calls(marks) == 2 and not os.path.exists(release)
    finally:
        Path(release).touch()


def test_on_the_local_engine_a_timeout_fires_even_while_the_coroutine_holds_the_loop(spot):
    marks, release = spot
    nbflow.use("local", workers=2)
    fut = nbflow.task(holds_the_loop, timeout=0.5).submit(marks, release)
    try:
        with pytest.raises(nbflow.TaskTimeout):
            fut.result(WAIT)
        assert not os.path.exists(release)  # it failed while the coroutine still held the loop
    finally:
        Path(release).touch()


def sync_awaits_a_future(x):
    async def inner():
        return await nbflow.task(sync_add).submit(x, 1)

    return asyncio.run(inner())


@pytest.mark.parametrize("kind", ["threads", "dask"])
def test_a_sync_task_awaiting_a_future_on_its_own_loop_lends_its_slot(kind, request, monkeypatch):
    if kind == "dask":
        use_dask(request, monkeypatch)  # (one worker thread)
    else:
        nbflow.use("local", workers=1)
    assert nbflow.task(sync_awaits_a_future).submit(5).result(WAIT) == 6


async def blocks_on_result():
    return nbflow.task(double).submit(2).result(WAIT)


def test_result_inside_an_async_task_is_refused_in_one_line(engine):
    fut = nbflow.task(blocks_on_result).submit()
    with pytest.raises(nbflow.NbflowError, match=r"inside an async task would block its event loop.*use await"):
        fut.result(WAIT)


def test_a_slow_retry_predicate_does_not_hold_the_local_loop(spot):
    marks, release = spot
    nbflow.use("local", workers=1)
    ran = threading.Event()

    def slow_no(exc: BaseException) -> bool:
        ran.set()
        Path(release).touch()  # the loop must run other coroutines while this predicate waits
        time.sleep(0.5)
        return False

    waiter = nbflow.task(gated).submit(marks, release, "waited")
    failing = nbflow.task(boom, retries=1, retry_on=slow_no).submit()
    with pytest.raises(KeyError):
        failing.result(WAIT)
    assert ran.is_set() and waiter.result(WAIT) == "waited"


def test_an_async_generator_is_refused_and_an_object_with_an_async_call_is_an_async_task():
    async def pages():
        yield 1

    with pytest.raises(TypeError, match="async generator .* a task returns one value"):
        nbflow.task(pages)

    class Client:
        async def __call__(self, x):
            await asyncio.sleep(0)
            return x * 2

    nbflow.use("local", workers=1)
    client = nbflow.task(Client())
    assert client.is_async and client.name == "Client"
    assert client.submit(3).result(WAIT) == 6


def test_await_task_applies_its_timeout(tmp_path):
    nbflow.use("local", workers=1)

    async def main():
        return await nbflow.task(stubborn, timeout=0.3)(str(tmp_path))

    with pytest.raises(nbflow.TaskTimeout):
        asyncio.run(main())


def test_retry_on_names_in_quotes_and_with_spaces_parse_and_empty_names_are_refused():
    from IPython.core.error import UsageError

    from nbflow.magics import args

    wanted = (ValueError, KeyError)
    assert args.exception_classes(["'ValueError, KeyError'"], {}) == wanted
    assert args.exception_classes(["ValueError,", "KeyError"], {}) == wanted
    for bad in (["''"], ["ValueError,,KeyError"], [","]):
        with pytest.raises(UsageError, match="name one exception class or more"):
            args.exception_classes(bad, {})
