"""Retry policies: ``retry_delay`` as seconds, a list of them or ``nbflow.backoff(...)``; ``retry_on`` as a class, a
tuple or a predicate; an exception's ``retry_after``; bad values refused at declaration; the magics' options.

The delays are asserted where they are decided (``attempt.retry_delay``, deterministic), and end to end only as
lower bounds on the gaps between attempts (a busy CI box may add to a delay, never take from it).
"""

from __future__ import annotations

import math
import os
import pickle
import random
import threading
from pathlib import Path

import cloudpickle
import pytest
from IPython.core.error import UsageError
from test_conformance import ENGINES, calls, flaky, hold, mark

import nbflow
from nbflow.engines.attempt import next_delay, retry_delay
from nbflow.errors import OutOfMemory
from nbflow.magics import args
from nbflow.options import TaskOptions
from nbflow.retry_policy import Backoff

# --- task bodies and exceptions (module level: they run the same in a thread, a child process or on Dask) -----


class Throttled(Exception):
    """What an API client raises for a 429: ``retry_after`` seconds, as the server's ``Retry-After`` says."""

    def __init__(self, message: str, retry_after: object) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self):
        return (Throttled, (str(self), self.retry_after))


def throttled(directory: str, fails: int, retry_after: float):
    """Fail the first ``fails`` attempts with ``Throttled(retry_after)``, then return how many ran."""
    mark(directory)
    attempts = calls(directory)
    if attempts <= fails:
        raise Throttled(f"attempt {attempts}: slow down", retry_after)
    return attempts


def only_first_attempt(exc: BaseException) -> bool:
    return "attempt 1 " in str(exc)


def broken_predicate(exc: BaseException) -> bool:
    raise RuntimeError("the predicate broke")


def starts(directory: str) -> list[float]:
    """The times the attempts recorded (``mark``), in order."""
    return sorted(float(Path(directory, name).read_text()) for name in os.listdir(directory))


def gaps(directory: str) -> list[float]:
    times = starts(directory)
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def options(**kwargs) -> TaskOptions:
    return TaskOptions(name="t", **kwargs)


def decided(opts: TaskOptions, exc: BaseException, attempts: int) -> list[float | None]:
    """What ``retry_delay`` decides after each of the first ``attempts`` attempts fails with ``exc``."""
    return [retry_delay(exc, number, opts) for number in range(attempts)]


TOLERANCE = 0.02  # the clocks of two processes read the same time, to about this


@pytest.fixture(params=list(ENGINES))
def engine(request):
    """A new engine of each kind ``tests/test_conformance.py`` runs against: threads, processes, Dask."""
    return ENGINES[request.param](4)


@pytest.fixture
def spot(tmp_path):
    """A fresh directory for marks, and a release file path."""
    marks = tmp_path / "marks"
    marks.mkdir()
    return str(marks), str(tmp_path / "release")


# --- the deciding function: delays -------------------------------------------------------------------------


def test_a_number_is_the_delay_before_every_retry_and_none_once_retries_are_spent():
    assert decided(options(retries=3, retry_delay="2s"), OSError(), 4) == [2.0, 2.0, 2.0, None]
    assert decided(options(), OSError(), 1) == [None]  # no retries: as before


def test_a_list_gives_the_delay_before_each_retry_and_its_last_repeats():
    opts = options(retries=5, retry_delay=[0.5, "1s", 3])
    assert opts.retry_delay == (0.5, 1.0, 3.0)
    assert decided(opts, ValueError(), 6) == [0.5, 1.0, 3.0, 3.0, 3.0, None]
    assert decided(options(retries=2, retry_delay=(7,)), ValueError(), 3) == [7.0, 7.0, None]


def test_a_backoff_grows_by_its_factor_up_to_its_max():
    no_jitter = nbflow.backoff(base=1, factor=2, max=5, jitter=0)
    assert decided(options(retries=6, retry_delay=no_jitter), OSError(), 6) == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert no_jitter.delay(10_000) == 5.0  # factor ** n past the float range: still the max
    assert nbflow.backoff(base=0, factor=3, jitter=0.5).delay(50) == 0.0
    assert nbflow.backoff(base=2, factor=1, jitter=0).delay(9) == 2.0
    assert nbflow.backoff(base=1e7, max=1e7, jitter=1).delay(3) <= 1e7  # never past the longest delay


