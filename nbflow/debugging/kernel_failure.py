"""In the kernel: what a failed task's future keeps of its failed attempt, and running it again (``Future.replay``).

The lifecycle attaches a ``Failure`` to a future when it settles it with the exception of an attempt that ran
(``Future._failure``); a task that never ran (an upstream failed) has none, and debugging it follows its
``UpstreamError`` to the task that really failed (``futures.failed_origin``). The failure keeps the attempt's
traceback (threads: the real one), its report (``worker_snapshot.report``: a snapshot of its frames where it ran
in another process) and its inputs as they were submitted (dependency futures included), unless they were over
``INPUTS_BOUND``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import NbflowError, OutOfMemory, WorkerDied
from .worker_snapshot import INPUTS_BOUND

if TYPE_CHECKING:
    from ..options import Runnable


class Failure:
    """The failed attempt ``number`` of ``task`` on ``worker``."""

    __slots__ = ("task", "number", "worker", "traceback", "report", "inputs", "no_inputs", "holds", "when", "died")

    def __init__(
        self,
        task: Runnable,
        number: int,
        worker: str | None,
        exc: BaseException,
        report: dict | None,
        inputs: tuple[tuple, dict],
        holds: Mapping[str, float],
    ) -> None:
        self.task = task
        self.number = number
        self.worker = worker
        self.traceback: TracebackType | None = exc.__traceback__  # as raised: a later ``result()`` prepends its frames
        self.report = report or {}
        self.holds = dict(holds)  # the machine limits a replay holds, as a direct call of the task would
        self.when = time.monotonic()
        self.died = (  # the attempt's process was killed: replaying it in the kernel would kill the kernel
            "was killed for its memory (OutOfMemory)"
            if isinstance(exc, OutOfMemory)
            else "died (WorkerDied)"
            if isinstance(exc, WorkerDied)
            else None
        )
        size = self.report.get("inputs_bytes", 0)
        self.inputs: tuple[tuple, dict] | None = inputs if size <= INPUTS_BOUND else None
        self.no_inputs = (
            ""
            if self.inputs is not None
            else (
                f"its inputs (about {size / 2**20:.0f} MiB) were over the {INPUTS_BOUND // 2**20} MiB a failed task"
                " keeps for replay"
            )
        )

    @property
    def name(self) -> str:
        return self.task.options.name

    def replay(self) -> Any:
        """Run the failed attempt again here, with its inputs; returns or raises what the task's function does."""
        __tracebackhide__ = True  # (IPython leaves nbflow's frames out of the replayed task's traceback)
        from ..engines.attempt import Attempt, run_here
        from ..futures import substitute, upstream_value

        if self.inputs is None:
            raise NbflowError(f"task {self.name!r} cannot be replayed: {self.no_inputs}")
        if self.died is not None:
            raise NbflowError(
                f"task {self.name!r} is not replayed in the kernel: its process {self.died}, and would take the"
                " kernel down the same way; submit it again to run it where it ran"
            )
        args, kwargs = substitute(self.inputs, upstream_value)
        fn = self.task.fn
        fn = getattr(fn, "_nbflow_replay", fn)  # a task cell runs in the foreground (``CellCode._nbflow_replay``)
        if getattr(self.task, "is_async", False):  # an async task: its coroutine is run to its end
            fn = functools.partial(_to_end, fn)
        attempt = Attempt(self.number, f"{self.name}-replay", self.name)
        return run_here(fn, args, kwargs, self.holds, attempt, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _to_end(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """An async task's function, called like a sync one: its coroutine run to its end (``run_to_end``)."""
    from ..engines.async_loop import run_to_end

    return run_to_end(lambda: fn(*args, **kwargs))
