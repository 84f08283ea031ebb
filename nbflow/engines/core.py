"""The task lifecycle, one for every engine. An engine only places and runs attempts.

A run's life: *pending* while its dependencies finish (done-callbacks, no thread per task) → the engine
places an attempt (it may report *waiting* for a resource, then *running* on a worker) → the attempt ends.
A failed attempt — an exception, a ``TaskTimeout``, a lost worker — goes back to *pending* while
``retries`` remain and starts again after ``retry_delay`` seconds, holding nothing meanwhile. Otherwise the
future is set, once: *finished*, *error* or *cancelled*. A dependency that failed fails the run with
``UpstreamError``; it never runs.

What an engine implements: ``_place(run)`` (start one attempt, and report back through ``_started``,
``_ended`` and friends), optionally ``_place_many`` (a batch), ``_argument`` (what a finished dependency
becomes in the arguments), ``_check`` (refuse at submit what can never run), ``_holds`` (what a direct
call holds), ``_withdraw`` (a cancelled run), ``_shutdown`` and ``occupancy``.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import context, devices
from ..errors import UpstreamError
from ..futures import Future, blocking, find_futures, new_key, substitute, upstream_value
from ..snapshot import empty_task_counts
from .timers import Timers

if TYPE_CHECKING:
    from ..options import Runnable
    from ..snapshot import Occupancy

_DONE = ("finished", "error", "cancelled")
_bound = threading.local()  # the engine bound to this thread, e.g. inside a task


def bind(eng: Any) -> Any:
    """Bind ``eng`` to the calling thread (``None`` unbinds), so tasks submitted there go to it; returns
    what was bound before."""
    previous = getattr(_bound, "engine", None)
    _bound.engine = eng
    return previous


def bound() -> Any:
    """The engine bound to the calling thread, if any."""
    return getattr(_bound, "engine", None)


class Run:
    """One submitted task on its way through an engine; engines subclass it to add their own slots."""

    __slots__ = ("task", "fut", "args", "kwargs", "deps", "attempt", "phase", "live", "claimed", "delay", "counted")

    def __init__(self, task: Runnable, fut: Future, args: tuple, kwargs: dict, deps: bool) -> None:
        self.task = task
        self.fut = fut
        self.args = args
        self.kwargs = kwargs
        self.deps = deps  # futures among the arguments
        self.attempt = 0  # 0 for the first
        self.phase = "pending"  # the status this run is counted under
        self.live = False  # an attempt is placed and has not ended
        self.claimed = False  # the future was moved to running (it can no longer be cancelled)
        self.delay: list | None = None  # the timer entry while it waits out a retry delay
        self.counted: bool = getattr(task, "counted", True)  # False: part of a task that is counted (a cell's output)

    @property
    def name(self) -> str:
        return self.fut.name


class Engine:
    """The lifecycle every engine shares: ``submit``, ``map``, direct calls, retries, status and close."""

    kind: str = ""
    Run: type[Run] = Run

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()  # guards the counts and the run flags below
        self._counts = empty_task_counts()
        self._delays = Timers(name)  # retry delays; its thread starts with the first delay
        self._delayed: set[Run] = set()  # runs waiting out a retry delay
        self._blocked: set[Run] = set()  # runs waiting for their dependencies
        self._closed = False
        self.cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # read once: see ``nbflow.devices``

    # --- what engines implement ----------------------------------------------------------------------

    def _place(self, run: Run) -> None:
        """Start one attempt of ``run``; report ``_started`` and, once, ``_ended`` (from any thread)."""
        raise NotImplementedError

    def _place_many(self, runs: list[Run]) -> None:
        """Start the first attempts of several runs of one task (``map``); engines may batch them."""
        for run in runs:
            self._place(run)

    def _argument(self, dep: Future) -> Any:
        """What a finished dependency becomes in the task's arguments: its value, by default."""
        return upstream_value(dep)

    def _check(self, task: Runnable) -> None:
        """Raise at submit for a demand this engine can never meet (``NoSuchLimit``, ``Unsatisfiable``)."""

    def _holds(self, task: Runnable) -> Mapping[str, float]:
        """The machine limits a direct call holds while it runs here."""
        return task.options.limits

    def _withdraw(self, run: Run) -> None:
        """``run`` was cancelled before it ran: forget it (e.g. cancel it on a cluster)."""

    def _shutdown(self) -> None:
        """Stop placing attempts and release what the engine started; unplaced runs go to ``_abandon``."""

    def occupancy(self) -> Occupancy:
        """A JSON-able snapshot of workers, resources, task counts and limits."""
        raise NotImplementedError

    # --- the public surface ------------------------------------------------------------------------

    def submit(self, task: Runnable, args: tuple, kwargs: dict) -> Future:
        """Schedule ``task(*args, **kwargs)``; futures in the arguments are dependencies. Never blocks."""
        self._admit(task)
        run = self._new_run(task, args, kwargs)
        self._counted(run.counted)
        if run.deps:
            self._after_deps(run)
        else:
            self._launch(run)
        return run.fut

    def map(self, task: Runnable, calls: list[tuple[tuple, dict]]) -> list[Future]:
        """One run per ``(args, kwargs)``, checked once; those without dependencies start as one batch."""
        self._admit(task)
        runs = [self._new_run(task, args, kwargs) for args, kwargs in calls]
        self._counted(sum(run.counted for run in runs))
        ready = []
        for run in runs:
            if run.deps:
                self._after_deps(run)
            else:
                ready.append(run)
        if ready:
            for run in ready:
                run.live = True
            self._place_many(ready)
        return [run.fut for run in runs]

    def call(self, task: Runnable, args: tuple, kwargs: dict) -> Any:
        """Run ``task`` here and now, holding ``_holds(task)``; dependencies are waited for and ``retries`` and
        ``retry_delay`` apply. No ``timeout``: the caller's own thread cannot be stopped."""
        from ..semaphores import acquire_all

        deps = find_futures((args, kwargs))
        if deps:
            with blocking():
                cf.wait(deps)
            args, kwargs = substitute((args, kwargs), upstream_value)
        opts = task.options
        demands = self._holds(task)
        key, here = new_key(opts.name), threading.current_thread().name
        for attempt in itertools.count():
            with blocking():  # in a task's thread, waiting for a limit lends the thread out
                holdings = acquire_all(demands, task=opts.name) if demands else []
            gpus = devices.held(holdings)
            try:
                ids = devices.physical(gpus, self.cuda_visible) if gpus else None
                with context.running((key, opts.name, attempt, here, demands, gpus, ids)):
                    return task.fn(*args, **kwargs)
            except Exception:
                if attempt >= opts.retries:
                    raise
            finally:
                for holding in holdings:
                    holding.release()
            time.sleep(opts.retry_delay)

    def close(self) -> None:
        """Stop taking tasks; runs that have not started are cancelled. Returns without waiting for running
        tasks (what becomes of them is the engine's to say). Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            delayed, self._delayed = list(self._delayed), set()
            blocked, self._blocked = list(self._blocked), set()
        for run in delayed:
            self._delays.cancel(run.delay)
            self._abandon(run)
        for run in blocked:
            self._abandon(run)
        self._shutdown()

    # --- the lifecycle -----------------------------------------------------------------------------

    def _admit(self, task: Runnable) -> None:
        if self._closed:
            raise RuntimeError(f"this {self.kind} engine is closed; select a new one with nbflow.use(...)")
        self._check(task)

    def _new_run(self, task: Runnable, args: tuple, kwargs: dict) -> Run:
        fut = self._future(task.options.name)
        deps = bool(find_futures(args) or (kwargs and find_futures(kwargs)))
        if deps:
            substitute((args, kwargs), _placeholder)  # refuse an argument that cannot be rebuilt, now
        run = self.Run(task, fut, args, kwargs, deps)
        fut.on_cancel = functools.partial(self._cancelled, run)
        return run

    def _future(self, name: str) -> Future:
        return Future(name)

    def _counted(self, n: int) -> None:
        with self._lock:
            self._counts["pending"] += n

    def _after_deps(self, run: Run) -> None:
        """Place ``run`` when every dependency is done; fail it at once when one fails."""
        deps = find_futures((run.args, run.kwargs))
        total = len(deps)
        ticks = itertools.count(1)  # next() is atomic: the callback that draws ``total`` is the last
        with self._lock:
            self._blocked.add(run)

        def on_done(dep: cf.Future) -> None:
            if dep.cancelled() or dep.exception() is not None:
                self._settle(run, exc=UpstreamError(dep.name, None if dep.cancelled() else dep.exception()))
            if next(ticks) == total:
                with self._lock:
                    self._blocked.discard(run)
                if not run.fut.done():
                    self._launch(run)

        for dep in deps:
            dep.add_done_callback(on_done)

    def _launch(self, run: Run) -> None:
        """Place the next attempt of ``run``; ``_ended`` takes one report for it."""
        run.live = True
        self._place(run)

    def _arguments(self, run: Run) -> tuple[tuple, dict]:
        """The arguments of an attempt, each dependency replaced by ``_argument(dep)``."""
        if not run.deps:
            return run.args, run.kwargs
        return substitute((run.args, run.kwargs), self._argument)

    def _waiting(self, run: Run) -> None:
        """The engine reports: the attempt waits for a resource."""
        self._move(run, "waiting")

    def _started(self, run: Run, worker: str | None) -> bool:
        """The engine reports: the attempt runs on ``worker``. False if the run was cancelled first: the engine
        then drops the attempt (it never calls ``_ended`` for it)."""
        with self._lock:
            if not run.live:  # a late report about an attempt that has ended
                return False
            first = not run.claimed
            run.claimed = True
        if first and not run.fut.claim():
            return False
        if worker is not None:
            run.fut.worker = worker
        self._move(run, "running")
        return True

    def _ended(self, run: Run, attempt: int, value: Any = None, exc: BaseException | None = None) -> None:
        """The engine reports: attempt ``attempt`` ended. Retry it, or settle the future. A report about an
        attempt that already ended (a timeout fired first) is ignored."""
        done = run.fut.done()  # (outside the engine's lock: the future's lock is taken first, when settling)
        with self._lock:
            if attempt != run.attempt or not run.live:
                return
            run.live = False
            retry = (
                exc is not None
                and isinstance(exc, Exception)
                and attempt < run.task.options.retries
                and not self._closed
                and not done
            )
            if retry:
                run.attempt += 1
                run.fut.attempt = run.attempt
                first, run.claimed = not run.claimed, True
        if retry and first and not run.fut.claim():  # it ran (briefly, unreported): no longer cancellable
            return  # cancelled just now
        if not retry:
            self._settle(run, value, exc)
            return
        self._move(run, "pending")
        delay = run.task.options.retry_delay
        if delay <= 0:
            self._launch(run)
            return
        with self._lock:
            if not self._closed:
                self._delayed.add(run)
                run.delay = self._delays.call_later(delay, functools.partial(self._delay_over, run))
                return
        self._abandon(run)

    def _delay_over(self, run: Run) -> None:
        with self._lock:
            if run not in self._delayed:  # closed meanwhile
                return
            self._delayed.discard(run)
            run.delay = None
        self._launch(run)

    def _settle(self, run: Run, value: Any = None, exc: BaseException | None = None) -> bool:
        """Set the outcome unless it is set already (cancelled, failed upstream); True if this call set it.
        The run is counted under its final status first, so whoever sees the future done sees the count."""
        if run.fut.done():
            return False
        self._move(run, "finished" if exc is None else "error")
        try:
            if exc is None:
                run.fut.set_result(value)
            else:
                run.fut.set_exception(exc)
        except cf.InvalidStateError:  # cancelled (or set) just now: count it where it really ended
            fut = run.fut
            self._move(run, "cancelled" if fut.cancelled() else "error" if fut.exception() else "finished", force=True)
            return False
        return True

    def _succeeded_unwatched(self, run: Run, value: Any) -> bool:
        """``_ended`` for a success, but only if no done-callback waits for it, because the caller is an event
        loop where user code must not run; True if handled (also when it was cancelled first)."""
        if not run.fut.set_result_unwatched(value, functools.partial(self._move, run, "finished")):
            return run.fut.cancelled()
        run.live = False
        return True

    def _cancelled(self, run: Run) -> None:
        """``fut.cancel()`` succeeded (the task had not started)."""
        self._move(run, "cancelled")
        with self._lock:
            delayed = run in self._delayed
            self._delayed.discard(run)
        if delayed:
            self._delays.cancel(run.delay)
        self._withdraw(run)

    def _abandon(self, run: Run) -> None:
        """End a run the engine will not run (closed): cancelled if it never started, else an error."""
        if run.fut.mark_cancelled():
            self._move(run, "cancelled")
        else:
            self._settle(run, exc=RuntimeError(f"task {run.name!r} did not finish: its engine was closed"))

    def _move(self, run: Run, phase: str, force: bool = False) -> None:
        """Count ``run`` under ``phase`` (once done, it stays counted where it ended, unless ``force``)."""
        with self._lock:
            old = run.phase
            if old == phase or (old in _DONE and not force):
                return
            if run.counted:
                self._counts[old] -= 1
                self._counts[phase] += 1
            run.phase = phase
            if phase not in _DONE:
                run.fut.phase = phase
            else:
                run.fut.on_cancel = None  # no cycle future -> run -> future: a dropped future is freed at once

    def task_counts(self) -> dict[str, int]:
        """How many runs of this engine are in each status."""
        with self._lock:
            return dict(self._counts)


def _placeholder(_: Future) -> None:
    return None
