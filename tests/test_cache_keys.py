"""Cache keys that never give a wrong hit, and no late stores from an attempt that has ended."""

from __future__ import annotations

import functools
import operator
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest
from limits_helpers import wait_for

import nbflow
from nbflow import caching


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("NBFLOW_CACHE_DIR", str(path))  # inherited by the processes and kernels the tests start
    return path


# --- functions, closures, methods and subclass instances as arguments (a plain script: its __main__) ------------

VALUES = """
import functools
import threading

import nbflow


@nbflow.task(cache=True)
def apply(fn, v):
    return fn(v)


@nbflow.task(cache=True)
def double(m):
    return m * 2


ops = [lambda v: v + 1, lambda v: v * 2]


def adder(n):
    def add(v):
        return v + n

    return add


class Model:
    def __init__(self, w):
        self.w = w

    def predict(self, v):
        return v * self.w


class Meters(float):
    pass


class Count(int):
    pass


class Label(str):
    pass


def scaled(v, factor=2):
    return v * factor


def with_default(factor):
    def f(v, factor=factor):
        return v * factor

    return f


def times(n):
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(v):
            return fn(v) * n

        return wrapper

    return decorate


def same(v):
    return v


def locked(lock):
    def f(v):
        with lock:
            return v

    return f


print([
    apply(ops[0], 10), apply(ops[1], 10),
    apply(adder(1), 10), apply(adder(100), 10),
    apply(Model(1).predict, 10), apply(Model(5).predict, 10),
    apply(with_default(3), 10), apply(with_default(4), 10),
    double(Meters(1.5)), double(Meters(2.5)),
    double(Count(1)), double(Count(2)),
    double(Label("a")), double(Label("b")),
    apply(times(2)(same), 10), apply(times(3)(same), 10),
    apply(functools.partial(scaled, factor=3), 10), apply(functools.partial(scaled, factor=4), 10),
])
again = [apply(ops[1], 10), apply(adder(100), 10), apply(Model(5).predict, 10), double(Meters(2.5))]
print(again, all(f.cached is not None for f in [apply.submit(ops[1], 10), double.submit(Meters(2.5))]))
try:
    apply(locked(threading.Lock()), 1)
except nbflow.NbflowError as exc:
    print(exc)
"""


def test_functions_closures_methods_and_subclass_instances_count_by_what_they_are(tmp_path):
    script = tmp_path / "values.py"
    script.write_text(VALUES)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3, done.stdout  # (the error below is one line)
    first, again, error = lines
    assert first == "[11, 20, 11, 110, 10, 50, 30, 40, 3.0, 5.0, 2, 4, 'aa', 'bb', 20, 30, 30, 40]"
    assert again == "[20, 110, 50, 5.0] True"  # equal values still hit
    # a closure over something nbflow cannot hash: not a guess, the one-line error
    assert error.startswith("cannot hash argument 0 of apply()") and "cache_key=" in error, error


def test_a_callable_object_or_a_partial_as_the_task_counts_by_its_value_at_each_call():
    class Scale:
        def __init__(self, w):
            self.w = w

        def __call__(self, v):
            return v * self.w

    scale = Scale(2)
    task = nbflow.task(scale, cache=True, name="scale")
    assert task(10) == 20
    scale.w = 5  # the task's function changed after its first call
    assert task(10) == 50
    by3 = nbflow.task(functools.partial(operator.mul, 3), cache=True, name="times")
    by4 = nbflow.task(functools.partial(operator.mul, 4), cache=True, name="times")
    assert by3(10) == 30 and by4(10) == 40


def test_a_repeated_object_counts_by_which_one_it_repeats():
    calls = []

    @nbflow.task(cache=True)
    def echo(x):
        calls.append(x)
        return x

    a, b = [1], [2]
    assert echo([a, b, a]) == [[1], [2], [1]]
    assert echo([a, b, b]) == [[1], [2], [2]] and len(calls) == 2  # not "the one seen before", whichever it was


