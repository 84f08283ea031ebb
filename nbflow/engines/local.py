"""The embedded local engine: a pool of threads (or processes) on this machine, with machine-wide limits.

A task's life: *pending* (its dependencies run; done-callbacks, no thread per task) → *waiting* for its
limits in the grant stage (only tasks with ``resources``/``limits``) → queued for the pool → *running* →
finished / error / cancelled. Resources are released before the future settles, so whoever sees a task
done sees its share free.
"""

from __future__ import annotations

import functools
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import ResourceSpecError, TaskTimeout, UpstreamError
from ..futures import Future, blocking, find_futures, set_block_hook, substitute, upstream_value, wait
from ..occupancy import Occupancy, ResourceUse, empty_task_counts, limits_snapshot
from ..task import Task
from . import bind
from .base import Engine
from .dispatch import Grants, check
from .threadpool import ThreadPool
from .timers import Timers

_DONE = ("finished", "error", "cancelled")
_engine_ids = itertools.count(1)


class _Run:
    """One submitted task on its way through the engine."""

    __slots__ = (
        "task",
        "fut",
        "args",
        "kwargs",
        "deps",
        "demands",
        "line",
        "holdings",
        "attempt",
        "phase",
        "timer",
        "lent",
        "child",
    )

    def __init__(self, task: Task, fut: Future, args: tuple, kwargs: dict, demands: dict[str, float] | None) -> None:
        self.task = task
        self.fut = fut
        self.args = args
        self.kwargs = kwargs
        self.deps = False
        self.demands = demands
        self.line = tuple(sorted(demands)) if demands else ()
        self.holdings: list = []
        self.attempt = 0
        self.phase = "pending"  # the status this run is counted under
        self.timer: list | None = None
        self.lent = False  # timed out while its thread still runs it: the thread's slot is lent out
        self.child: Any = None  # the child process running it (process pool)

    @property
    def name(self) -> str:
        return self.fut.name


def _demands(task: Task) -> dict[str, float] | None:
    """The machine limits a task holds while it runs: ``resources`` and ``limits`` (same names add up)."""
    opts = task.options
    if not opts.limits:
        return dict(opts.resources) if opts.resources else None
    out = dict(opts.resources)
    for name, amount in opts.limits.items():
        out[name] = out.get(name, 0.0) + amount
    return out


def _claim(fut: Future) -> bool:
    """Move a pending future to running; False if it was cancelled (or already claimed)."""
    with fut._condition:
        return not (fut.done() or fut.running()) and fut.set_running_or_notify_cancel()


def _settle(fut: Future, value: Any = None, exc: BaseException | None = None) -> bool:
    """Set the outcome unless another path (a timeout) already did; True if this call set it."""
    try:
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
    except Exception:  # InvalidStateError: already settled
        return False
    return True


