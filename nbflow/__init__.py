"""nbflow: parallel notebook pipelines on Dask worker resources or machine-wide limits.

Only light modules are imported here; the Dask engine, the widget and the magics load on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .context import TaskContext, current
from .engines import engine, use
from .errors import (
    EngineConfigError,
    LimitsDirError,
    LimitTimeout,
    NbflowError,
    NoSuchLimit,
    OutOfMemory,
    RemoteError,
    ResourceSpecError,
    SchedulerUnreachable,
    TaskArgumentError,
    TaskStopped,
    TaskTimeout,
    Unsatisfiable,
    UpstreamError,
    WorkerDied,
)
from .futures import STOP_GRACE, Future, as_completed, gather, wait
from .limit_scopes import limit, remove_limit
from .machine_limits import LimitStatus, concurrency, limits
from .options import TaskOptions
from .retry_policy import backoff
from .snapshot import Occupancy
from .tasks import Task, task

__version__ = "0.1.0"

__all__ = [
    "EngineConfigError",
    "Future",
    "LimitStatus",
    "LimitTimeout",
    "LimitsDirError",
    "NbflowError",
    "NoSuchLimit",
    "OutOfMemory",
    "Occupancy",
    "RemoteError",
    "ResourceSpecError",
    "SchedulerUnreachable",
    "Task",
    "TaskArgumentError",
    "TaskContext",
    "TaskOptions",
    "TaskStopped",
    "TaskTimeout",
    "Unsatisfiable",
    "UpstreamError",
    "WorkerDied",
    "as_completed",
    "backoff",
    "cache_clear",
    "cache_entries",
    "concurrency",
    "current",
    "debug",
    "engine",
    "gather",
    "limit",
    "limits",
    "remove_limit",
    "load_ipython_extension",
    "monitor",
    "occupancy",
    "stop",
    "task",
    "use",
    "wait",
]


def stop(futures: Future | Iterable[Future], grace: float | str = STOP_GRACE) -> int:
    """``Future.stop(grace)`` for each of ``futures`` (one future, or an iterable of them); returns how many are
    cancelled or stopping. Returns at once: ``nbflow.wait(futures)`` waits until they have really stopped."""
    items = [futures] if isinstance(futures, Future) else list(futures)
    return sum(f.stop(grace) for f in items)


def debug(future: Future, commands: Iterable[str] | None = None) -> None:
    """Open pdb post-mortem at the line of the task's code that raised (for a task that never ran because an
    upstream task failed: that task). ``commands``: run those pdb commands instead of asking, printing each with its
    answer (``nbflow.debug(fut, commands=["p y", "where"])``, for notebooks run unattended)."""
    from .debugging.kernel_debugger import debug as run

    run(future, commands if commands is None or isinstance(commands, (str, bytes)) else list(commands))


def cache_entries() -> list[Any]:
    """The cached task results on this machine, most recently used first (``nbflow cache ls``)."""
    from .caching import entries

    return entries()


def cache_clear(name: str | None = None) -> int:
    """Delete the cached results of task ``name``, or all of them (``nbflow cache clear``); how many."""
    from .caching import clear

    return clear(name)


def occupancy() -> Occupancy:
    """A JSON-able snapshot of the current engine's workers, resources, tasks and limits."""
    return engine().occupancy()


def monitor(interval: float = 0.5) -> Any:
    """A live widget of ``occupancy()``, refreshed every ``interval`` seconds until closed."""
    from .panel import Monitor

    return Monitor(interval=interval)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbflow``: register ``%nbflow`` and ``%%nbflow``."""
    from .magics import load_ipython_extension as load

    load(ipython)