def test_a_function_argument_counts_by_the_constants_and_helpers_it_reads():
    calls = []

    @nbflow.task(cache=True)
    def apply(fn, v):
        calls.append(v)
        return fn(v)

    namespace = {"__name__": "__main__", "LIMIT": 0.5}
    exec("def helper(v):\n    return inner(v) * LIMIT\n\ndef inner(v):\n    return v + 1\n", namespace)
    helper = namespace["helper"]
    assert isinstance(helper, types.FunctionType) and apply(helper, 1) == 1.0
    namespace["LIMIT"] = 0.9  # a constant the function reads
    assert apply(helper, 1) == pytest.approx(1.8)
    exec("def inner(v):\n    return v + 2\n", namespace)  # a helper it calls, redefined
    assert apply(helper, 1) == pytest.approx(2.7)
    assert apply(helper, 1) == pytest.approx(2.7) and len(calls) == 3


def test_a_dicts_order_and_a_structured_arrays_fields_count():
    np = pytest.importorskip("numpy")

    @nbflow.task(cache=True)
    def keys(d):
        return list(d)

    @nbflow.task(cache=True)
    def fields(a):
        return a.dtype.names, [a.dtype.fields[name][1] for name in a.dtype.names]

    assert keys({"a": 1, "b": 2}) == ["a", "b"] and keys({"b": 2, "a": 1}) == ["b", "a"]
    assert fields(np.zeros(2, dtype=[("a", "i4"), ("b", "i4")]))[0] == ("a", "b")
    assert fields(np.zeros(2, dtype=[("x", "i4"), ("y", "i4")]))[0] == ("x", "y")  # the same bytes, other names
    packed = np.zeros(2, dtype={"names": ["a"], "formats": ["i4"], "offsets": [0], "itemsize": 8})
    shifted = np.zeros(2, dtype={"names": ["a"], "formats": ["i4"], "offsets": [4], "itemsize": 8})
    assert fields(packed)[1] == [0] and fields(shifted)[1] == [4]


def test_immutable_values_a_task_reads_count_like_scalars():
    import datetime
    import decimal
    import enum
    import fractions
    import pathlib

    class Mode(enum.Enum):
        TRAIN = 1
        EVAL = 2

    calls = []
    namespace = {"__name__": "__main__", "calls": calls, "nbflow": nbflow}  # a notebook's globals
    exec(
        "@nbflow.task(cache=True)\n"
        "def setting(i):\n"
        "    calls.append(i)\n"
        "    return MODE.name, str(RATE), START.year, str(ROOT), float(SHARE)\n",
        namespace,
    )
    setting = namespace["setting"]
    namespace.update(MODE=Mode.TRAIN, RATE=decimal.Decimal("0.10"), START=datetime.date(2020, 1, 1))
    namespace.update(ROOT=pathlib.Path("/data/a"), SHARE=fractions.Fraction(1, 2))
    assert setting(1) == ("TRAIN", "0.10", 2020, "/data/a", 0.5)
    changes = {
        "MODE": Mode.EVAL,
        "RATE": decimal.Decimal("0.25"),
        "START": datetime.date(2024, 1, 1),
        "ROOT": pathlib.Path("/data/b"),
        "SHARE": fractions.Fraction(1, 4),
    }
    for n, (name, value) in enumerate(changes.items(), start=2):
        namespace[name] = value
        setting(1)
        assert len(calls) == n, f"changing {name} did not recompute"
    assert setting(1) == ("EVAL", "0.25", 2024, "/data/b", 0.25) and len(calls) == 1 + len(changes)


# --- in a real kernel: notebook classes, redefined helpers, task cells ------------------------------------------


def run_in(kernel, code: str) -> str:
    """Run ``code`` (dedented) in ``kernel``; what it printed."""
    done = kernel.run(textwrap.dedent(code))
    assert done.reply["status"] == "ok", (code, done.reply, done.stream("stderr"))
    return done.stream("stdout").strip()