class LocalEngine(Engine):
    """Threads (default) or processes on this machine; ``resources`` occupy machine limits of the same name.

    ``nbflow.use("local", workers=8, processes=False)``.
    """

    kind = "local"

    def __init__(self, workers: int = 8, processes: bool = False) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ResourceSpecError(f"workers must be a whole number >= 1, got {workers!r}")
        self.workers = workers
        self.processes = bool(processes)
        self.host = socket.gethostname()
        name = f"nbflow-local{next(_engine_ids)}"
        self._pool = ThreadPool(workers, self._execute, self._thread_setup, self._thread_teardown, name)
        self._grants = Grants(self._granted, self._abandon, name)
        self._timers = Timers(name)
        self._lock = threading.Lock()  # guards the counters and timeout/finish races
        self._counts = empty_task_counts()
        self._held: dict[str, float] = {}  # amounts this engine holds now, per limit name
        self._local = threading.local()
        self._closed = False

    # --- submitting ---------------------------------------------------------------------------------

    def submit(self, task: Task, args: tuple, kwargs: dict) -> Future:
        """Schedule ``task(*args, **kwargs)``; never blocks. Unknown or too large resources raise here."""
        if self._closed:
            raise RuntimeError("this local engine is closed; select a new one with nbflow.use('local')")
        demands = _demands(task)
        if demands:
            check(demands)
            with self._lock:
                for name in demands:
                    self._held.setdefault(name, 0.0)
        fut = Future(task.options.name)
        run = _Run(task, fut, args, kwargs, demands)
        fut.on_cancel = functools.partial(self._move, run, "cancelled")
        with self._lock:
            self._counts["pending"] += 1
        deps = find_futures(args)
        if kwargs:
            find_futures(kwargs, deps)
        if deps:
            run.deps = True
            self._after(run, deps)
        else:
            self._ready(run)
        return fut

    def _after(self, run: _Run, deps: list[Future]) -> None:
        """Make ``run`` ready when every dependency is done; fail it at once when one fails."""
        total = len(deps)
        ticks = itertools.count(1)  # next() is atomic: the callback that draws ``total`` is the last

        def on_done(dep: Future) -> None:
            if dep.cancelled() or dep.exception() is not None:
                self._fail_early(run, UpstreamError(dep.name, None if dep.cancelled() else dep.exception()))
            if next(ticks) == total:
                self._ready(run)

        for dep in deps:
            dep.add_done_callback(on_done)

    def _ready(self, run: _Run) -> None:
        """Dependencies done: to the grant stage if it needs limits, else straight to the pool."""
        if run.fut.done():  # cancelled, or failed upstream
            return
        if run.demands:
            self._move(run, "waiting")
            self._grants.put(run)
        elif not self._pool.put(run):
            self._abandon(run, None)

    def _granted(self, run: _Run, holdings: list) -> None:
        """The grant stage took ``run``'s limits: it goes to the pool ahead of tasks that hold nothing."""
        run.holdings = holdings
        with self._lock:
            for h in holdings:
                self._held[h.name] += h.amount
        if run.fut.cancelled():
            self._release(run)
            return
        self._move(run, "pending")
        if not self._pool.put(run, urgent=True):
            self._abandon(run, None)

    def _fail_early(self, run: _Run, exc: BaseException) -> None:
        """Fail a task that never ran (upstream failure, limit error in the grant stage)."""
        self._release(run)
        if (run.attempt or _claim(run.fut)) and _settle(run.fut, exc=exc):
            self._move(run, "error")

    def _abandon(self, run: _Run, exc: BaseException | None) -> None:
        """End a task that will not run: ``exc`` from the grant stage, or ``None`` when the engine closed."""
        self._release(run)
        if exc is not None:
            self._fail_early(run, exc)
        elif not run.fut.cancel():
            self._fail_early(run, RuntimeError(f"task {run.name!r} did not run: its engine was closed"))

    # --- running ----------------------------------------------------------------------------------

    def _thread_setup(self) -> None:
        """In every pool thread: nested submits go to this engine, blocking waits lend the slot."""
        bind(self)
        set_block_hook(self._pool.lent)

    def _thread_teardown(self) -> None:
        child = getattr(self._local, "child", None)
        if child is not None:
            child.close()

    def _execute(self, run: _Run) -> None:
        fut = run.fut
        if run.attempt == 0 and not _claim(fut):  # cancelled while queued
            self._release(run)
            return
        self._move(run, "running")
        try:
            call = self._prepare(run)
            timeout = run.task.options.timeout
            if timeout is not None:
                run.timer = self._timers.call_later(timeout, functools.partial(self._timed_out, run))
            value = call()
        except Exception as exc:
            self._failed(run, exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by the task itself
            self._finish(run, exc=exc)
        else:
            self._finish(run, value=value)

    def _prepare(self, run: _Run) -> Callable[[], Any]:
        """Resolve the arguments and pick where the task runs (this thread, or this thread's child process)."""
        args, kwargs = run.args, run.kwargs
        if run.deps:
            args, kwargs = substitute(args, upstream_value), substitute(kwargs, upstream_value)
        fn = run.task.fn
        thread = threading.current_thread().name
        if not self.processes:
            run.fut.worker = thread
            return functools.partial(fn, *args, **kwargs)
        child = getattr(self._local, "child", None)
        if child is None:
            from .procpool import ChildProcess

            child = self._local.child = ChildProcess()
        env = {}
        for h in run.holdings:
            if h.name == "GPU" and h.slots:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, h.slots))
        run.fut.worker = f"{thread}/pid {child.start(env)}"
        run.child = child
        return functools.partial(child.run, fn, args, kwargs, env)

    def _stop_timer(self, run: _Run) -> bool:
        """The run returned: disarm its timeout; True if the timeout already fired (the slot was lent)."""
        with self._lock:
            if run.timer is not None:
                self._timers.cancel(run.timer)
                run.timer = None
            lent, run.lent = run.lent, False
            run.child = None
        if lent:
            self._pool.unlend()
        return lent

    def _failed(self, run: _Run, exc: Exception) -> None:
        """The task raised: retry it (resources given back during the delay) or fail the future."""
        opts = run.task.options
        if run.attempt < opts.retries and not self._closed and not run.fut.done():
            self._stop_timer(run)
            self._release(run)
            run.attempt += 1
            self._move(run, "pending")
            if opts.retry_delay > 0:
                try:
                    self._timers.call_later(opts.retry_delay, functools.partial(self._ready, run))
                    return
                except RuntimeError:  # closing
                    pass
            self._ready(run)
            return
        self._finish(run, exc=exc)

    def _finish(self, run: _Run, value: Any = None, exc: BaseException | None = None) -> None:
        self._stop_timer(run)
        self._release(run)
        if _settle(run.fut, value, exc):
            self._move(run, "error" if exc is not None else "finished")

    def _timed_out(self, run: _Run) -> None:
        """In the timer thread: fail the future now. A child process is killed (its share is released once
        it is dead); a thread cannot be stopped, so its slot is lent out and its share kept until it returns."""
        opts = run.task.options
        with self._lock:
            if run.timer is None:  # finished meanwhile
                return
            run.timer = None
            if run.child is not None:
                run.child.kill()
            else:
                run.lent = True
                self._pool.lend()
        exc = TaskTimeout(f"task {run.name!r} ran longer than its timeout of {opts.timeout:g} s")
        if _settle(run.fut, exc=exc):
            self._move(run, "error")

    def _release(self, run: _Run) -> None:
        holdings, run.holdings = run.holdings, []
        for h in holdings:
            h.release()
        if holdings:
            with self._lock:
                for h in holdings:
                    self._held[h.name] -= h.amount

    def _move(self, run: _Run, phase: str) -> None:
        """Count ``run`` under ``phase`` (once done, it stays counted where it ended)."""
        with self._lock:
            old = run.phase
            if old in _DONE:
                return
            self._counts[old] -= 1
            self._counts[phase] += 1
            run.phase = phase
            if phase not in _DONE:
                run.fut.phase = phase

    # --- direct call ----------------------------------------------------------------------------------

    def call(self, task: Task, args: tuple, kwargs: dict) -> Any:
        """Run here and now, holding the task's limits; dependencies are waited for; ``retries`` apply."""
        from ..limits import acquire_all

        deps = find_futures(args)
        if kwargs:
            find_futures(kwargs, deps)
        if deps:
            wait(deps)
            args, kwargs = substitute(args, upstream_value), substitute(kwargs, upstream_value)
        opts = task.options
        demands = _demands(task)
        for attempt in range(opts.retries + 1):
            with blocking():  # in a pool thread, waiting for a limit lends the slot out
                holdings = acquire_all(demands, task=opts.name) if demands else []
            try:
                return task.fn(*args, **kwargs)
            except Exception:
                if attempt == opts.retries:
                    raise
            finally:
                for h in holdings:
                    h.release()
            time.sleep(opts.retry_delay)
        raise AssertionError("unreachable")

    # --- introspection and shutdown ------------------------------------------------------------------

    def occupancy(self) -> Occupancy:
        """This machine as one worker: every limit this engine touched plus the machine's limits."""
        snapshot = limits_snapshot()
        resources: dict[str, ResourceUse] = {
            info["name"]: {"total": info["capacity"], "used": info["used"]} for info in snapshot
        }
        with self._lock:
            counts = dict(self._counts)
            held = dict(self._held)
        for name, amount in held.items():
            if name not in resources:
                resources[name] = {"total": _capacity_or_zero(name), "used": amount}
        return {
            "engine": self.kind,
            "time": time.time(),
            "workers": [
                {
                    "name": "local",
                    "host": self.host,
                    "resources": resources,
                    "running": counts["running"],
                    "waiting": counts["waiting"],
                    "queued": self._pool.queued,
                }
            ],
            "tasks": counts,
            "limits": snapshot,
        }

    def close(self) -> None:
        """Cancel what has not started, let running tasks finish, stop every thread (and child process)."""
        if self._closed:
            return
        self._closed = True
        self._grants.close()
        for run in self._pool.close():
            self._abandon(run, None)
        for callback in self._timers.close():  # retries waiting for their delay
            callback()

    def __repr__(self) -> str:
        kind = "processes" if self.processes else "threads"
        return f"<nbflow.LocalEngine {self.workers} {kind}>"


def _capacity_or_zero(name: str) -> float:
    from ..errors import NbflowError
    from ..limits.semaphore import get_limit

    try:
        return get_limit(name).capacity()
    except NbflowError:
        return 0.0
