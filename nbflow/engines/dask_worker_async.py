"""On a Dask worker: the function Dask runs for every attempt of an async nbflow task.

Dask runs a coroutine function on the worker's event loop. ``run_task_async`` at once leaves the worker's task
slots, as a seceded task does, so a coroutine waiting on the network holds neither a thread nor a slot: thousands
wait at once on a worker with two threads. Its code runs on the worker's loop: a blocking call in it stalls the
worker (``await asyncio.to_thread(...)`` is the way to call one).
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from distributed import get_worker
from distributed.worker_state_machine import SecedeEvent

from .. import context, sidechannel
from ..errors import TaskStopped
from . import dask_worker_stops as stops
from .async_loop import Deadline
from .attempt import Attempt
from .core import bind
from .dask_attempt_keys import task_key
from .dask_worker_engine import worker_engine
from .dask_worker_events import send_side, starts
from .dask_worker_task import pick_gpus, reported, unpack


class _Cancel:
    """How a client's ``stop`` stops a coroutine: cancel its asyncio task."""

    __slots__ = ("task", "stopped")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self.task.get_loop().call_soon_threadsafe(self.task.cancel)


async def run_task_async(packed: bytes, dask_key: str, args: tuple, kwargs: dict, on_unsatisfiable: str) -> Any:
    """``dask_worker_task.run_task`` for an async task (its Dask key is passed in: no worker thread knows it)."""
    task = unpack(packed)
    opts = task.options
    worker = get_worker()
    sidechannel.install(functools.partial(send_side, worker))
    bind(worker_engine(worker, on_unsatisfiable))  # (the loop's thread: nested submits of its coroutines go there)
    worker.handle_stimulus(SecedeEvent(key=dask_key, compute_duration=0.0, stimulus_id=f"nbflow-async-{time.time()}"))
    starts.begin(worker, dask_key)
    cancel = stops.begin(dask_key, _Cancel(asyncio.current_task()))
    attempt, deadline = None, Deadline(opts.name, opts.timeout)
    try:
        key, number = task_key(dask_key)
        attempt = Attempt(number, key, opts.name)
        if opts.limits:
            attempt.holdings = await acquire_limits_async(worker, opts.limits, dask_key, opts.name)
        pick_gpus(worker, attempt, opts.resources.get("GPU", 0), dask_key)
        where, holds = str(worker.name), opts.held() if opts.limits else opts.resources
        ends = time.monotonic() + opts.timeout if opts.timeout is not None else None
        with context.running_coroutine(attempt.context(where, holds, ends)):
            value = await deadline.run(task.fn(*args, **kwargs), attempt.release)
        if cancel.stopped:  # it caught the cancellation and returned
            return None
        return value
    except asyncio.CancelledError:
        if cancel.stopped:  # the client stopped it, and counts it cancelled
            return None
        raise
    except TaskStopped:
        if cancel.stopped:
            return None
        raise
    except BaseException as exc:  # (SystemExit, KeyboardInterrupt too: raised as they are, Dask ends the worker)
        failed = reported(exc, args, kwargs, worker, dask_key)
    finally:
        stops.end(dask_key)
        starts.end(dask_key)
        if attempt is not None and not deadline.late:  # (a timed-out coroutine releases them at its end)
            attempt.release()
    raise failed


async def acquire_limits_async(worker: Any, demands: dict, dask_key: str, name: str) -> list:
    """The task's cluster limits (awaiting the scheduler on the worker's loop), then its machine-wide limits."""
    from ..machine_limits.api import acquire_all_async
    from .dask_worker_cluster_limits import acquire_async

    cluster, rest = await acquire_async(worker, demands, dask_key, name)
    try:
        return [*cluster, *(await acquire_all_async(rest, task=name) if rest else ())]
    except BaseException:
        for lease in cluster:
            lease.release()
        raise