def test_in_a_kernel_an_edited_class_and_a_redefined_helper_recompute(kernel):
    run_in(
        kernel,
        """
        import nbflow

        class Scaler:
            def apply(self, v):
                return v * 2

        @nbflow.task(cache=True)
        def through(s, v):
            return s.apply(v)

        @nbflow.task(cache=True)
        def makes(v):
            return Scaler().apply(v)

        def helper(v):
            return v + 1

        @nbflow.task(cache=True)
        def calls(v):
            return helper(v)
    """,
    )
    assert run_in(kernel, "print(through(Scaler(), 3), makes(3), calls(3))") == "6 6 4"
    run_in(
        kernel,
        """
        class Scaler:
            def apply(self, v):
                return v * 3

        def helper(v):
            return v + 100
    """,
    )  # the tasks are not defined again: their helpers changed under them
    assert run_in(kernel, "print(through(Scaler(), 3), makes(3), calls(3))") == "9 9 103"
    assert run_in(kernel, "print(through.submit(Scaler(), 3).cached is not None)") == "True"


def test_in_a_kernel_a_task_cell_counts_the_constants_its_helpers_read(kernel):
    run_in(
        kernel,
        """
        import nbflow

        THRESHOLD = 0.5

        def score():
            return THRESHOLD * 10
    """,
    )
    cell = "%%nbflow task --cache --block --name scored\nresult = score()\n"
    run_in(kernel, cell)
    assert run_in(kernel, "print(result)") == "5.0"
    run_in(kernel, "THRESHOLD = 0.9")
    run_in(kernel, cell)
    assert run_in(kernel, "print(result)") == "9.0"  # the constant the helper reads is part of the cell's key
    assert run_in(kernel, "print(nbflow.task(score, cache=True)())") == "9.0"  # as for a cached function


# --- no late stores -------------------------------------------------------------------------------------------


def test_an_attempt_that_times_out_waiting_for_the_keys_lock_runs_and_stores_nothing():
    entered, go = threading.Event(), threading.Event()
    calls = []

    @nbflow.task(cache=True)
    def slow(x):
        calls.append(x)
        entered.set()
        go.wait(60)
        if len(calls) == 1:
            raise ValueError("the first run fails: it stores nothing, so one waiting for the lock would compute")
        return x * 2

    holder = threading.Thread(target=lambda: pytest.raises(ValueError, slow, 1), daemon=True)
    holder.start()  # a direct call: it holds the key's lock while it waits for ``go``
    assert entered.wait(60)
    nbflow.use("local")
    nbflow.limit("ATTEMPT", 1)  # held by the late attempt until its thread has really returned
    late = slow.with_options(timeout=0.2, resources={"ATTEMPT": 1}).submit(1)  # the same key: waits for the lock
    with pytest.raises(nbflow.TaskTimeout):
        late.result(timeout=60)
    go.set()
    holder.join(60)
    wait_for(lambda: _used("ATTEMPT") == 0, timeout=60, what="the timed-out attempt's thread to return")
    assert calls == [1]  # it got the lock after its deadline: it ran nothing
    assert caching.entries() == []
    assert slow(1) == 2 and calls == [1, 1]  # and a later call computes it


def _used(name: str) -> float:
    return next(status.used for status in nbflow.limits() if status.name == name)


def test_an_attempt_that_times_out_while_it_computes_stores_nothing():
    entered, go = threading.Event(), threading.Event()
    calls = []

    @nbflow.task(cache=True, timeout=0.2)
    def stuck(x):
        calls.append(x)
        entered.set()
        go.wait(60)
        return x

    nbflow.use("local")
    late = stuck.submit(1)
    with pytest.raises(nbflow.TaskTimeout):
        late.result(timeout=60)
    go.set()
    with caching.store().computing(late.cache_key):
        pass
    assert caching.entries() == [] and stuck.with_options(timeout=None)(1) == 1 and len(calls) == 2


def deadline_of_the_attempt() -> float | None:
    """Module level, so child processes and Dask workers import it by name."""
    return nbflow.current().deadline


@pytest.mark.parametrize("engine", ["threads", "processes", "dask"])
def test_an_attempt_knows_its_deadline_on_every_engine(engine):
    if engine == "dask":
        nbflow.use("dask", n_workers=1, threads_per_worker=1, processes=False)
    else:
        nbflow.use("local", processes=engine == "processes")
    before = time.monotonic()
    deadline = nbflow.task(deadline_of_the_attempt, timeout=600).submit().result(timeout=120)
    assert before + 600 <= deadline <= time.monotonic() + 600  # (one clock for every process of the machine)
    assert nbflow.task(deadline_of_the_attempt).submit().result(timeout=120) is None
