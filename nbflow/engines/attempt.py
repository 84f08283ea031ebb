"""One attempt of a task: what every engine runs, what it holds, and what the task sees as ``nbflow.current()``.

The lifecycle (``core``) numbers the attempts of a run; the local engine runs one in a pool thread or a child
process, ``Engine.call`` in the caller's thread, and a Dask worker rebuilds it from its Dask key.
"""

from __future__ import annotations

import random
import threading
import types
from collections.abc import Mapping, Sequence
from typing import Any

from .. import context, devices, retry_policy
from ..errors import NbflowError, OutOfMemory
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
        self.holdings: Sequence = ()  # limits granted to it, until released
        self.gpus: Sequence[int] = ()  # ordinals within this process's visible devices
        self.ids: str | None = None  # the same devices' ids (``CUDA_VISIBLE_DEVICES`` for a subprocess)
        self.report: dict | None = None  # what it left beside its exception if it failed (``context.report_failure``)

    def pick_gpus(self, cuda_visible: str | None) -> None:
        """The GPUs a machine-wide ``GPU`` limit among its holdings hands out; ``cuda_visible`` is the device list
        the engine read once."""
        self.gpus = devices.held(self.holdings)
        self.ids = devices.physical(self.gpus, cuda_visible) if self.gpus else None

    def release(self) -> Sequence:
        """Give back what it holds (once); returns what was given back."""
        holdings = self.holdings
        if not holdings:  # most tasks hold nothing
            return holdings
        self.holdings = ()
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


def not_a_coroutine(value: Any, name: str) -> Any:
    """``value``, the result of a sync task's function, unless it is a coroutine: the function was meant to be
    ``async def`` (or to await it), and a never-awaited coroutine is no result."""
    if isinstance(value, types.CoroutineType):
        value.close()
        raise NbflowError(
            f"task {name!r} returned a coroutine instead of a value: declare its function with async def (nbflow"
            " then awaits it), or await the coroutine inside it"
        )
    return value


def retry_delay(exc: BaseException, number: int, options: Any) -> float | None:
    """After attempt ``number`` raised ``exc``: the seconds to wait before the next attempt, or ``None`` if there
    is none (``retries`` spent, ``exc`` not an ``Exception`` — an interrupt or an exit ends the task — or not one
    that ``options.retry_on`` retries). The one rule every engine and a direct call apply.

    The delay is ``exc.retry_after`` when it has one (seconds >= 0; at most a backoff's ``max``), else what
    ``options.retry_delay`` gives for this retry (``retry_policy.policy_delay``). A ``retry_on`` function that raises
    ends the task: its error propagates, its ``__cause__`` being ``exc``. The caller must not hold a lock here:
    ``retry_on`` may be the user's function.

    ``OutOfMemory`` is never retried: the same call on the same inputs allocates as much again, so a retry would
    only press the machine's memory once more before being killed the same way."""
    if not isinstance(exc, Exception) or isinstance(exc, OutOfMemory) or number >= options.retries:
        return None
    if options.retry_on is not None:
        try:
            if not retry_policy.matches(options.retry_on, exc):
                return None
        except Exception as error:  # the predicate failed: the task fails with its error, caused by the task's
            error.__cause__ = exc
            raise
    return next_delay(exc, number + 1, options.retry_delay)


def next_delay(exc: BaseException, retry: int, policy: Any, rng: Any = random) -> float:
    """The seconds to wait before retry ``retry`` (1 for the first) of a task whose attempt raised ``exc``: its
    ``retry_after`` if it has one (capped at a backoff's ``max``), else what ``policy`` (``retry_delay``) gives."""
    asked = retry_policy.retry_after(exc)
    if asked is None:
        return retry_policy.policy_delay(policy, retry, rng)
    return min(asked, policy.max) if isinstance(policy, retry_policy.Backoff) else asked


def run_here(
    fn: Any, args: tuple, kwargs: dict, demands: Mapping[str, float], attempt: Attempt, cuda_visible: str | None
) -> Any:
    """Run ``fn`` as ``attempt`` in the calling thread, holding the machine limits ``demands`` (and the GPUs they hand
    out) while it runs: a direct call of a task, or a replay of its failed attempt."""
    from ..machine_limits import acquire_all

    __tracebackhide__ = True  # (IPython leaves this frame out of the task's traceback)
    try:
        if demands:
            with blocking(), shielded:  # in a task's thread, waiting for a limit lends the thread out
                attempt.holdings = acquire_all(demands, task=attempt.name)
        attempt.pick_gpus(cuda_visible)
        with context.running(attempt.context(threading.current_thread().name, demands)):
            return not_a_coroutine(fn(*args, **kwargs), attempt.name)
    finally:
        attempt.release()
