"""``nbflow.current()``: inside a running task, what the task is and what it holds (its GPUs above all).

Each engine sets it around the attempt it runs (in the thread that runs it, in the child process, on the
Dask worker); task cells see their own through ``nbflow.current()`` in the cell.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence

_local = threading.local()
_in_coroutine: contextvars.ContextVar = contextvars.ContextVar("nbflow_task", default=None)  # an async task's


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """The running task: ``gpus`` are ordinals within this process's visible devices (``cuda:{gpus[0]}``);
    ``cuda_visible_devices`` the same devices' ids, for a subprocess the task starts."""

    key: str
    name: str
    attempt: int  # 0 for the first
    worker: str | None
    resources: Mapping[str, float]  # what it holds: resources and limits, {name: amount}
    gpus: tuple[int, ...] = ()
    cuda_visible_devices: str | None = None  # None when it holds no GPU
    deadline: float | None = None  # ``time.monotonic()`` when its timeout ends the attempt; None without a timeout


def current() -> TaskContext | None:
    """The task running in this thread (or this asyncio task, for an async task), or ``None`` outside a task."""
    here = getattr(_local, "context", None)
    mine = _in_coroutine.get()  # (context, this thread's when it began): an async task's, in its asyncio task
    if mine is not None and (here is None or here is mine[1]):
        # many async tasks share one event loop's thread: theirs is in their asyncio task's context; it also wins
        # over the thread's task it began in (``await task(x)`` in a child process, ``asyncio.run`` in a sync task),
        # not over one this thread entered since (a direct call of a sync task inside the coroutine)
        ctx = mine[0]
        if isinstance(ctx, tuple):
            ctx = of(*ctx)
            _in_coroutine.set((ctx, mine[1]))
        return ctx
    if isinstance(here, tuple):  # built on first use: most tasks never ask (kept aside: ``here`` stays as entered)
        built = getattr(_local, "built", None)
        if built is None or built[0] is not here:
            built = _local.built = (here, of(*here))
        return built[1]
    return here


def of(
    key: str,
    name: str,
    attempt: int,
    worker: str | None,
    holds: Mapping[str, float],
    gpus: Sequence[int],
    ids: str | None = None,
    deadline: float | None = None,
) -> TaskContext:
    """The context of a task holding the devices ``gpus`` (ordinals of this process's visible devices), which
    the engine named ``ids`` (``devices.physical`` of the device list it read once)."""
    return TaskContext(key, name, attempt, worker, dict(holds), tuple(gpus), ids, deadline)


def enter(context: TaskContext | tuple | None) -> object:
    """Make ``context`` (or the arguments of ``of`` for it) this thread's current task; returns what ``leave``
    needs to restore the one before (a task's direct call of another task nests)."""
    saved = getattr(_local, "context", None)
    _local.context = context
    return saved


def leave(saved: object) -> None:
    _local.context = saved


def in_coroutine() -> bool:
    """Whether this code runs as part of an async task's coroutine (or a thread it started: see its callers)."""
    return _in_coroutine.get() is not None


def set_coroutine(context: TaskContext | tuple | None) -> contextvars.Token:
    """In an async task's asyncio task: ``context`` is its current task from now on (asyncio tasks it creates
    meanwhile inherit it, as parts of the same nbflow task; other asyncio tasks on the loop never see it); ``None``:
    none. Returns what restores the one before (``running_coroutine``)."""
    return _in_coroutine.set(None if context is None else (context, getattr(_local, "context", None)))


@contextlib.contextmanager
def running_coroutine(context: TaskContext | tuple | None) -> Iterator[None]:
    """``set_coroutine`` for a block, in an asyncio task that goes on after it."""
    token = set_coroutine(context)
    try:
        yield
    finally:
        _in_coroutine.reset(token)


def report_failure(exc: BaseException, report: dict) -> None:
    """Inside a task about to raise ``exc``: what the kernel shows beside it (a task cell's output so far, its
    traceback against the cell's source). Engines carry it with the failed attempt, across processes and Dask,
    and the exception stays the user's own."""
    _local.report = (exc, report)


def take_report(exc: BaseException) -> dict | None:
    """(Engines) the report left in this thread for ``exc``, once; ``None`` if the task left none for it."""
    left = getattr(_local, "report", None)
    if left is None:
        return None
    _local.report = None
    return left[1] if left[0] is exc else None


@contextlib.contextmanager
def running(context: TaskContext | tuple | None) -> Iterator[None]:
    """``enter`` and ``leave`` around a block."""
    saved = enter(context)
    try:
        yield
    finally:
        leave(saved)