def test_jitter_stays_within_its_fraction_of_the_delay_and_varies():
    policy = nbflow.backoff(base=1, factor=2, max=8, jitter=0.25)
    rng = random.Random(1)
    for retry, plain in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        drawn = [policy.delay(retry, rng) for _ in range(500)]
        assert all(plain * 0.75 <= d <= plain * 1.25 for d in drawn), (retry, min(drawn), max(drawn))
        assert max(drawn) - min(drawn) > plain * 0.3  # spread over the range, not one value
    full = nbflow.backoff(base=1, jitter=1)
    assert all(0.0 <= full.delay(1) <= 2.0 for _ in range(500))  # never below 0
    assert all(0.9 <= d <= 1.1 for d in decided(options(retries=50, retry_delay=nbflow.backoff()), OSError(), 1))


def test_backoff_is_a_small_frozen_picklable_value_with_a_readable_repr():
    policy = nbflow.backoff(base="500ms", factor=3, max="1m", jitter=0.2)
    assert repr(policy) == "backoff(base=0.5, factor=3.0, max=60.0, jitter=0.2)"
    assert repr(nbflow.backoff()) == "backoff(base=1.0, factor=2.0, max=60.0, jitter=0.1)"
    assert pickle.loads(pickle.dumps(policy)) == policy == nbflow.backoff(0.5, 3, 60, 0.2)
    assert hash(policy) == hash(nbflow.backoff(0.5, 3, 60, 0.2))
    with pytest.raises(AttributeError):
        policy.base = 2  # type: ignore[misc]


# --- the deciding function: which failures, retry_after ---------------------------------------------------


def test_retry_on_a_class_a_tuple_or_a_predicate_decides_which_failures_are_retried():
    by_class = options(retries=1, retry_on=OSError)
    assert retry_delay(FileNotFoundError(), 0, by_class) == 0.0  # a subclass matches
    assert retry_delay(ValueError(), 0, by_class) is None
    by_tuple = options(retries=1, retry_on=[KeyError, OSError])
    assert by_tuple.retry_on == (KeyError, OSError)
    assert retry_delay(KeyError(), 0, by_tuple) == retry_delay(OSError(), 0, by_tuple) == 0.0
    assert retry_delay(ValueError(), 0, by_tuple) is None
    by_predicate = options(retries=1, retry_delay=3, retry_on=lambda exc: "transient" in str(exc))
    assert retry_delay(RuntimeError("transient glitch"), 0, by_predicate) == 3.0
    assert retry_delay(RuntimeError("bad input"), 0, by_predicate) is None


def test_a_timeout_and_a_lost_worker_match_as_exceptions():
    opts = options(retries=1, retry_on=nbflow.TaskTimeout)
    assert retry_delay(nbflow.TaskTimeout("task 't' ran longer than its timeout"), 0, opts) == 0.0
    assert retry_delay(ValueError(), 0, opts) is None
    timeout = nbflow.TaskTimeout("task 't' ran longer than its timeout")  # a TimeoutError, so an OSError too
    assert retry_delay(timeout, 0, options(retries=1, retry_on=OSError)) == 0.0
    died = options(retries=1, retry_on=(nbflow.WorkerDied, nbflow.TaskTimeout))
    assert retry_delay(nbflow.WorkerDied("the child died"), 0, died) == 0.0
    assert retry_delay(nbflow.WorkerDied("the child died"), 0, options(retries=1)) == 0.0  # the default retries it


def test_what_was_never_retried_still_is_not_and_the_predicate_is_not_asked():
    asked = []

    def anything(exc):
        asked.append(exc)
        return True

    opts = options(retries=3, retry_on=anything)
    for never in (KeyboardInterrupt(), SystemExit(1), nbflow.TaskStopped("stopped"), OutOfMemory("too big", 1, 2)):
        assert retry_delay(never, 0, opts) is None
    assert retry_delay(ValueError(), 3, opts) is None  # retries spent
    assert asked == []
    assert retry_delay(ValueError(), 2, opts) == 0.0 and len(asked) == 1


