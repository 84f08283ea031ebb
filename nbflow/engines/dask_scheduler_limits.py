"""On the Dask scheduler: cluster limits (``nbflow.limit(name, ..., scope="cluster")``), kept in the scheduler's memory.

A scheduler plugin that adds handlers to the scheduler (as ``distributed.semaphore.SemaphoreExtension`` does): the
client installs it on first use (``Client.register_plugin``, idempotent: a plugin another client installed keeps its
state), or the scheduler loads it at start (``dask scheduler --preload nbflow.engines.dask_scheduler_limits``).

A lease belongs to one attempt on one worker, ``(worker address, Dask key)``. Workers ask for a task's limits with
one ``nbflow_limits_acquire`` call, answered once every cluster limit among them is granted: the call itself is the
wait, so a waiting task holds no worker thread and nothing polls. Leases go when the worker says so (a release call,
or on its stream when many waits hold its connections; also how it withdraws a wait), when the scheduler is done with
the key (``transition``) and when the worker leaves (``remove_worker``). Waiters are served first come, first served:
a large request at the head of the queue is not overtaken. A rate is a GCRA on this process's monotonic clock: a
start is granted when it is due here, so workers whose clocks disagree cannot exceed it. The state lives and dies
with the scheduler process.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

PLUGIN_NAME = "nbflow-cluster-limits"
RELEASE_OP = "nbflow-limits-release"  # a release on a worker's stream (never waits for a free connection)
_ENDED = ("memory", "erred", "released", "forgotten")  # a key in these states runs nowhere: its leases go

Ident = tuple[str, str]  # (worker address, Dask key)


class _Waiter:
    __slots__ = ("ident", "amount", "task", "future")

    def __init__(self, ident: Ident, amount: float, task: str) -> None:
        self.ident, self.amount, self.task = ident, amount, task
        self.future: asyncio.Future[str] = asyncio.get_running_loop().create_future()


class _Limit:
    """One cluster limit: its capacity and rate, its leases, its FIFO queue and the GCRA's theoretical arrival."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.capacity: float | None = None
        self.interval: float | None = None  # seconds between starts; None: no rate
        self.rate: str | None = None
        self.burst = 1
        self.used = 0.0
        self.holders: dict[Ident, dict[str, Any]] = {}
        self.queue: collections.deque[_Waiter] = collections.deque()  # waiting for capacity
        self.pacing: collections.deque[_Waiter] = collections.deque()  # holding their slot, waiting for a start
        self.timer: asyncio.TimerHandle | None = None  # wakes the pacing queue when its head's start is due
        self.tat = 0.0  # GCRA: when the next start is due if none came early (monotonic seconds)
        self.removed = False  # forgotten by remove: kept only until its holders release

    def due(self, amount: float = 1.0, now: float = 0.0) -> float:
        """GCRA: the monotonic time from which a start taking ``amount`` tokens is allowed (as on a machine: at most
        ``burst`` tokens at once, then one an interval)."""
        assert self.interval is not None
        return max(self.tat, now) + (amount - self.burst) * self.interval

    def start(self, now: float, amount: float) -> None:
        """GCRA: a start at ``now`` (at or after ``due``) taking ``amount`` tokens."""
        assert self.interval is not None
        self.tat = max(self.tat, now) + amount * self.interval

    def refused(self, amount: float) -> str | None:
        return refused(self.capacity, self.rate, self.burst, amount)

    def status(self, now: float) -> dict[str, Any]:
        next_start = 0.0
        if self.interval is not None:
            next_start = max(0.0, self.due(1.0, now) - now)
        return {
            "name": self.name,
            "capacity": self.capacity,
            "used": self.used,
            "holders": list(self.holders.values()),
            "waiting": len(self.queue) + sum(not w.future.done() for w in self.pacing),
            "rate": self.rate,
            "burst": self.burst,
            "next_start": next_start,
            "scope": "cluster",
        }


