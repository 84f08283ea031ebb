"""Nested pipelines on the local engine: a task submits tasks and waits for them, even with one worker."""

from __future__ import annotations

import threading

import nbflow


@nbflow.task
def square(x):
    return x * x


@nbflow.task
def sum_of_squares(n):
    """One level: submit n tasks from inside a task and gather them."""
    return sum(nbflow.gather(square.map(range(n))))


@nbflow.task
def subflows(sizes):
    """Two levels: each subflow is itself a task that submits tasks."""
    return nbflow.gather([sum_of_squares.submit(n) for n in sizes])


def test_two_levels_deep_on_one_worker():
    nbflow.use("local", workers=1)
    outer = [subflows.submit([1, 2, 3]) for _ in range(3)]
    assert nbflow.gather(outer, timeout=60) == [[0, 1, 5]] * 3
    assert nbflow.occupancy()["tasks"]["finished"] == 3 * (1 + 3 + 6)


def test_waiting_with_wait_and_as_completed_inside_a_task_lends_the_worker():
    nbflow.use("local", workers=1)

    @nbflow.task
    def by_wait(n):
        done, not_done = nbflow.wait(square.map(range(n)))
        return sorted(f.result() for f in done), not_done

    @nbflow.task
    def by_as_completed(n):
        return sorted(f.result() for f in nbflow.as_completed(square.map(range(n))))

    assert by_wait.submit(3).result(60) == ([0, 1, 4], set())
    assert by_as_completed.submit(3).result(60) == [0, 1, 4]


def test_nested_tasks_run_on_the_engine_of_the_outer_task():
    engine = nbflow.use("local", workers=1)
    seen = []

    @nbflow.task
    def inner():
        seen.append(nbflow.engine())
        return threading.current_thread().name

    @nbflow.task
    def outer():
        seen.append(nbflow.engine())
        return inner.submit().result()

    assert outer.submit().result(60).startswith("nbflow-local")
    assert seen == [engine, engine]
