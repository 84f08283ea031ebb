"""On a Dask worker: a task's cluster limits, asked of the scheduler (``dask_scheduler_limits``) in one call.

The scheduler answers when every cluster limit among the task's limits is granted; the names it did not take are
not cluster limits, and go to this machine's limits. An async task awaits the call on the worker's loop; a sync task's
thread (seceded meanwhile) waits on it in turns, so that a stop ends the wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import TaskStopped, Unsatisfiable
from .dask_scheduler_limits import RELEASE_OP

GIVE_UP_POLL = 0.5  # seconds a sync task's thread waits in one turn before it asks whether it was stopped
RPC_RELEASE_BELOW = 64  # acquires in flight on this worker (each holds a connection of its pool, 512 by default)
_in_flight = [0]  # acquires waiting on the scheduler now (changed and read in the worker's loop only)


class ClusterLease:
    """A task attempt's cluster limits, released by telling the scheduler (no reply awaited)."""

    __slots__ = ("worker", "key", "names")
    name = None  # (not a machine ``GPU`` holding: ``devices.held`` looks for that name)
    slots = ()

    def __init__(self, worker: Any, key: str, names: list[str]) -> None:
        self.worker, self.key, self.names = worker, key, names

    def release(self) -> None:
        send_release(self.worker, self.key)


def send_release(worker: Any, key: str) -> None:
    """Drop what ``key`` holds or waits for on the scheduler, from any thread, without waiting for the reply."""
    try:
        worker.loop.add_callback(_release, worker, key)
    except RuntimeError:  # the worker's loop is closed: the scheduler drops its leases when it leaves
        pass


async def _release(worker: Any, key: str) -> None:
    """A call of its own (the fastest way), unless many waits hold this worker's connections to the scheduler: then
    on the worker's stream, which never waits for a free connection (releases must not wait behind waiters)."""
    if _in_flight[0] < RPC_RELEASE_BELOW:
        try:
            await worker.scheduler.nbflow_limits_release(key=key, worker=worker.address)
            return
        except Exception:  # the connection broke: try the stream
            pass
    stream = worker.batched_stream
    if stream is not None and not stream.closed():
        stream.send({"op": RELEASE_OP, "key": key})


async def acquire_async(worker: Any, demands: Mapping[str, float], key: str, task: str) -> tuple[list, dict]:
    """The cluster limits among ``demands`` (a ``ClusterLease`` in a list, or an empty list) and the demands left
    for this machine's limits. ``TaskStopped`` if the scheduler withdrew the wait (its key is done with)."""
    _in_flight[0] += 1
    try:
        reply = await worker.scheduler.nbflow_limits_acquire(
            demands=dict(demands), key=key, worker=worker.address, task=task
        )
    except BaseException:  # cancelled (the task was stopped), or the scheduler is gone: nothing stays held
        send_release(worker, key)
        raise
    finally:
        _in_flight[0] -= 1
    if reply is None:  # no cluster limits on this scheduler (no nbflow client installed them)
        return [], dict(demands)
    if "error" in reply:
        raise Unsatisfiable(reply["error"])
    if reply.get("withdrawn"):
        raise TaskStopped(f"task {task!r} was withdrawn while it waited for its cluster limits")
    taken = reply["taken"]
    rest = {name: amount for name, amount in demands.items() if name not in taken}
    return ([ClusterLease(worker, key, taken)] if taken else []), rest


def acquire_blocking(
    worker: Any, demands: Mapping[str, float], key: str, task: str, stopped: Callable[[], bool]
) -> tuple[list, dict]:
    """``acquire_async`` from a task's thread; ``TaskStopped`` once ``stopped()`` says so (the wait is withdrawn)."""
    future = asyncio.run_coroutine_threadsafe(acquire_async(worker, demands, key, task), worker.loop.asyncio_loop)
    while True:
        try:
            return future.result(GIVE_UP_POLL)
        except concurrent.futures.TimeoutError:
            if stopped():
                future.cancel()
                send_release(worker, key)
                raise TaskStopped(f"task {task!r} was stopped while it waited for its cluster limits") from None