class ClusterLimits(SchedulerPlugin):
    """The scheduler's cluster limits and their handlers."""

    idempotent = True  # ``register_plugin`` by a second client keeps the first one's state
    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.limits: dict[str, _Limit] = {}
        self.active: dict[str, set[str]] = {}  # Dask key -> workers where it holds or waits for a lease
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler.handlers.update(
            {
                "nbflow_limits_set": self.set,
                "nbflow_limits_remove": self.remove,
                "nbflow_limits_acquire": self.acquire,
                "nbflow_limits_status": self.status,
                "nbflow_limits_release": self.release,
            }
        )
        scheduler.stream_handlers[RELEASE_OP] = self.release

    # -- handlers (each returns something: a scheduler without them answers None) ------------------------------

    def set(self, name: str, capacity: float | None, interval: float | None, rate: str | None, burst: int) -> bool:
        lim = self.limits.get(name)
        if lim is None:
            lim = self.limits[name] = _Limit(name)
        lim.removed = False
        lim.capacity, lim.interval, lim.rate, lim.burst = capacity, interval, rate, burst
        for waiter in [w for w in (*lim.queue, *lim.pacing) if lim.refused(w.amount)]:  # lowered below them
            _settle(waiter, "refused")
        self._grant(lim)
        if lim.timer is not None:  # the next start may be due sooner (or later) now
            lim.timer.cancel()
        self._pace(lim)
        return True

    def remove(self, name: str) -> bool:
        """Forget ``name`` (False: no such cluster limit). Holders keep their share until they release it; waiters
        stop waiting for it (their worker goes on to a machine limit of that name, if any)."""
        lim = self.limits.get(name)
        if lim is None or lim.removed:
            return False
        lim.removed = True
        while lim.queue:
            _settle(lim.queue.popleft(), "removed")
        for waiter in lim.pacing:  # (one that holds a slot keeps it until its task ends)
            _settle(waiter, "removed")
        self._retire(lim)
        return True

    def status(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            lim.status(now)
            for name, lim in sorted(self.limits.items())
            if not lim.removed and (names is None or name in names)
        ]

    async def acquire(self, demands: dict[str, float], key: str, worker: str, task: str) -> dict[str, Any]:
        """Take the cluster limits among ``demands`` for ``key`` on ``worker`` (sorted by name, so that two tasks
        never deadlock), waiting as long as it takes. Replies ``{"taken": names}`` (the other names are not cluster
        limits), ``{"withdrawn": True}`` if the wait was withdrawn (released, its key or worker gone), or
        ``{"error": message}`` for an amount above a capacity."""
        names = sorted(n for n in demands if n in self.limits and not self.limits[n].removed)
        for name in names:
            if self.limits[name].refused(demands[name]):
                return {"error": _refusal(self.limits[name], demands[name], task)}
        if not names:
            return {"taken": []}
        if self.scheduler is not None and worker not in self.scheduler.workers:
            return {"withdrawn": True}  # its worker left before the request came
        ident = (worker, key)
        self.active.setdefault(key, set()).add(worker)
        taken = []
        for name in names:
            lim = self.limits.get(name)
            if lim is None or lim.removed:
                continue
            outcome = await self._take(lim, ident, demands[name], task)
            if outcome == "withdrawn":
                self.release(key, worker)
                return {"withdrawn": True}
            if outcome == "refused":  # lowered below it while it waited: it can never be served
                self.release(key, worker)
                return {"error": _refusal(lim, demands[name], task)}
            if outcome == "granted":
                taken.append(name)
        return {"taken": taken}

    def release(self, key: str, worker: str) -> bool:
        """Drop every lease and wait of ``key`` on ``worker`` (also a stream handler: it must never raise)."""
        workers = self.active.get(key)
        if workers is None or worker not in workers:
            return True
        workers.discard(worker)
        if not workers:
            del self.active[key]
        self._drop((worker, key))
        return True

    # -- what the scheduler tells plugins ------------------------------------------------------------------------

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish in _ENDED and key in self.active:  # (every transition comes here: one dict lookup)
            for worker in list(self.active.get(key, ())):
                self.release(key, worker)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        for key, workers in list(self.active.items()):
            if worker in workers:
                self.release(key, worker)

    # -- internals -----------------------------------------------------------------------------------------------

    async def _take(self, lim: _Limit, ident: Ident, amount: float, task: str) -> str:
        """The outcome: "granted", "withdrawn", "removed" (the limit was removed while it waited) or "refused" (set
        below its amount while it waited)."""
        if lim.capacity is not None:
            if lim.queue or lim.used + amount > lim.capacity:
                waiter = _Waiter(ident, amount, task)
                lim.queue.append(waiter)
                outcome = await waiter.future
                if outcome != "granted":
                    return outcome
            else:
                self._lease(lim, ident, amount, task)
        if lim.interval is not None:  # slot first, then the start's token
            waiter = _Waiter(ident, amount, task)
            lim.pacing.append(waiter)
            if lim.timer is None:
                self._pace(lim)
            outcome = await waiter.future
            if outcome != "granted":
                return outcome
            if lim.capacity is None:
                self._lease(lim, ident, amount, task)
        return "granted"

    def _pace(self, lim: _Limit) -> None:
        """Grant the starts that are due at the head of the pacing queue, then wake when the next one is. Each start
        is counted at the time it is granted, so a scheduler that was busy for a while does not grant a backlog at
        once."""
        lim.timer = None
        now = time.monotonic()
        while lim.pacing:
            head = lim.pacing[0]
            if head.future.done():  # withdrawn
                lim.pacing.popleft()
                continue
            if lim.interval is not None:
                due = lim.due(head.amount, now)
                if now < due:
                    lim.timer = asyncio.get_running_loop().call_later(due - now, self._pace, lim)
                    return
                lim.start(now, head.amount)
            lim.pacing.popleft()
            _settle(head, "granted")

    def _lease(self, lim: _Limit, ident: Ident, amount: float, task: str) -> None:
        if ident in lim.holders:  # (the same attempt asking twice: one lease)
            return
        lim.used += amount
        host = ident[0].rsplit("://", 1)[-1].rsplit(":", 1)[0]
        lim.holders[ident] = {
            "pid": 0,
            "host": host,
            "task": task,
            "amount": amount,
            "since": time.time(),
            "slots": [],
            "worker": ident[0],
        }

    def _grant(self, lim: _Limit) -> None:
        """Serve the queue's head while it fits (first come, first served)."""
        queue = lim.queue
        while queue:
            head = queue[0]
            if head.future.done():  # withdrawn
                queue.popleft()
                continue
            if lim.capacity is not None and lim.used + head.amount > lim.capacity:
                return
            queue.popleft()
            self._lease(lim, head.ident, head.amount, head.task)
            _settle(head, "granted")

    def _drop(self, ident: Ident) -> None:
        for lim in list(self.limits.values()):
            for waiter in [w for w in lim.queue if w.ident == ident]:
                _settle(waiter, "withdrawn")
                lim.queue.remove(waiter)
            for waiter in lim.pacing:
                if waiter.ident == ident:
                    _settle(waiter, "withdrawn")
            lease = lim.holders.pop(ident, None)
            if lease is not None:
                lim.used = max(0.0, lim.used - lease["amount"]) if lim.holders else 0.0
            self._grant(lim)
            self._retire(lim)

    def _retire(self, lim: _Limit) -> None:
        if lim.removed and not lim.holders and not any(not w.future.done() for w in lim.pacing):
            self.limits.pop(lim.name, None)


def refused(capacity: float | None, rate: str | None, burst: int, amount: float) -> str | None:
    """What of a cluster limit never grants ``amount`` (its capacity, or its rate's burst: an amount takes that many
    tokens at once, as on a machine), or None. Also the client's check at submit, on the status it cached."""
    if capacity is not None and amount > capacity:
        return f"capacity {capacity:g}"
    if rate is not None and amount > burst:
        return f"rate {rate} with burst {burst} (an amount takes that many tokens at once)"
    return None


def _refusal(lim: _Limit, amount: float, task: str) -> str:
    return (
        f"task {task!r} needs {lim.name}={amount:g} but cluster limit {lim.name!r} has {lim.refused(amount)}: lower"
        " the amount or raise the limit (nbflow.limit)"
    )


def _settle(waiter: _Waiter, outcome: str) -> None:
    if not waiter.future.done():
        waiter.future.set_result(outcome)


def dask_setup(scheduler: Any) -> None:
    """``dask scheduler --preload nbflow.engines.dask_scheduler_limits``: the limits are there from the start (the
    scheduler starts its plugins after its preloads)."""
    scheduler.add_plugin(ClusterLimits(), name=PLUGIN_NAME)
