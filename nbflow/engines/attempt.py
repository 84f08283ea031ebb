"""One attempt of a task: what every engine runs, what it holds, and what the task sees as ``nbflow.current()``.

The lifecycle (``core``) numbers the attempts of a run; the local engine runs one in a pool thread or a child
process, ``Engine.call`` in the caller's thread, and a Dask worker rebuilds it from its Dask key.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .. import context, devices
from ..errors import OutOfMemory
from ..futures import blocking
from ..thread_stop import shielded


class Attempt:
    """Attempt ``number`` (0 for the first) of the task ``key``/``name``: the limits' handles it holds (released
    once its function has really stopped) and the GPUs they hand out."""

    __slots__ = ("number", "key", "name", "holdings", "gpus", "ids", "report")

    def __init__(self, number: int, key: str, name: str) -> None:
        self.number = number
        self.key = key
        self.name = name
        self.holdings: list = []  # limits granted to it, until released
        self.gpus: Sequence[int] = ()  # ordinals within this process's visible devices
        self.ids: str | None = None  # the same devices' ids (``CUDA_VISIBLE_DEVICES`` for a subprocess)
        self.report: dict | None = None  # what it left beside its exception if it failed (``context.report_failure``)

    def pick_gpus(self, cuda_visible: str | None) -> None:
        """The GPUs a machine-wide ``GPU`` limit among its holdings hands out; ``cuda_visible`` is the device list
        the engine read once."""
        self.gpus = devices.held(self.holdings)
        self.ids = devices.physical(self.gpus, cuda_visible) if self.gpus else None

    def release(self) -> list:
        """Give back what it holds (once); returns what was given back."""
        holdings = self.holdings
        if not holdings:  # most tasks hold nothing
            return holdings
        self.holdings = []
        for holding in holdings:
            holding.release()
        return holdings

    def context(self, worker: str | None, holds: Mapping[str, float], deadline: float | None = None) -> tuple:
        """The task's ``nbflow.current()`` during this attempt on ``worker``, holding ``holds`` (resources and
        limits, ``{name: amount}``): the arguments of ``context.of``, so it is built only if the task asks."""
        return (self.key, self.name, self.number, worker, holds, self.gpus, self.ids, deadline)

    def __repr__(self) -> str:
        return f"<nbflow attempt {self.number} of {self.key}>"


class Reported(Exception):
    """A failed attempt's exception and its report as one exception, where nothing else crosses (a Dask task's
    error); the client unwraps it."""

    def __init__(self, error: BaseException, report: dict) -> None:
        super().__init__(error, report)
        self.error = error
        self.report = report

    def __str__(self) -> str:  # short: Dask replaces an exception whose text is long with its first 10,000 characters
        return f"{type(self.error).__name__} (with nbflow's report)"

    def __repr__(self) -> str:  # what a worker's log shows: the task's error, not the report's bytes
        return repr(self.error)


def retry_delay(exc: BaseException, number: int, options: Any) -> float | None:
    """After attempt ``number`` raised ``exc``: the seconds to wait before the next attempt, or ``None`` if there
    is none (``retries`` spent, or ``exc`` is not an ``Exception``: an interrupt or an exit ends the task).

    ``OutOfMemory`` is never retried: the same call on the same inputs allocates as much again, so a retry would
    only press the machine's memory once more before being killed the same way."""
    if isinstance(exc, Exception) and not isinstance(exc, OutOfMemory) and number < options.retries:
        return options.retry_delay
    return None


def run_here(
    fn: Any, args: tuple, kwargs: dict, demands: Mapping[str, float], attempt: Attempt, cuda_visible: str | None
) -> Any:
    """Run ``fn`` as ``attempt`` in the calling thread, holding the machine limits ``demands`` (and the GPUs they hand
    out) while it runs: a direct call of a task, or a replay of its failed attempt."""
    from ..machine_limits import acquire_all

    try:
        if demands:
            with blocking(), shielded:  # in a task's thread, waiting for a limit lends the thread out
                attempt.holdings = acquire_all(demands, task=attempt.name)
        attempt.pick_gpus(cuda_visible)
        with context.running(attempt.context(threading.current_thread().name, demands)):
            return fn(*args, **kwargs)
    finally:
        attempt.release()
