"""On a Dask worker: leave the worker's thread pool while a task waits (for tasks it submitted, for a limit)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

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


def acquire_limits(demands: dict, name: str, call: StoppableCall, worker: Any, key: str) -> list:
    """The task's cluster limits (kept by the scheduler), then its machine-wide limits for the other names;
    ``TaskStopped`` if ``call`` is stopped while it waits for them (its thread, blocked in the wait, would not see an
    exception raised in it before the limits came)."""
    from ..machine_limits.api import acquire_all_unless
    from .dask_worker_cluster_limits import acquire_blocking

    with seceded():  # waiting for a limit must not hold a worker thread
        cluster, rest = acquire_blocking(worker, demands, key, name, lambda: call.stopped)
        try:
            holdings = acquire_all_unless(rest, lambda: call.stopped, task=name) if rest else []
        except BaseException:
            for lease in cluster:
                lease.release()
            raise
    if holdings is None:
        for lease in cluster:
            lease.release()
        raise TaskStopped(f"task {name!r} was stopped while it waited for its limits")
    return [*cluster, *holdings]