def test_a_predicate_that_raises_propagates_its_error_caused_by_the_tasks():
    task_error = ValueError("the task's")
    with pytest.raises(RuntimeError, match="the predicate broke") as info:
        retry_delay(task_error, 0, options(retries=2, retry_on=broken_predicate))
    assert info.value.__cause__ is task_error


class _Bad(Exception):
    @property
    def retry_after(self):
        raise AttributeError("no header")


@pytest.mark.parametrize(
    ("asked", "delay"),
    [(0, 0.0), (0.2, 0.2), (7, 7.0), ("5", 9.0), (-1, 9.0), (math.nan, 9.0), (math.inf, 9.0), (True, 9.0)]
    + [(None, 9.0), (10**400, 9.0), (object(), 9.0)],
)
def test_retry_after_replaces_the_policys_delay_when_it_is_seconds(asked, delay):
    assert retry_delay(Throttled("429", asked), 0, options(retries=1, retry_delay=[9, 9])) == delay


def test_retry_after_is_capped_by_a_backoff_max_and_ignored_when_it_cannot_be_read():
    policy = nbflow.backoff(base=1, max=30, jitter=0)
    assert next_delay(Throttled("429", 120), 1, policy) == 30.0
    assert next_delay(Throttled("429", 0.2), 4, policy) == 0.2  # below the max: as asked, no jitter
    assert next_delay(Throttled("429", 1e12), 1, 5.0) == 1e7  # (a plain delay: at most the longest delay)
    assert next_delay(_Bad(), 2, policy) == 2.0
    assert next_delay(Throttled("429", 120), 1, (1.0, 2.0)) == 120.0


# --- declaration -----------------------------------------------------------------------------------------------


BAD = [
    ({"retry_delay": []}, "retry_delay must not be an empty list"),
    ({"retry_delay": ()}, "retry_delay must not be an empty list"),
    ({"retry_delay": [1, -1]}, "retry_delay[1] must be seconds >= 0"),
    ({"retry_delay": [1, math.nan]}, "retry_delay[1] must be seconds >= 0"),
    ({"retry_delay": [math.inf]}, "retry_delay[0] must be seconds >= 0"),
    ({"retry_delay": ["1kB"]}, "retry_delay[0] must be seconds >= 0"),
    ({"retry_delay": -1}, "retry_delay must be seconds >= 0"),
    ({"retry_delay": {1: 2}}, "retry_delay must be seconds (a number, or a duration such as '90s'), a list of them"),
    ({"retry_on": 42}, "retry_on must be an exception class, a tuple of them, or a function exc -> bool, got 42"),
    ({"retry_on": "ValueError"}, "retry_on must be an exception class"),
    ({"retry_on": (ValueError, "KeyError")}, "retry_on[1] must be an exception class, got 'KeyError'"),
    ({"retry_on": (ValueError, int)}, "retry_on[1] must be an exception class, got <class 'int'>"),
    ({"retry_on": ()}, "retry_on=() would retry nothing"),
    ({"retry_on": int}, "retry_on must be an exception class, got <class 'int'>"),
    ({"retry_on": KeyboardInterrupt}, "retry_on: KeyboardInterrupt is not an Exception, and is never retried"),
    ({"retry_on": (ValueError, OutOfMemory)}, "retry_on[1]: OutOfMemory is never retried"),
]


@pytest.mark.parametrize(("given", "message"), BAD, ids=[repr(given)[:40] for given, _ in BAD])
def test_bad_retry_options_are_one_line_at_declaration(given, message):
    for declare in (
        lambda: nbflow.task(retries=1, **given)(abs),
        lambda: nbflow.task(abs).with_options(**given),
        lambda: TaskOptions(name="t", **given),
    ):
        with pytest.raises(nbflow.ResourceSpecError) as info:
            declare()
        assert "\n" not in str(info.value) and str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"base": -1}, "backoff base must be seconds >= 0"),
        ({"base": math.nan}, "backoff base must be seconds >= 0"),
        ({"max": "1kB"}, "backoff max must be seconds >= 0"),
        ({"max": math.inf}, "backoff max must be seconds >= 0"),
        ({"base": 10, "max": 5}, "backoff max (5 s) must be at least its base (10 s)"),
        ({"factor": 0.5}, "backoff factor must be a finite number >= 1, got 0.5"),
        ({"factor": math.inf}, "backoff factor must be a finite number >= 1, got inf"),
        ({"factor": "2"}, "backoff factor must be a finite number >= 1, got '2'"),
        ({"jitter": -0.1}, "backoff jitter must be a fraction from 0 to 1, got -0.1"),
        ({"jitter": 1.5}, "backoff jitter must be a fraction from 0 to 1, got 1.5"),
        ({"jitter": math.nan}, "backoff jitter must be a fraction from 0 to 1, got nan"),
    ],
)
def test_bad_backoff_arguments_are_one_line(given, message):
    with pytest.raises(nbflow.ResourceSpecError) as info:
        nbflow.backoff(**given)
    assert "\n" not in str(info.value) and str(info.value).startswith(message), str(info.value)


