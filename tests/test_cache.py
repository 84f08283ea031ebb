"""Results cached across re-runs, kernels and processes: keys, the store, racing processes, task cells."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from limits_helpers import wait_for

import nbflow
from nbflow import caching
from nbflow.caching.store import size_cap

SCRIPT = '''
import sys
from pathlib import Path

import nbflow

RUNS = Path(sys.argv[1])


def scale(x):
    return x * 10


@nbflow.task(cache=True)
def step(x):
    """Appends to RUNS: a side effect that counts real runs."""
    with RUNS.open("a") as f:
        f.write(f"{x}\\n")
    return scale(x)


if __name__ == "__main__":
    print(nbflow.gather(step.map([int(a) for a in sys.argv[2:]])))
'''


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("NBFLOW_CACHE_DIR", str(path))  # inherited by the processes the tests start
    return path


def run_script(path, runs, *args) -> str:
    done = subprocess.run([sys.executable, str(path), str(runs), *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def runs_of(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_new_process_reuses_results_and_only_what_changed_runs_again(tmp_path):
    script, runs = tmp_path / "pipeline.py", tmp_path / "runs"
    script.write_text(SCRIPT)
    assert run_script(script, runs, 1, 2, 3) == "[10, 20, 30]" and sorted(runs_of(runs)) == ["1", "2", "3"]
    assert run_script(script, runs, 1, 2, 3) == "[10, 20, 30]" and len(runs_of(runs)) == 3  # a fresh process: hits
    assert run_script(script, runs, 1, 2, 4) == "[10, 20, 40]" and runs_of(runs)[3:] == ["4"]  # one argument changed

    script.write_text(SCRIPT.replace('"""Appends', "# a comment\n    \"\"\"Now appends").replace("x * 10", "(x * 10)"))
    assert run_script(script, runs, 1) == "[10]" and len(runs_of(runs)) == 4  # comments, docstring, parentheses

    script.write_text(SCRIPT.replace("x * 10", "x * 100"))  # an edit to the helper the task calls
    assert run_script(script, runs, 1, 2) == "[100, 200]" and sorted(runs_of(runs)[4:]) == ["1", "2"]


def test_numpy_arguments_hit_by_content_and_failures_are_not_stored():
    calls = []

    @nbflow.task(cache=True)
    def total(a):
        calls.append(1)
        if a.sum() < 0:
            raise ValueError("negative")
        return float(a.sum())

    assert total(np.arange(5)) == 10.0 and total(np.arange(5)) == 10.0 and len(calls) == 1  # a new, equal array
    assert total.submit(np.arange(5) + 1).result() == 15.0 and len(calls) == 2
    for _ in range(2):
        with pytest.raises(ValueError):
            total(-np.ones(3))
    assert len(calls) == 4  # the failure ran twice: it was not stored
    hit = total.submit(np.arange(5))
    assert hit.done() and hit.cached.name == "total" and hit.cached.duration >= 0


def test_futures_of_cached_tasks_chain_by_key_without_running():
    calls = []

    @nbflow.task(cache=True)
    def load(i):
        calls.append(("load", i))
        return list(range(i))

    @nbflow.task(cache=True)
    def count(items):
        calls.append(("count", len(items)))
        return len(items)

    first = nbflow.gather([count.submit(load.submit(i)) for i in range(3)])
    again = [count.submit(load.submit(i)) for i in range(3)]
    assert all(f.done() and f.cached is not None for f in again)  # known at submit: nothing ran
    assert nbflow.gather(again) == first == [0, 1, 2] and len(calls) == 6


def test_an_argument_that_cannot_be_hashed_says_which_and_how_to_fix_it():
    @nbflow.task(cache=True)
    def use(lock):
        return 1

    with pytest.raises(nbflow.NbflowError, match=r"cannot hash argument 0 of use\(\) \(lock\).*cache_key="):
        use.submit(threading.Lock())
    keyed = use.with_options(cache_key=lambda lock: "the lock")
    assert keyed(threading.Lock()) == 1 and keyed.submit(threading.Lock()).cached is not None


def plus_one() -> tuple[nbflow.Task, list]:
    """A cached task, and the list of the calls that really ran."""
    calls = []

    @nbflow.task(cache=True)
    def f(x):
        calls.append(x)
        return x + 1

    return f, calls


def test_a_corrupt_entry_is_recomputed_and_replaced_and_expired_ones_too(cache_dir):
    f, calls = plus_one()
    assert f(1) == 2
    [entry] = list(cache_dir.glob("*/*.entry"))
    entry.write_bytes(entry.read_bytes()[:-5])  # cut short
    assert f(1) == 2 and len(calls) == 2
    assert f(1) == 2 and len(calls) == 2  # replaced by a good one
    entry.write_bytes(b"\x00garbage")
    assert f(1) == 2 and len(calls) == 3
    short = f.with_options(cache_expiration=1e-6)
    assert short(1) == 2 and len(calls) == 4  # expired the moment it was stored


RACE = '''
import sys, time
from pathlib import Path

import nbflow


@nbflow.task(cache=True)
def slow(x):
    with open(sys.argv[1], "a") as f:
        f.write("run\\n")
    time.sleep(1)
    return x * 2


if __name__ == "__main__":
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    print(slow(21))
'''


