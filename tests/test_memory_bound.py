"""``max_memory``: a ``processes=True`` task whose process tree passes its bound is killed within a second and fails
with ``OutOfMemory`` (never retried); the kernel, its limits and the next task carry on. Engines that cannot bound a
task's memory refuse the option at submit."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import threading
import time

import pytest
from limits_helpers import wait_for

import nbflow
from nbflow import EngineConfigError, OutOfMemory, ResourceSpecError

BOUND = 200_000_000  # "200MB"
CHUNK = 20_000_000
CHUNKS = 100  # 2 GB in all, if nothing stopped it


def own_rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def allocate(log: str) -> int:
    """Run in a child: allocate 2 GB in 20 MB chunks that touch their pages; before each chunk, log the time and the
    process's RSS (the bound is crossed after the last logged line below it)."""
    chunks = []
    with open(log, "w") as out:
        for _ in range(CHUNKS):
            out.write(f"{time.monotonic()} {own_rss()}\n")
            out.flush()
            chunks.append(b"x" * CHUNK)
    return len(chunks)


def last_time_below(log: str, bound: int) -> float:
    """The time of the last logged RSS at or below ``bound``: the crossing came after it (CLOCK_MONOTONIC is one
    clock for every process on Linux)."""
    lines = [line.split() for line in open(log).read().splitlines()]
    below = [float(t) for t, rss in lines if int(rss) <= bound]
    assert below and len(lines) < CHUNKS, f"the task was not stopped while it allocated: {lines[-3:]}"
    return below[-1]


def plain(x: int) -> int:
    return x + 1


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nbflow-memory-watch"]


def test_twenty_runaway_tasks_each_fail_with_out_of_memory_within_a_second_of_crossing_the_bound(tmp_path):
    nbflow.use("local", workers=1, processes=True)
    nbflow.limit("slot", 1)
    hog = nbflow.task(name="hog", max_memory="200MB", limits={"slot": 1}, retries=2)(allocate)
    then = nbflow.task(limits={"slot": 1})(plain)
    lags = []
    for i in range(20):
        log = str(tmp_path / f"{i}.log")
        failed_at: list[float] = []
        fut = hog.submit(log)
        fut.add_done_callback(lambda _, at=failed_at: at.append(time.monotonic()))
        exc = fut.exception(60)
        assert isinstance(exc, OutOfMemory), repr(exc)
        lags.append(failed_at[0] - last_time_below(log, BOUND))
        assert exc.bound == BOUND and exc.peak > BOUND
        assert str(exc).startswith("task 'hog' used ") and "over its max_memory of 200 MB" in str(exc)
        assert fut.attempt == 0  # retries=2, yet not retried
        assert [lim.used for lim in nbflow.limits() if lim.name == "slot"] == [0]  # released before the failure
        assert then.submit(i).result(60) == i + 1  # a fresh child runs the next task
    assert max(lags) < 1.0, f"seconds from crossing the bound to the failure: {sorted(lags)}"
    wait_for(lambda: not watch_threads(), 30, "the watch thread to end once nothing is bounded")


def spawn_allocating_grandchild(pid_file: str) -> int:
    """Run in a child: start a grandchild that allocates 2 GB gradually, and wait for it."""
    code = (
        "import os, sys, time\n"
        f"open({pid_file!r}, 'w').write(str(os.getpid()))\n"
        f"chunks = [b'x' * {CHUNK} for _ in range({CHUNKS})]\n"
        "time.sleep(600)\n"
    )
    return subprocess.run([sys.executable, "-c", code]).returncode


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie whose parent is gone counts: it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_memory_of_the_childs_own_children_counts_and_they_are_killed_too(tmp_path):
    nbflow.use("local", workers=1, processes=True)
    pid_file = tmp_path / "grandchild.pid"
    task = nbflow.task(name="parent", max_memory="200MB")(spawn_allocating_grandchild)
    exc = task.submit(str(pid_file)).exception(60)
    assert isinstance(exc, OutOfMemory), repr(exc)
    assert exc.peak > BOUND and str(exc).startswith("task 'parent' used ")
    grandchild = int(pid_file.read_text())
    wait_for(lambda: gone(grandchild), 30, "the grandchild to be killed")


def test_a_task_within_its_bound_returns_its_value():
    nbflow.use("local", workers=1, processes=True)
    task = nbflow.task(max_memory="1GB")(plain)
    assert nbflow.gather(task.map(range(3)), timeout=60) == [1, 2, 3]


