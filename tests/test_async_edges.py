"""Async tasks at their edges: mistakes nbflow catches, caching, debugging, GPUs, task cells with a top-level
``await``, and what a hostile user tried (coroutines that swallow their cancellation or hold the loop, blocking
waits inside them, slow retry predicates). The shared task bodies and fixtures are ``test_async_tasks``'s."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path

import pytest
from limits_helpers import wait_for
from test_async_tasks import (  # noqa: F401 (fixtures: pytest finds them here by name)
    DASK_DEVICES,
    DEVICES,
    WAIT,
    boom,
    calls,
    computed,
    dask_cluster,
    double,
    engine,
    fails,
    gated,
    mark,
    meet,
    returns_coroutine,
    spot,
    stubborn,
    sync_add,
    use_dask,
    used,
    whoami,
)

import nbflow

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
