"""The task lifecycle, one for every engine. An engine only places and runs attempts.

A run's life: *pending* while its dependencies finish (done-callbacks, no thread per task) → the engine
places an attempt (it may report *waiting* for a resource, then *running* on a worker) → the attempt ends.
A failed attempt — an exception, a ``TaskTimeout``, a lost worker — goes back to *pending* while
``retries`` remain and starts again after ``retry_delay`` seconds, holding nothing meanwhile. Otherwise the
future is set, once: *finished*, *error* or *cancelled*. A dependency that failed fails the run with
``UpstreamError``; it never runs.

``fut.stop()`` ends a run in any state: one not running yet is cancelled at once; a running one is *stopping*
while the engine stops its attempt (``_halt``), and is cancelled — not retried — once the attempt has ended.

A run is in one ``State`` at a time; its current ``Attempt`` (``run.attempt``) is what the engine runs, and
what the engine's reports name: a report about an attempt that is no longer current is ignored.

What an engine implements: ``_place(run)`` (start ``run.attempt``, and report back through ``_waiting``,
``_queued``, ``_started`` and, once, ``_ended``), optionally ``_place_many`` (a batch), ``_argument`` (what a
finished dependency becomes in the arguments), ``_check`` (refuse at submit what can never run), ``_holds``
(what a direct call holds), ``_withdraw`` (a cancelled run), ``_halt`` (stop a running attempt), ``_shutdown``
and ``occupancy``.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import functools
import itertools
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import UpstreamError
from ..futures import Future, blocking, find_futures, new_key, substitute, upstream_value
from ..snapshot import empty_task_counts
from ..thread_stop import shielded
from .attempt import Attempt, retry_delay, run_here
from .timers import Timers

if TYPE_CHECKING:
    from ..options import Runnable
    from ..snapshot import Occupancy

_bound = threading.local()  # the engine bound to this thread, e.g. inside a task
_ACTIVE = ("running", "stopping")  # the statuses of the runs ``running_futures`` lists


def bind(eng: Any) -> Any:
    """Bind ``eng`` to the calling thread (``None`` unbinds), so tasks submitted there go to it; returns
    what was bound before."""
    previous = getattr(_bound, "engine", None)
    _bound.engine = eng
    return previous


def bound() -> Any:
    """The engine bound to the calling thread, if any."""
    return getattr(_bound, "engine", None)


class State(enum.Enum):
    """Where a run is, one state at a time (as ``concurrent.futures`` keeps one per future); ``status`` is what
    its future reads and what the engine counts it under, ``live`` whether an attempt is placed and not ended."""

    BLOCKED = "blocked", "pending"  # waiting for its dependencies
    PLACED = "placed", "pending"  # its attempt is placed: queued for a worker
    WAITING = "waiting", "waiting"  # its attempt waits for a resource
    RUNNING = "running", "running"  # its attempt runs
    STOPPING = "stopping", "stopping"  # its attempt runs, and is being stopped (``fut.stop()``)
    DELAYED = "delayed", "pending"  # waiting out ``retry_delay`` before the next attempt
    FINISHED = "finished", "finished"
    ERROR = "error", "error"
    CANCELLED = "cancelled", "cancelled"

    def __init__(self, label: str, status: str) -> None:
        self.status = status
        self.live = label in ("placed", "waiting", "running", "stopping")
        self.done = label in ("finished", "error", "cancelled")


class Run:
    """One submitted task on its way through an engine; engines subclass it to add their own slots."""

    __slots__ = ("task", "fut", "args", "kwargs", "has_deps", "attempt", "state", "counted", "stop_asked")

    def __init__(
        self, task: Runnable, fut: Future, args: tuple, kwargs: dict, has_deps: bool, attempt: Attempt
    ) -> None:
        self.task = task
        self.fut = fut
        self.args = args
        self.kwargs = kwargs
        self.has_deps = has_deps  # futures among the arguments
        self.attempt = attempt  # the current one: placed, running, or next to run
        self.state = State.BLOCKED if has_deps else State.PLACED
        self.counted: bool = getattr(task, "counted", True)  # False: part of a task that is counted (a cell's output)
        self.stop_asked = False  # ``fut.stop()`` came before the attempt was reported running: it must not run

    @property
    def name(self) -> str:
        return self.fut.name


class Engine:
    """The lifecycle every engine shares: ``submit``, ``map``, direct calls, retries, status and close."""

    kind: str = ""
    Run: type[Run] = Run
    Attempt: type[Attempt] = Attempt

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()  # guards the counts, the runs' states and the sets below
        self._counts = empty_task_counts()
        self._delays = Timers(name)  # retry delays; its thread starts with the first delay
        self._delayed: dict[Run, list] = {}  # runs waiting out a retry delay -> their timer entries
        self._blocked: set[Run] = set()  # runs waiting for their dependencies
        self._active: dict[Run, None] = {}  # counted runs running or stopping, in the order they started
        self._closed = False
        self.cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # read once: see ``nbflow.devices``

    # --- what engines implement ----------------------------------------------------------------------

    def _place(self, run: Run) -> None:
        """Start ``run.attempt``; report ``_started`` and, once, ``_ended`` (from any thread)."""
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

    def _halt(self, run: Run, attempt: Attempt, grace: float) -> None:
        """Stop ``attempt``, which runs (``fut.stop()``); report ``_ended`` once it has really stopped. By default
        nothing stops it: the run stays *stopping* until the attempt returns."""

    def _shutdown(self) -> None:
        """Stop placing attempts and release what the engine started; unplaced runs go to ``_abandon``."""

    def occupancy(self) -> Occupancy:
        """A JSON-able snapshot of workers, resources, task counts and limits."""
        raise NotImplementedError

    # --- the public surface ------------------------------------------------------------------------

    def submit(self, task: Runnable, args: tuple, kwargs: dict) -> Future:
        """Schedule ``task(*args, **kwargs)``; futures in the arguments are dependencies. Never blocks."""
        self._admit(task)
        with shielded:  # (from a task: a stop of it lands after, never with the run counted and not placed)
            run = self._new_run(task, args, kwargs)
            self._counted(run.counted)
            if run.has_deps:
                self._after_deps(run)
            else:
                self._place(run)
        return run.fut

    def map(self, task: Runnable, calls: list[tuple[tuple, dict]]) -> list[Future]:
        """One run per ``(args, kwargs)``, checked once; those without dependencies start as one batch."""
        self._admit(task)
        with shielded:
            runs = [self._new_run(task, args, kwargs) for args, kwargs in calls]
            self._counted(sum(run.counted for run in runs))
            ready = []
            for run in runs:
                if run.has_deps:
                    self._after_deps(run)
                else:
                    ready.append(run)
            if ready:
                self._place_many(ready)
        return [run.fut for run in runs]

    def call(self, task: Runnable, args: tuple, kwargs: dict) -> Any:
        """Run ``task`` here and now, holding ``_holds(task)``; dependencies are waited for and ``retries`` and
        ``retry_delay`` apply. No ``timeout``: the caller's own thread cannot be stopped."""
        deps = find_futures((args, kwargs))
        if deps:
            with blocking():
                cf.wait(deps)
            args, kwargs = substitute((args, kwargs), upstream_value)
        opts = task.options
        demands = self._holds(task)
        key = new_key(opts.name)
        for number in itertools.count():
            try:
                return run_here(task.fn, args, kwargs, demands, Attempt(number, key, opts.name), self.cuda_visible)
            except Exception as exc:
                delay = retry_delay(exc, number, opts)
                if delay is None:
                    raise
            time.sleep(delay)  # the caller's own thread waits: the lifecycle's timers are for placed runs

    def close(self) -> None:
        """Stop taking tasks; runs that have not started are cancelled. Returns without waiting for running
        tasks (what becomes of them is the engine's to say). Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            delayed, self._delayed = self._delayed, {}
            blocked, self._blocked = list(self._blocked), set()
        for run, entry in delayed.items():
            self._delays.cancel(entry)
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
        has_deps = bool(find_futures(args) or (kwargs and find_futures(kwargs)))
        if has_deps:
            substitute((args, kwargs), _placeholder)  # refuse an argument that cannot be rebuilt, now
        run = self.Run(task, fut, args, kwargs, has_deps, self.Attempt(0, fut.key, fut.name))
        fut._owner = (self, run)
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
                self._settle(run, exc=UpstreamError(dep.name, None if dep.cancelled() else dep.exception(), dep))
            if next(ticks) == total:
                with self._lock:
                    self._blocked.discard(run)
                if not run.fut.done():
                    self._launch(run)

        for dep in deps:
            dep.add_done_callback(on_done)

    def _launch(self, run: Run) -> None:
        """Place the attempt of a run that waited (for its dependencies, or out a retry delay)."""
        with self._lock:
            if run.state.done:  # cancelled, or failed upstream, meanwhile
                return
            self._to(run, State.PLACED)
        self._place(run)

    def _arguments(self, run: Run) -> tuple[tuple, dict]:
        """The arguments of an attempt, each dependency replaced by ``_argument(dep)``."""
        if not run.has_deps:
            return run.args, run.kwargs
        return substitute((run.args, run.kwargs), self._argument)

    def _waiting(self, run: Run) -> None:
        """The engine reports: the attempt waits for a resource."""
        self._report(run, State.WAITING)

    def _queued(self, run: Run) -> None:
        """The engine reports: the attempt got its resources and is queued for a worker."""
        self._report(run, State.PLACED)

    def _started(self, run: Run, worker: str | None) -> bool:
        """The engine reports: the attempt runs on ``worker``. False if the run was cancelled first: the engine
        then drops the attempt (it never calls ``_ended`` for it)."""
        with self._lock:
            if not run.state.live:  # a late report about an attempt that has ended
                return False
        if not run.fut._claim():
            return False
        if worker is not None:
            run.fut.worker = worker
        with self._lock:
            # stopped meanwhile (``_stop`` cancels the future), or being stopped (a cluster started it again)
            if run.stop_asked or not run.state.live or run.state is State.STOPPING:
                return False
            self._to(run, State.RUNNING)
        return True

    def _report(self, run: Run, state: State) -> None:
        """Move a run whose attempt is live to ``state`` (a report that comes after the attempt ended changes
        nothing)."""
        with self._lock:
            if run.state.live:
                self._to(run, state)

    def _ended(self, run: Run, attempt: Attempt, value: Any = None, exc: BaseException | None = None) -> None:
        """The engine reports: ``attempt`` ended. Retry it, or settle the future (cancelled, if it was being
        stopped). A report about an attempt that already ended (a timeout fired first) is ignored."""
        done = run.fut.done()  # (outside the engine's lock: the future's lock is taken first, when settling)
        decided: float | BaseException | None = None  # also outside: ``retry_on`` may be the user's function
        current = attempt is run.attempt and run.state.live and run.state is not State.STOPPING  # (checked again)
        if exc is not None and current and not (done or self._closed):
            try:
                decided = retry_delay(exc, attempt.number, run.task.options)
            except BaseException as raised:  # ``retry_on`` raised: the task fails with that error (caused by ``exc``)
                decided = raised
        error = exc  # what the future gets if the task fails now
        with self._lock:
            if attempt is not run.attempt or not run.state.live:
                return
            stopped = run.state is State.STOPPING
            delay = None
            if exc is not None and not (stopped or self._closed or done):
                if isinstance(decided, BaseException):
                    error = decided
                else:
                    delay = decided
            if delay is None:
                self._to(run, State.CANCELLED if stopped else State.FINISHED if exc is None else State.ERROR)
            else:
                run.attempt = self.Attempt(attempt.number + 1, attempt.key, attempt.name)
                run.fut.attempt = attempt.number + 1
                self._to(run, State.DELAYED if delay > 0 else State.PLACED)
        if stopped:
            run.fut._mark_stopped()
            return
        if delay is None:
            if exc is not None:
                run.fut._failure = self._failure(run, attempt, exc)
            self._set(run, value, error)
            return
        if not run.fut._claim():  # it ran (briefly, unreported): no longer cancellable, unless cancelled just now
            return
        if delay <= 0:
            self._place(run)
            return
        with self._lock:
            if not self._closed:
                self._delayed[run] = self._delays.call_later(delay, functools.partial(self._delay_over, run))
                return
        self._abandon(run)

    def _failure(self, run: Run, attempt: Attempt, exc: BaseException) -> Any:
        """What the future of a run that failed keeps of its last attempt, to debug and replay it."""
        from ..debugging.kernel_failure import Failure

        inputs = (run.args, run.kwargs)
        return Failure(run.task, attempt.number, run.fut.worker, exc, attempt.report, inputs, self._holds(run.task))

    def _delay_over(self, run: Run) -> None:
        with self._lock:
            if self._delayed.pop(run, None) is None:  # closed or cancelled meanwhile
                return
        self._launch(run)

    def _settle(self, run: Run, value: Any = None, exc: BaseException | None = None) -> bool:
        """Set the outcome unless it is set already (cancelled, failed upstream); True if this call set it.
        The run is counted under its final status first, so whoever sees the future done sees the count."""
        if run.fut.done():
            return False
        self._move(run, State.FINISHED if exc is None else State.ERROR)
        return self._set(run, value, exc)

    def _set(self, run: Run, value: Any, exc: BaseException | None) -> bool:
        """Set the future of a run counted under its final status; True if this call set it."""
        try:
            if exc is None:
                run.fut.set_result(value)
            else:
                run.fut.set_exception(exc)
        except cf.InvalidStateError:  # cancelled (or set) just now: count it where it really ended
            fut = run.fut
            ended = State.CANCELLED if fut.cancelled() else State.ERROR if fut.exception() else State.FINISHED
            self._move(run, ended, force=True)
            return False
        return True

    def _succeeded_unwatched(self, run: Run, value: Any) -> bool:
        """``_ended`` for a success, but only if no done-callback waits for it, because the caller is an event
        loop where user code must not run; True if handled (also when it was cancelled first)."""
        if run.state is State.STOPPING:  # it ends cancelled: ``_ended``'s path
            return False
        if not run.fut._set_result_unwatched(value, functools.partial(self._move, run, State.FINISHED)):
            return run.fut.cancelled()
        return True

    def _stop(self, run: Run, grace: float) -> bool:
        """``fut.stop(grace)``: see ``Future.stop``."""
        with self._lock:
            state = run.state
            if state.done:
                return state is State.CANCELLED
            running = state in (State.RUNNING, State.STOPPING)  # stopping: asked again, e.g. with a shorter grace
            if running:
                self._to(run, State.STOPPING)
            else:
                run.stop_asked = True  # ``_started`` will not let its attempt run
            attempt = run.attempt
        if running:
            self._halt(run, attempt, grace)
            return True
        if not run.fut.cancel() and run.fut._mark_stopped():  # claimed: a retry queued, delayed or about to start
            self._cancelled(run)
        if state in (State.PLACED, State.WAITING):  # it may have started where the engine has not seen it yet
            self._halt(run, attempt, grace)
        return run.fut.cancelled()

    def _cancelled(self, run: Run) -> None:
        """``fut.cancel()`` succeeded (the task had not started)."""
        with self._lock:
            self._to(run, State.CANCELLED)
            entry = self._delayed.pop(run, None)
        if entry is not None:
            self._delays.cancel(entry)
        self._withdraw(run)

    def _abandon(self, run: Run) -> None:
        """End a run the engine will not run (closed, or cancelled on a cluster): cancelled if it never started or
        was being stopped, else an error."""
        if run.fut._mark_cancelled() or (run.state is State.STOPPING and run.fut._mark_stopped()):
            self._move(run, State.CANCELLED)
        else:
            self._settle(run, exc=RuntimeError(f"task {run.name!r} did not finish: its engine was closed"))

    def _move(self, run: Run, state: State, force: bool = False) -> None:
        with self._lock:
            self._to(run, state, force)

    def _to(self, run: Run, state: State, force: bool = False) -> None:
        """(Under the lock.) Count ``run`` under ``state`` (once done, it stays counted where it ended, unless
        ``force``)."""
        old = run.state
        if old is state or (old.done and not force):
            return
        if run.counted and old.status != state.status:
            self._counts[old.status] -= 1
            self._counts[state.status] += 1
            if state.status in _ACTIVE:
                self._active[run] = None
            elif old.status in _ACTIVE:
                del self._active[run]
        run.state = state
        if state.done:
            run.fut._owner = None  # no cycle future -> run: a dropped future is freed at once
        else:
            run.fut._phase = state.status

    def task_counts(self) -> dict[str, int]:
        """How many runs of this engine are in each status."""
        with self._lock:
            return dict(self._counts)

    def running_futures(self, limit: int | None = None) -> list[Future]:
        """The futures of this engine's tasks that run now or are stopping, in the order they started, the first
        ``limit`` of them (the panel lists them, each with a stop button)."""
        with self._lock:
            return [run.fut for run in itertools.islice(self._active, limit)]


def _placeholder(_: Future) -> None:
    return None