def test_processes_racing_on_one_key_run_it_once(tmp_path):
    script, runs, go = tmp_path / "race.py", tmp_path / "runs", tmp_path / "go"
    script.write_text(RACE)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(runs), str(go)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    go.touch()
    outputs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert outputs == ["42"] * 3
    assert runs_of(runs) == ["run"]  # one of them ran it; the others waited and read the entry


def test_a_killed_run_leaves_no_entry(tmp_path, cache_dir):
    script, runs = tmp_path / "killed.py", tmp_path / "runs"
    script.write_text(RACE.replace("time.sleep(1)", "time.sleep(60)"))
    (tmp_path / "go").touch()
    proc = subprocess.Popen([sys.executable, str(script), str(runs), str(tmp_path / "go")])
    wait_for(lambda: runs_of(runs) == ["run"], timeout=60, what="the task to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert caching.entries() == [] and not list(cache_dir.glob("*/*.entry"))
    script.write_text(RACE.replace("time.sleep(1)", "pass"))
    done = subprocess.run([sys.executable, str(script), str(runs), str(tmp_path / "go")], capture_output=True)
    assert done.stdout.strip() == b"42" and runs_of(runs) == ["run", "run"]  # not blocked by the dead one's lock


def test_ls_and_clear(tmp_path):
    @nbflow.task(cache=True)
    def a(x):
        return x

    @nbflow.task(cache=True)
    def b(x):
        return x

    a(1), a(2), b(1)
    assert sorted(entry.name for entry in caching.entries()) == ["a", "a", "b"]
    listed = subprocess.run([sys.executable, "-m", "nbflow", "cache", "ls"], capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.count("\na ") == 2, listed.stdout
    cleared = subprocess.run([sys.executable, "-m", "nbflow", "cache", "clear", "a"], capture_output=True, text=True)
    assert cleared.stdout.strip() == "deleted 2 cached result(s) of a"
    assert [entry.name for entry in caching.entries()] == ["b"]
    assert caching.clear() == 1 and caching.entries() == []


def test_on_dask_a_hit_never_reaches_the_cluster(tmp_path):
    runs = tmp_path / "runs"

    @nbflow.task(cache=True)
    def square(x):
        with runs.open("a") as f:
            f.write(f"{x}\n")
        return x * x

    nbflow.use("dask", n_workers=1, threads_per_worker=2, processes=False)
    assert nbflow.gather(square.map(range(4))) == [0, 1, 4, 9] and len(runs_of(runs)) == 4  # stored by the worker
    again = square.map(range(4))
    assert all(f.done() and f.cached is not None for f in again) and nbflow.gather(again) == [0, 1, 4, 9]
    assert all(type(f) is nbflow.Future for f in again)  # plain futures: no Dask task was made for them
    assert len(runs_of(runs)) == 4


def test_a_task_cell_with_cache_shows_cached_and_its_output_again_in_a_fresh_kernel(cache_dir, tmp_path):
    from magics_nb.kernel import Kernel

    cell = textwrap.dedent("""\
        %%nbflow task --cache --name table
        rows = [scale(i) for i in range(3)]
        print("computed", rows)
        rows
        """)
    helper = "def scale(v):\n    # a helper defined in the notebook\n    return v * factor\n"
    edited = helper.replace("v * factor", "factor * v")
    for attempt, (code, cached) in enumerate([(helper, False), (helper, True), (edited, False)]):
        kernel = Kernel({"NBFLOW_LIMITS_DIR": str(tmp_path / "limits"), "NBFLOW_CACHE_DIR": str(cache_dir)})
        try:
            assert kernel.run("%load_ext nbflow\nfactor = 2").reply["status"] == "ok"
            assert kernel.run(code).reply["status"] == "ok"
            status, streams, rich = kernel.run(cell).display_ids()
            assert kernel.run("%nbflow wait").reply["status"] == "ok"
            kernel.drain()
            shown = kernel.displays[status]["text/plain"]
            assert ("cached (run of" in shown) == cached, (attempt, shown)  # a fresh kernel; an edited helper
            assert kernel.displays[streams]["text/plain"] == "computed [0, 2, 4]"  # shown again when cached
            assert kernel.displays[rich]["text/plain"] == "[0, 2, 4]"
            assert kernel.run("print(rows)").stream("stdout") == "[0, 2, 4]\n"
        finally:
            kernel.close()
    assert [entry.name for entry in caching.entries()] == ["table", "table"]


def test_pandas_arguments_hit_by_data(tmp_path):
    import pandas as pd

    calls = []

    @nbflow.task(cache=True)
    def mean(frame):
        calls.append(1)
        return float(frame["x"].mean())

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=[10, 20, 30])
    assert mean(frame) == 2.0 and mean(frame.copy()) == 2.0 and len(calls) == 1
    assert mean(frame.set_axis([1, 2, 3])) == 2.0 and len(calls) == 2  # another index: other data


def test_past_the_size_cap_the_least_recently_used_go(monkeypatch):
    @nbflow.task(cache=True)
    def blob(i):
        return b"x" * 10_000

    for i in range(4):
        blob(i)
    blob(0)  # used again: the most recent
    monkeypatch.setenv("NBFLOW_CACHE_SIZE", "25KB")
    caching.store().evict(size_cap())
    kept = {entry.key for entry in caching.entries()}
    assert len(kept) == 2
    assert blob.submit(0).cached is not None and blob.submit(3).cached is not None  # the two most recent


def test_a_store_at_an_fsspec_url_is_shared_the_same_way(tmp_path, monkeypatch):
    url = f"file://{tmp_path}/shared-cache"
    monkeypatch.setenv("NBFLOW_CACHE_DIR", url)
    script, runs = tmp_path / "pipeline.py", tmp_path / "runs"
    script.write_text(SCRIPT)
    assert run_script(script, runs, 1, 2) == "[10, 20]" and run_script(script, runs, 1, 2) == "[10, 20]"
    assert len(runs_of(runs)) == 2  # the second process read what the first stored
    assert sorted(entry.name for entry in caching.entries()) == ["step", "step"]
    assert (tmp_path / "shared-cache").is_dir() and caching.clear("step") == 2 and caching.entries() == []


NOTEBOOK_CLASS = '''
import sys
from pathlib import Path

import nbflow


class Params:
    def __init__(self, rate):
        self.rate = rate


@nbflow.task(cache=True)
def fit(params):
    with open(sys.argv[1], "a") as f:
        f.write("fit\\n")
    return params.rate * 2


if __name__ == "__main__":
    print(fit(Params(float(sys.argv[2]))))
'''


def test_an_instance_of_a_notebook_class_hits_from_a_fresh_process(tmp_path):
    script, runs = tmp_path / "fit.py", tmp_path / "runs"
    script.write_text(NOTEBOOK_CLASS)
    assert run_script(script, runs, 0.5) == "1.0" and run_script(script, runs, 0.5) == "1.0"
    assert run_script(script, runs, 0.25) == "0.5" and runs_of(runs) == ["fit", "fit"]


def slow_square(runs: str, x: int) -> int:
    """Module level, so child processes and Dask workers import it by name; appends to ``runs`` per real run."""
    import time

    with open(runs, "a") as f:
        f.write(f"{x}\n")
    time.sleep(0.5)
    return x * x


@pytest.mark.parametrize("engine", ["processes", "dask"])
def test_child_processes_and_dask_workers_store_and_run_a_key_once_between_them(engine, tmp_path):
    runs = str(tmp_path / "runs")
    if engine == "processes":
        nbflow.use("local", workers=2, processes=True)
    else:
        nbflow.use("dask", n_workers=2, threads_per_worker=1, processes=True)
    square = nbflow.task(slow_square, cache=True)
    twice = [square.submit(runs, 3), square.submit(runs, 3)]  # the same key, on two workers at once
    assert nbflow.gather(twice) == [9, 9] and runs_of(tmp_path / "runs") == ["3"]
    assert square.submit(runs, 3).cached is not None  # stored by the child or worker, read here


def test_a_store_that_cannot_be_written_or_holds_special_files_never_fails_or_hangs_a_task(tmp_path, monkeypatch):
    f, calls = plus_one()
    assert f(1) == 2
    [entry] = list(caching.store().files.listing())
    os.unlink(entry[0])
    os.mkfifo(entry[0])  # a FIFO where the entry was: opening it for reading would block
    assert f(1) == 2 and len(calls) == 2  # read as absent, recomputed...
    assert f(1) == 2 and len(calls) == 2  # ...and replaced by a good entry
    assert [e.name for e in caching.entries()] == ["f"]

    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("NBFLOW_CACHE_DIR", str(blocked))
    g = nbflow.task(lambda x: x * 3, cache=True, name="g")
    with pytest.warns(UserWarning, match="results are not cached: the store .*a-file cannot be used"):
        assert g(2) == 6
    with pytest.warns(UserWarning):
        assert g.submit(2).result(timeout=60) == 6


def test_a_changed_notebook_constant_or_closure_value_recomputes(tmp_path):
    script, runs = tmp_path / "constants.py", tmp_path / "runs"
    source = SCRIPT.replace("return x * 10", "return x * FACTOR")
    source = source.replace("def scale(x):", "FACTOR = 10\n\n\ndef scale(x):")
    script.write_text(source)
    assert run_script(script, runs, 1) == "[10]" and run_script(script, runs, 1) == "[10]" and len(runs_of(runs)) == 1
    script.write_text(source.replace("FACTOR = 10", "FACTOR = 3"))
    assert run_script(script, runs, 1) == "[3]" and len(runs_of(runs)) == 2  # the constant the helper reads changed

    def make(scale, calls):
        @nbflow.task(cache=True, name="scaled")
        def scaled(x, offset=0):
            calls.append(x)
            return x * scale + offset

        return scaled

    calls = []
    assert make(2, calls)(5) == 10 and make(3, calls)(5) == 15 and make(2, calls)(5) == 10
    assert calls == [5, 5]  # the closure's value is in the key
