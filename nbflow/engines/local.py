"""The embedded local engine: a pool of threads (or processes) on this machine, with machine-wide limits.

Placing an attempt: a task with ``resources``/``limits`` first waits in the grant stage (*waiting*) until
the machine limits of those names give it its share — without holding a pool thread — then goes to the
pool ahead of tasks that hold nothing. When the attempt returns, its share is released before the attempt is
reported ended, so whoever sees such a task done sees its share free. A timeout is the exception: it reports the
attempt ended at once, and the share stays held until the attempt really stops — a killed child process once it
is dead, a thread (which cannot be stopped) when its function returns.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import context, devices, retry_policy
from ..errors import EngineConfigError, TaskStopped, TaskTimeout
from ..futures import STOP_GRACE, set_block_hook
from ..machine_limits.api import check_demands
from ..options import Runnable
from ..snapshot import Occupancy, ResourceUse, limits_snapshot
from ..thread_stop import StoppableCall
from .attempt import Attempt, not_a_coroutine
from .core import Engine, Run, bind
from .grants import Grants
from .threadpool import ThreadPool
from .timers import Timers

_engine_ids = itertools.count(1)


class _LocalRun(Run):
    """A run with what the grant stage and the pool need."""

    __slots__ = ("demands", "line", "on_loop")

    def __init__(self, task: Runnable, fut: Any, args: tuple, kwargs: dict, has_deps: bool, attempt: Attempt) -> None:
        super().__init__(task, fut, args, kwargs, has_deps, attempt)
        opts = task.options
        self.demands = task.options.held() if opts.resources or opts.limits else None
        self.line = tuple(sorted(self.demands)) if self.demands else ()
        self.on_loop = False  # an async task in this process: its coroutine runs on the engine's event loop


class _LocalAttempt(Attempt):
    """An attempt in a pool thread: also how its timeout and ``stop()`` stop it."""

    __slots__ = ("timer", "lent", "child", "call", "halted", "kills", "coroutine", "expired")

    def __init__(self, number: int, key: str, name: str) -> None:
        super().__init__(number, key, name)
        self.timer: list | None = None
        self.lent = False  # timed out while its thread still runs it: the thread's slot is lent out
        self.child: Any = None  # the child process running it (process pool)
        self.call = StoppableCall()  # its function's call in the pool thread
        self.halted = False  # ``stop()``: its child (if any) got SIGTERM and must not be reused
        self.kills: tuple = ()  # the timers that SIGKILL its child once a stop's grace is over
        self.coroutine: Any = None  # an async task's asyncio task on the event loop, while it runs
        self.expired = False  # an async task's timeout cancelled it


class LocalEngine(Engine):
    """Threads (default) or processes on this machine; ``resources`` occupy machine limits of the same name.

    ``nbflow.use("local", workers=8, processes=False)``.
    """

    kind = "local"
    Run = _LocalRun
    Attempt = _LocalAttempt

    def __init__(self, workers: int = 8, processes: bool = False) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise EngineConfigError(f"workers must be a whole number >= 1, got {workers!r}")
        name = f"nbflow-local{next(_engine_ids)}"
        super().__init__(name)
        self.workers = workers
        self.processes = bool(processes)
        self.host = socket.gethostname()
        self._pool = ThreadPool(workers, self._execute, self._thread_setup, self._thread_teardown, name)
        self._grants = Grants(self._granted, self._grant_failed, name)
        self._timeouts = Timers(name + "-timeouts")
        self._held: dict[str, float] = {}  # amounts this engine holds now, per limit name
        self._local = threading.local()
        self._loop: Any = None  # the event loop of async tasks (``async_loop``), made with the first one
        self._name = name

    # --- placing attempts --------------------------------------------------------------------------

    def _check(self, task: Runnable) -> None:
        opts = task.options
        if opts.max_memory is not None:  # (the watch's module is imported only for a bounded task)
            from .memory_watch import check_watchable

            check_watchable(task.name, self.processes)
        if opts.resources or opts.limits:
            demands = task.options.held()
            check_demands(demands)
            if "GPU" in demands:  # slot k is the k-th listed device: refuse slots that have none
                devices.check_capacity(_capacity_or_zero("GPU"), self.cuda_visible)
            with self._lock:
                for name in demands:
                    self._held.setdefault(name, 0.0)

    def _holds(self, task: Runnable) -> Mapping[str, float]:
        return task.options.held()

    def _new_run(self, task: Runnable, args: tuple, kwargs: dict) -> _LocalRun:
        run = super()._new_run(task, args, kwargs)
        run.on_loop = getattr(task, "is_async", False) and not self.processes  # (a child runs its own coroutine)
        return run

    def _place(self, run: _LocalRun) -> None:
        if run.demands:
            self._waiting(run)
            self._grants.put(run)
        elif not (self._spawn(run) if run.on_loop else self._pool.put(run)):
            self._abandon(run)

    def _granted(self, run: _LocalRun, holdings: list) -> None:
        """The grant stage took ``run``'s limits: it goes to the pool ahead of tasks that hold nothing."""
        self._count_held(holdings, +1)
        run.attempt.holdings = holdings
        if run.fut.cancelled():
            self._release(run.attempt)
            return
        self._queued(run)
        if not (self._spawn(run) if run.on_loop else self._pool.put(run, urgent=True)):
            self._release(run.attempt)
            self._abandon(run)

    def _withdraw(self, run: _LocalRun) -> None:
        """Cancelled or stopped before it ran: if its grant sleeps for a rate's token holding its slot, it gives both
        back now rather than at the end of its turn."""
        if run.demands:
            from ..machine_limits.wake import nudge

            nudge()

    def _grant_failed(self, run: _LocalRun, exc: BaseException | None) -> None:
        """The grant stage gave up on ``run``: ``exc`` (e.g. the limit was removed), or ``None`` when closing."""
        if exc is None:
            self._abandon(run)
        else:
            self._ended(run, run.attempt, exc=exc)

    # --- running attempts --------------------------------------------------------------------------

    def _thread_setup(self) -> None:
        """In every pool thread: nested submits go to this engine, blocking waits lend the slot."""
        bind(self)
        set_block_hook(self._pool.lent)

    def _thread_teardown(self) -> None:
        child = getattr(self._local, "child", None)
        if child is not None:
            child.close()

    def _execute(self, run: _LocalRun) -> None:
        attempt = run.attempt  # (a retry makes ``run.attempt`` another one: this one stays this thread's)
        thread = threading.current_thread().name
        if not self._started(run, thread):  # cancelled while queued
            self._release(attempt)
            return
        value = exc = inputs = None
        try:
            inputs = self._arguments(run)
            call, ctx = self._prepare(run, attempt, thread, *inputs)
            timeout = run.task.options.timeout
            if timeout is not None:
                attempt.timer = self._timeouts.call_later(timeout, functools.partial(self._timed_out, run, attempt))
            saved = context.enter(ctx)
            try:
                value = not_a_coroutine(attempt.call.run(call), run.name)
            finally:
                context.leave(saved)
        except BaseException as error:  # SystemExit, KeyboardInterrupt raised by the task end it too
            from ..debugging.worker_snapshot import report

            exc = error
            attempt.report = report(error, inputs, frames=False)  # (a child's snapshot of its frames comes with it)
        self._stop_timer(attempt)
        self._release(attempt)
        self._ended(run, attempt, value, exc)

    def _spawn(self, run: _LocalRun) -> bool:
        """Start an async task's attempt on the engine's event loop; False once closing."""
        if self._loop is None:
            from .async_loop import EventLoopThread

            with self._lock:
                if self._loop is None:
                    self._loop = EventLoopThread(
                        f"{self._name}-async", self._run_coroutine, functools.partial(bind, self)
                    )
        return self._loop.spawn(run, run.attempt)

    async def _run_coroutine(self, run: _LocalRun, attempt: _LocalAttempt) -> None:
        """An async task's attempt, on the event loop: ``_execute`` for a coroutine. Its timeout and ``stop()``
        cancel it (``CancelledError`` is raised in it, so its ``finally`` blocks and ``async with`` exits run)."""
        import asyncio

        where = self._loop.name
        if not self._started(run, where):
            self._release(attempt)
            return
        value = exc = inputs = None
        attempt.coroutine = asyncio.current_task()  # (read and written on the loop only: ``_cancel``, ``_expire``)
        timer = None
        try:
            if attempt.halted:  # stopped before it was let run
                raise asyncio.CancelledError
            inputs = self._arguments(run)
            if attempt.holdings:
                attempt.pick_gpus(self.cuda_visible)
            timeout = run.task.options.timeout
            deadline = time.monotonic() + timeout if timeout is not None else None
            if timeout is not None:  # (the timers' thread: it fires even while a coroutine holds the loop)
                timer = self._timeouts.call_later(timeout, functools.partial(self._expire, run, attempt))
            context.set_coroutine(attempt.context(where, run.demands or {}, deadline))  # (this asyncio task's own)
            try:
                value = await run.task.fn(*inputs[0], **inputs[1])
            finally:
                context.set_coroutine(None)
            if attempt.expired or attempt.halted:  # it caught the cancellation and returned: it still timed out
                raise asyncio.CancelledError
        except BaseException as error:
            from ..debugging.worker_snapshot import report

            exc = self._cancelled_why(run, attempt, error)
            attempt.report = report(exc, inputs, frames=False)
        finally:
            if timer is not None:
                self._timeouts.cancel(timer)
            attempt.coroutine = None
        self._release(attempt)  # (after a timeout: only now, when the coroutine has really ended)
        if exc is not None and retry_policy.is_function(run.task.options.retry_on):
            # deciding a retry runs the user's predicate: not on the loop, where every async task would wait for it
            threading.Thread(target=self._ended, args=(run, attempt, value, exc), name=f"{self._name}-retry").start()
            return
        self._ended(run, attempt, value, exc)

    def _cancelled_why(self, run: _LocalRun, attempt: _LocalAttempt, error: BaseException) -> BaseException:
        """What an async attempt that raised ``error`` ended with: its ``TaskTimeout`` or ``TaskStopped`` if it was
        cancelled for them (whatever the coroutine made of the cancellation), else ``error``."""
        if attempt.expired:
            timeout = run.task.options.timeout
            return TaskTimeout(f"task {run.name!r} ran longer than its timeout of {timeout:g} s")
        if attempt.halted:
            return TaskStopped()
        return error

    def _expire(self, run: _LocalRun, attempt: _LocalAttempt) -> None:
        """(The timers' thread) an async attempt's timeout: it ends now, with ``TaskTimeout``, and its coroutine is
        cancelled as soon as the loop is free (its limits are released once the coroutine has ended: one that
        swallows the cancellation keeps them until it returns, as a thread that cannot be stopped does)."""
        attempt.expired = True
        self._loop.call(self._cancel, attempt)
        self._ended(run, attempt, exc=self._cancelled_why(run, attempt, TimeoutError()))

    @staticmethod
    def _cancel(attempt: _LocalAttempt) -> None:
        """(On the event loop) cancel an async attempt's coroutine, if it runs (one that has not begun sees
        ``halted`` or ``expired`` when it does)."""
        if attempt.coroutine is not None:
            attempt.coroutine.cancel()

    def _prepare(
        self, run: _LocalRun, attempt: _LocalAttempt, thread: str, args: tuple, kwargs: dict
    ) -> tuple[Callable[[], Any], tuple | None]:
        """Pick where the attempt runs (this thread, or this thread's child); the task's context, with the GPUs its
        ``GPU`` share hands out."""
        fn = run.task.fn
        attempt.pick_gpus(self.cuda_visible)
        timeout = run.task.options.timeout  # (the deadline is taken before the timer is armed: never after it fires)
        deadline = time.monotonic() + timeout if timeout is not None else None
        if not self.processes:
            return functools.partial(fn, *args, **kwargs), attempt.context(thread, run.demands or {}, deadline)
        child = getattr(self._local, "child", None)
        if child is None:
            from .procpool import ChildProcess

            child = self._local.child = ChildProcess()
        env = {"CUDA_VISIBLE_DEVICES": attempt.ids} if attempt.ids else {}  # the child sees only its own
        run.fut.worker = f"{thread}/pid {child.start(env)}"
        ctx = context.of(*attempt.context(run.fut.worker, run.demands or {}, deadline))
        ctx = dataclasses.replace(ctx, gpus=tuple(range(len(attempt.gpus))))  # ordinals within the child's devices
        with self._lock:
            attempt.child = child
        keep = [fd for h in attempt.holdings if (fd := h.fileno()) >= 0]  # (a rate's token holds no file)
        bound, watch = run.task.options.max_memory, None
        if bound is not None:
            from .memory_watch import watcher

            watch = functools.partial(watcher.watch, bound, run.name)
        if getattr(run.task, "is_async", False):  # the child runs the coroutine on an event loop of its own
            from .procpool import run_coroutine

            fn = functools.partial(run_coroutine, fn)
        return functools.partial(child.run, fn, args, kwargs, env, keep, ctx, watch), None

    def _stop_timer(self, attempt: _LocalAttempt) -> None:
        """The attempt returned: disarm its timeout, and take back the slot if the timeout had lent it."""
        with self._lock:
            if attempt.timer is not None:
                self._timeouts.cancel(attempt.timer)
                attempt.timer = None
            lent, attempt.lent = attempt.lent, False
            child, attempt.child = attempt.child, None
            for kill in attempt.kills:  # it is gone: no timer (nor its thread) waits out a long grace for nothing
                self._timeouts.cancel(kill)
        if lent:
            self._pool.unlend()
        if child is not None and attempt.halted:  # it survived SIGTERM: a child that got one is not reused
            self._local.child = None
            child.close()

    def _timed_out(self, run: _LocalRun, attempt: _LocalAttempt) -> None:
        """In the timer thread: end the attempt now. A child process is killed (its share is released once it
        is dead; an async task's gets SIGTERM, then SIGKILL ``STOP_GRACE`` seconds later, as for ``stop()``); a thread
        cannot be stopped, so its slot is lent out and its share kept until it returns."""
        with self._lock:
            if attempt.timer is None:  # returned meanwhile
                return
            attempt.timer = None
            child = attempt.child
            if child is None:
                attempt.lent = True
                self._pool.lend()
            elif not getattr(run.task, "is_async", False):
                child.kill()
                child = None
        if child is not None:  # an async task's child: SIGTERM cancels its coroutine (its finally blocks run) first
            self._halt(run, attempt, STOP_GRACE)
        timeout = run.task.options.timeout
        exc = TaskTimeout(f"task {run.name!r} ran longer than its timeout of {timeout:g} s")
        self._ended(run, attempt, exc=exc)

    def _halt(self, run: _LocalRun, attempt: _LocalAttempt, grace: float) -> None:
        """``stop()``: a child process gets SIGTERM, then SIGKILL after ``grace`` seconds (its share is released
        once it is dead; stopped again, only the shorter grace counts); a thread gets ``TaskStopped`` at its next
        bytecode (its share once it returns)."""
        if run.on_loop:  # an async task: cancelled on its loop
            attempt.halted = True
            self._loop.call(self._cancel, attempt)
            return
        with self._lock:
            again, attempt.halted = attempt.halted, True
            child = attempt.child
            if child is None:  # under the lock: a child set after this cannot start the call, which now refuses
                attempt.call.stop()
                return
        if not again:
            child.terminate()
        kill = self._timeouts.call_later(grace, functools.partial(self._kill_halted, attempt, child))
        with self._lock:
            if attempt.child is child:
                attempt.kills += (kill,)
                return
        self._timeouts.cancel(kill)  # it ended meanwhile

    def _kill_halted(self, attempt: _LocalAttempt, child: Any) -> None:
        """The grace period is over: SIGKILL the child if it still runs that attempt."""
        with self._lock:
            if attempt.child is child:
                child.kill()

    def _release(self, attempt: Attempt) -> None:
        self._count_held(attempt.release(), -1)

    def _count_held(self, holdings: list, sign: int) -> None:
        if holdings:
            with self._lock:
                for h in holdings:
                    self._held[h.name] += sign * h.amount

    # --- introspection and shutdown ------------------------------------------------------------------

    def occupancy(self) -> Occupancy:
        """This machine as one worker: every limit this engine touched plus the machine's limits."""
        snapshot = limits_snapshot()
        resources: dict[str, ResourceUse] = {
            info["name"]: {"total": info["capacity"], "used": info["used"]} for info in snapshot
        }
        counts = self.task_counts()
        with self._lock:
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
                    "running": counts["running"] + counts["stopping"],  # a stopping task still holds its thread
                    "waiting": counts["waiting"],
                    "queued": self._pool.queued,
                    "gpus": [  # this kernel's tasks holding GPU slots (children run with the kernel's shares)
                        {
                            "task": holder["task"],
                            "ids": devices.physical(holder["slots"], self.cuda_visible, strict=False),
                        }
                        for info in snapshot
                        if info["name"] == "GPU"
                        for holder in info["holders"]
                        if holder["pid"] == os.getpid() and holder["slots"]
                    ],
                }
            ],
            "tasks": counts,
            "limits": snapshot,
        }

    def _shutdown(self) -> None:
        """Cancel what has not started; running tasks finish in the background, then their threads (and child
        processes) end. Their timeouts still fire."""
        self._grants.close()
        if self._loop is not None:
            self._loop.close()
        for run in self._pool.close():
            self._release(run.attempt)
            self._abandon(run)

    def __repr__(self) -> str:
        kind = "processes" if self.processes else "threads"
        return f"<nbflow.LocalEngine {self.workers} {kind}>"


def _capacity_or_zero(name: str) -> float:
    from ..errors import NbflowError
    from ..machine_limits.limit_on_disk import get_limit

    try:
        return get_limit(name).capacity() or 0.0  # (None: a rate without a capacity)
    except NbflowError:
        return 0.0