def test_tasks_without_a_bound_never_import_or_start_the_watch():
    script = (
        "import sys, threading, nbflow\n"
        "def plain(x):\n    return x + 1\n"
        "if __name__ == '__main__':\n"
        "    nbflow.use('local', workers=1, processes=True)\n"
        "    assert nbflow.task(plain).submit(1).result(60) == 2\n"
        "    print('nbflow.engines.memory_watch' in sys.modules,"
        " any(t.name == 'nbflow-memory-watch' for t in threading.enumerate()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "False False\n"


def test_threads_refuse_max_memory_at_submit_in_one_line():
    nbflow.use("local", workers=2)
    task = nbflow.task(name="hog", max_memory="2GB")(plain)
    with pytest.raises(EngineConfigError) as info:
        task.submit(1)
    assert str(info.value) == (
        "task 'hog' has max_memory, which needs processes=True: a thread's memory cannot be bounded;"
        " use nbflow.use('local', processes=True)"
    )
    assert nbflow.engine().task_counts()["pending"] == 0  # nothing was submitted


def test_dask_refuses_max_memory_at_submit_and_points_at_the_nanny():
    nbflow.use("dask", n_workers=1, threads_per_worker=1, processes=False)
    with pytest.raises(EngineConfigError) as info:
        nbflow.task(name="hog", max_memory="2GB")(plain).submit(1)
    message = str(info.value)
    assert "\n" not in message and message.startswith("task 'hog' has max_memory")
    assert "dask worker --memory-limit" in message and "WorkerDied" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("200MB", 200_000_000), ("2GB", 2_000_000_000), ("1.5 GiB", 1_610_612_736), (" 2 gb ", 2_000_000_000),
     (2_000_000_000, 2_000_000_000), (2e9, 2_000_000_000), ("4096", 4096)],
)  # fmt: skip
def test_max_memory_takes_bytes_or_a_size_with_a_unit(value, expected):
    task = nbflow.task(max_memory=value)(plain)
    assert task.options.max_memory == expected
    assert pickle.loads(pickle.dumps(task.options)) == task.options
    cached = task.with_options(cache=True).options
    assert pickle.loads(pickle.dumps(cached)) == cached


@pytest.mark.parametrize("value", [True, math.nan, math.inf, 0, -5, 0.5, 10**400, 2e15, "lots", "5 minutes", "2XB",
                                   "1e400GB", ".GB", [2]])  # fmt: skip
def test_a_bad_max_memory_is_one_line_naming_the_option(value):
    for declare in (
        lambda: nbflow.task(max_memory=value)(plain),
        lambda: nbflow.task(plain).with_options(max_memory=value),
    ):
        with pytest.raises(ResourceSpecError) as info:
            declare()
        message = str(info.value)
        assert "\n" not in message and message.startswith("max_memory must be a number of bytes")
        assert "'200MB', '2GB' or '1.5 GiB'" in message


def test_a_task_cell_with_max_memory_fails_with_out_of_memory_and_the_kernel_carries_on(kernel):
    assert kernel.run("%nbflow use local --processes --workers 1").reply["status"] == "ok"
    ex = kernel.run(
        f"%%nbflow task --max-memory 200MB --block --name hog\nchunks = [b'x' * {CHUNK} for _ in range({CHUNKS})]"
    )
    assert ex.reply["status"] == "error" and ex.reply["ename"] == "OutOfMemory", ex.reply
    assert ex.reply["evalue"].startswith("task 'hog' used ") and "over its max_memory of 200 MB" in ex.reply["evalue"]
    after = kernel.run("%%nbflow task --block --name after\nvalue = 6 * 7\nprint(value)")
    assert after.reply["status"] == "ok" and after.stream("stdout") == "42\n"
    bad = kernel.run("%%nbflow task --max-memory lots\nx = 1")
    assert bad.reply["ename"] == "UsageError"
    assert "--max-memory: must be a number of bytes" in bad.reply["evalue"] and "\n" not in bad.reply["evalue"]


def allocate_slowly() -> int:
    """Run on a Dask worker: allocate 2 GB in 20 MB chunks, slowly enough for the nanny's memory monitor."""
    chunks = []
    for _ in range(CHUNKS):
        chunks.append(b"x" * CHUNK)
        time.sleep(0.05)
    return len(chunks)


def test_a_dask_task_whose_worker_its_nanny_kills_fails_with_worker_died_naming_the_reason(tmp_path):
    from _dask_procs import DASK, DaskProcs, wait_until

    procs = DaskProcs(tmp_path / "dask")
    try:
        argv = [DASK, "worker", procs.address, "--name", "capped", "--nthreads", "1", "--no-dashboard"]
        procs._start("capped", argv + ["--host", "127.0.0.1", "--memory-limit", "300MB"])
        wait_until(lambda: "capped" in procs.worker_names(), what="the nanny's worker to join")
        nbflow.use("dask", address=procs.address)
        exc = nbflow.task(name="hog")(allocate_slowly).submit().exception(120)
        assert isinstance(exc, nbflow.WorkerDied), repr(exc)
        assert "task 'hog': the Dask worker running it died" in str(exc), str(exc)
        assert "its nanny restarted it for using" in str(exc) and "past its --memory-limit" in str(exc), str(exc)
    finally:
        procs.close()