def test_options_pickle_their_retry_policy_compactly():
    plain = nbflow.task(abs).options
    assert len(plain.__reduce__()[1]) == 6  # the common case: as compact as before
    policy = nbflow.task(retries=2, retry_delay=nbflow.backoff(max=9), retry_on=(OSError, KeyError))(abs).options
    assert pickle.loads(pickle.dumps(policy)) == policy
    for retry_on in (OSError, (OSError, Throttled), lambda exc: "glitch" in str(exc)):
        opts = TaskOptions(name="t", retries=1, retry_delay=[1, 2], retry_on=retry_on, max_memory="1GB", cache=True)
        back = cloudpickle.loads(cloudpickle.dumps(opts))
        assert (back.retry_delay, back.max_memory, back.cache) == ((1.0, 2.0), 10**9, True)
        assert retry_delay(OSError("glitch"), 0, back) == 1.0
    assert len(TaskOptions(name="t", cache=True).__reduce__()[1]) == 10


def test_retry_options_do_not_change_a_cached_result_key():
    from nbflow import caching

    first = nbflow.task(name="keyed", cache=True)(abs)
    other = first.with_options(retries=3, retry_delay=nbflow.backoff(), retry_on=(OSError,))
    a, b = caching.plan(first), caching.plan(other)
    assert a.key(a.now(), (-2,), {}) == b.key(b.now(), (-2,), {})


# --- end to end ------------------------------------------------------------------------------------------------


def test_list_delays_are_waited_in_order_the_last_repeating(engine, spot):
    marks, _ = spot
    fut = nbflow.task(flaky, retries=3, retry_delay=[0.2, 0.4]).submit(marks, 3)
    assert fut.result(60) == 4 and fut.attempt == 3
    waited = gaps(marks)
    assert len(waited) == 3
    assert all(w >= d - TOLERANCE for w, d in zip(waited, [0.2, 0.4, 0.4], strict=True)), waited


def test_a_direct_call_applies_the_same_policy(tmp_path):
    nbflow.use("local", workers=2)
    marks = tmp_path / "marks"
    marks.mkdir()
    policy = nbflow.task(flaky, retries=2, retry_delay=[0.2, 0.3], retry_on=OSError)
    assert policy(str(marks), 2) == 3
    waited = gaps(str(marks))
    assert len(waited) == 2 and waited[0] >= 0.2 - TOLERANCE and waited[1] >= 0.3 - TOLERANCE, waited
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(OSError, match="attempt 1 failed"):
        policy.with_options(retry_on=KeyError)(str(other), 2)
    assert calls(str(other)) == 1
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(RuntimeError, match="the predicate broke") as info:
        policy.with_options(retry_on=broken_predicate)(str(again), 2)
    assert isinstance(info.value.__cause__, OSError) and calls(str(again)) == 1


def _dirs(tmp_path, *names: str) -> list[str]:
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        out.append(str(tmp_path / name))
    return out


