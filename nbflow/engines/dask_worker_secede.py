"""On a Dask worker: leave the worker's thread pool while a task waits (for tasks it submitted, for a limit)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from distributed import rejoin, secede

from ..errors import TaskStopped
from ..thread_stop import StoppableCall

_state = threading.local()  # per task thread: depth of nested waits, so we secede and rejoin once


def secede_once() -> None:
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    if depth == 0:
        secede()


def rejoin_once() -> None:
    _state.depth -= 1
    if _state.depth == 0:
        rejoin()


@contextlib.contextmanager
def seceded() -> Iterator[None]:
    """Leave the worker's thread pool while this task waits (nested tasks, a limit); rejoin after."""
    secede_once()
    try:
        yield
    finally:
        rejoin_once()


def acquire_limits(demands: dict, name: str, call: StoppableCall) -> list:
    """The task's machine-wide limits; ``TaskStopped`` if ``call`` is stopped while it waits for them (its thread,
    blocked in the wait, would not see an exception raised in it before the limits came)."""
    from ..machine_limits.api import acquire_all_unless

    with seceded():  # waiting for a machine-wide limit must not hold a worker thread
        holdings = acquire_all_unless(demands, lambda: call.stopped, task=name)
    if holdings is None:
        raise TaskStopped(f"task {name!r} was stopped while it waited for its limits")
    return holdings