def test_retry_on_a_class_a_tuple_and_a_predicate_on_every_engine(engine, tmp_path):
    by_class, by_tuple, not_matched, by_predicate = _dirs(tmp_path, "class", "tuple", "no", "predicate")
    assert nbflow.task(flaky, retries=2, retry_on=OSError).submit(by_class, 2).result(60) == 3
    assert nbflow.task(flaky, retries=2, retry_on=(KeyError, OSError)).submit(by_tuple, 2).result(60) == 3
    fut = nbflow.task(flaky, retries=2, retry_on=(KeyError, ValueError)).submit(not_matched, 2)
    with pytest.raises(OSError, match="attempt 1 failed"):  # not retried: fails at once with its own error
        fut.result(60)
    assert calls(not_matched) == 1 and fut.attempt == 0
    fut = nbflow.task(flaky, retries=5, retry_on=only_first_attempt).submit(by_predicate, 5)
    with pytest.raises(OSError, match="attempt 2 failed"):
        fut.result(60)
    assert calls(by_predicate) == 2


def test_a_predicate_that_raises_fails_the_task_with_its_error_caused_by_the_tasks(engine, spot):
    marks, _ = spot
    fut = nbflow.task(flaky, retries=3, retry_on=broken_predicate).submit(marks, 3)
    error = fut.exception(60)
    assert isinstance(error, RuntimeError) and str(error) == "the predicate broke"
    assert isinstance(error.__cause__, OSError) and str(error.__cause__) == "attempt 1 failed"
    assert fut.status == "error" and calls(marks) == 1
    assert nbflow.task(abs).submit(-1).result(60) == 1  # the engine goes on


def test_retry_after_is_honoured_and_capped_by_a_backoff_max(engine, tmp_path):
    asked, capped = _dirs(tmp_path, "asked", "capped")
    # without retry_after this would wait 600 s before its retry
    assert nbflow.task(throttled, retries=1, retry_delay=600).submit(asked, 1, 0.3).result(60) == 2
    assert gaps(asked)[0] >= 0.3 - TOLERANCE
    policy = nbflow.backoff(base=0.1, max=0.2, jitter=0)  # the server asks for 10 minutes: the max wins
    assert nbflow.task(throttled, retries=2, retry_delay=policy).submit(capped, 2, 600).result(60) == 3
    assert all(g >= 0.2 - TOLERANCE for g in gaps(capped)), gaps(capped)


@pytest.fixture(params=["threads", "dask"])
def quick_timeouts(request):
    """An engine whose attempts start at once (a process attempt starts a child: its timeout must be long)."""
    return ENGINES[request.param](2)


def test_a_timeout_is_retried_when_retry_on_names_task_timeout(quick_timeouts, spot, tmp_path):
    marks, release = spot
    try:
        slow = nbflow.task(hold, timeout=0.5, retries=1, retry_on=nbflow.TaskTimeout, name="slow")
        with pytest.raises(nbflow.TaskTimeout, match="'slow' ran longer than its timeout"):
            slow.submit(marks, release).result(60)
        assert calls(marks) == 2
        (other,) = _dirs(tmp_path, "other")
        with pytest.raises(nbflow.TaskTimeout):
            slow.with_options(retry_on=ValueError).submit(other, release).result(60)
        assert calls(other) == 1
    finally:
        Path(release).touch()


# --- magics ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "delay"),
    [
        ("2", 2.0),
        ("0", 0.0),
        ("30s", 30.0),
        ("1,2,4", (1.0, 2.0, 4.0)),
        ("0.5,1m", (0.5, 60.0)),
        ("backoff(base=1,max=30s,jitter=0)", Backoff(1, 2, 30, 0)),
        ("'nbflow.backoff(0.5, 3)'", Backoff(0.5, 3)),
        ("'backoff( max = 2m, factor=1.5 )'", Backoff(1, 1.5, 120)),
        ("backoff()", Backoff()),
    ],
)
def test_the_magics_retry_delay_takes_seconds_a_list_or_a_backoff(given, delay):
    assert args.parse(args.task, f"--retries 3 --retry-delay {given}").retry_delay == delay


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("-1", "must be seconds >= 0"),
        ("1kB", "must be seconds >= 0"),
        ("1,-2", "item 2 must be seconds >= 0"),
        ("1,,2", "item 2 must be seconds >= 0"),
        ("backoff(factor=0.5)", "backoff factor must be a finite number >= 1"),
        ("backoff(base=x)", "backoff base must be seconds >= 0"),
        ("backoff(jitter=much)", "backoff jitter must be a number, got 'much'"),
        ("backoff(speed=2)", "backoff takes base, factor, max and jitter, once each, got 'speed=2'"),
        ("backoff(1,2,3,0,5)", "backoff takes base, factor, max and jitter, once each, got '5'"),
        ("backoff(base=1,base=2)", "backoff takes base, factor, max and jitter, once each, got 'base=2'"),
    ],
)
def test_bad_magic_retry_delays_are_one_line_usage_errors(given, message):
    with pytest.raises(UsageError) as info:
        args.parse(args.task, f"--retry-delay {given}")
    shown = str(info.value)
    assert "\n" not in shown and "argument --retry-delay: " + message in shown, shown


class NotebookError(Exception):
    pass


def test_the_magics_retry_on_resolves_names_in_the_notebook_then_builtins():
    ns = {"NotebookError": NotebookError, "nbflow": nbflow, "ValueError": NotebookError, "count": 42}
    parsed = args.parse(args.task, "--retry-on NotebookError,KeyError nbflow.TaskTimeout")
    assert parsed.retry_on == ["NotebookError,KeyError", "nbflow.TaskTimeout"]
    classes = args.exception_classes(parsed.retry_on, ns)
    assert classes == (NotebookError, KeyError, nbflow.TaskTimeout)
    assert args.exception_classes(["ValueError"], ns) == (NotebookError,)  # the notebook's name first
    assert args.exception_classes(None, ns) is None
    for names, message in [
        ("Nonesuch", "--retry-on: unknown name 'Nonesuch': not a notebook variable or a builtin"),
        ("nbflow.Nonesuch", "--retry-on: unknown name 'nbflow.Nonesuch': nbflow has no such attribute"),
        ("count", "--retry-on count must be an exception class, got 42"),
        ("len", "--retry-on len must be an exception class, got <built-in function len>"),
        ("KeyboardInterrupt", "--retry-on KeyboardInterrupt: KeyboardInterrupt is not an Exception"),
        (",", "--retry-on: name one exception class or more"),
    ]:
        with pytest.raises(UsageError) as info:
            args.exception_classes([names], ns)
        assert "\n" not in str(info.value) and str(info.value).startswith(message), str(info.value)


def test_the_help_shows_the_retry_options():
    assert "--retry-delay DELAY" in args.HELP and "--retry-on EXCEPTION" in args.HELP
    assert "backoff(base=1,factor=2,max=60,jitter=0.1)" in args.HELP


def _cell(shell, options: str, body: str):
    shell.run_cell_magic("nbflow", f"task {options}", body)
    return shell.magics_manager.registry["NbflowMagics"].cells.unwaited()[-1]


def test_a_task_cell_retries_with_its_delay_and_only_the_failures_it_names(ip):
    ip.user_ns.update(tries=[], lock=threading.Lock(), NotebookError=NotebookError)
    body = "with lock:\n    tries.append(1)\n    n = len(tries)\nif n < 3:\n    raise NotebookError(n)\nresult = n"
    cell = _cell(ip, "--retries 3 --retry-delay 0,0.1 --retry-on NotebookError,KeyError", body)
    assert cell.options.retry_delay == (0.0, 0.1) and cell.options.retry_on == (NotebookError, KeyError)
    ip.run_line_magic("nbflow", "wait")
    assert cell.outcome == "finished" and ip.user_ns["result"] == 3
    ip.user_ns["tries"] = []
    cell = _cell(ip, "--retries 3 --retry-on KeyError --retry-delay backoff(base=0,jitter=0)", body)
    assert cell.options.retry_delay == Backoff(0, 2, 60, 0)
    ip.run_line_magic("nbflow", "wait")
    assert isinstance(cell.error, NotebookError) and ip.user_ns["tries"] == [1]  # not retried


def test_a_task_cell_with_a_bad_retry_on_is_a_usage_error_and_not_submitted(ip):
    ip.user_ns["answer"] = 42
    ip.user_ns.pop("never", None)  # (the shell is the process's one: another test's cell may have bound it)
    with pytest.raises(UsageError, match="--retry-on answer must be an exception class, got 42"):
        ip.run_cell_magic("nbflow", "task --retries 1 --retry-on answer", "never = 1")
    assert "never" not in ip.user_ns
