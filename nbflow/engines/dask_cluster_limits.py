"""In the kernel (a Dask engine's client): cluster limits, kept by the scheduler (``dask_scheduler_limits``).

The client installs the scheduler plugin the first time it needs it (setting a limit, or submitting a task with
``limits``); installing is idempotent, so a plugin another client installed (or ``--preload`` loaded) keeps its state.
The names, capacities, rates and bursts of cluster limits are cached here, for the check at submit: a miss asks the
scheduler once. A scheduler that is gone is ``SchedulerUnreachable``, not a connection error of Dask's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import NoSuchLimit, SchedulerUnreachable, Unsatisfiable
from ..snapshot import LimitInfo
from ..specs import Rate
from .dask_scheduler_limits import refused

_NOT_CLUSTER = object()  # cached: the scheduler had no cluster limit of this name when asked


class ClusterLimits:
    """One engine's view of its scheduler's cluster limits."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._installed = False
        self._lock = threading.Lock()
        self._known: dict[str, Any] = {}  # name -> capacity (None: rate only) or _NOT_CLUSTER

    def _call(self, op: str, **kwargs: Any) -> Any:
        self.install()
        try:
            return self.client.sync(getattr(self.client.scheduler, op), **kwargs)
        except (OSError, RuntimeError) as exc:  # (CommClosedError is an OSError; a closed pool a RuntimeError)
            raise _unreachable(exc) from None

    def install(self) -> None:
        """Install the scheduler plugin unless this client did already (a no-op where it is there)."""
        if self._installed:
            return
        with self._lock:
            if not self._installed:
                from .dask_scheduler_limits import PLUGIN_NAME, ClusterLimits

                try:
                    self.client.register_plugin(ClusterLimits(), name=PLUGIN_NAME)
                except (OSError, RuntimeError) as exc:
                    raise _unreachable(exc) from None
                self._installed = True

    def set(self, name: str, capacity: float | None, rate: Rate | None, burst: int) -> None:
        interval, text = (rate.interval, rate.text) if rate is not None else (None, None)
        self._call("nbflow_limits_set", name=name, capacity=capacity, interval=interval, rate=text, burst=burst)
        self._known[name] = (capacity, text, burst)

    def remove(self, name: str) -> None:
        found = self._call("nbflow_limits_remove", name=name)
        self._known[name] = _NOT_CLUSTER
        if not found:
            raise NoSuchLimit(
                f"no cluster limit named {name!r} on this Dask scheduler (nbflow.occupancy()['limits'] lists them)"
            )

    def check(self, demands: Mapping[str, float], task: str) -> None:
        """Raise ``Unsatisfiable`` for an amount a cluster limit never grants: above its capacity or its rate's burst
        (cached; re-read before raising, since another client may have raised it). Names that are not cluster
        limits are left to the worker's machine."""
        for name, amount in demands.items():
            known = self._known[name] if name in self._known else self._read(name)
            if known is _NOT_CLUSTER or not refused(*known, amount):
                continue
            known = self._read(name)
            why = None if known is _NOT_CLUSTER else refused(*known, amount)
            if why is not None:
                raise Unsatisfiable(
                    f"task {task!r} needs {name}={amount:g} but cluster limit {name!r} has {why}: lower the amount"
                    " or raise the limit (nbflow.limit(..., scope='cluster'))"
                )

    def _read(self, name: str) -> Any:
        """(capacity, rate, burst) of cluster limit ``name``, cached, or ``_NOT_CLUSTER``."""
        found = self._call("nbflow_limits_status", names=[name])
        known = (found[0]["capacity"], found[0]["rate"], found[0]["burst"]) if found else _NOT_CLUSTER
        self._known[name] = known
        return known

    def statuses_soon(self) -> concurrent.futures.Future:
        """Start reading every cluster limit's status on the client's loop, so that it overlaps another round trip
        (``occupancy``'s ``client.run``)."""
        self.install()
        return asyncio.run_coroutine_threadsafe(self._statuses(), self.client.loop.asyncio_loop)

    async def _statuses(self) -> list[LimitInfo]:
        try:
            found = await self.client.scheduler.nbflow_limits_status()
        except Exception:  # the scheduler is gone or restarting: no cluster limits to show this tick
            return []
        # (msgpack hands lists back as tuples)
        return [
            {**info, "holders": [{**h, "slots": list(h["slots"])} for h in info["holders"]]} for info in found or ()
        ]


def _unreachable(exc: BaseException) -> SchedulerUnreachable:
    return SchedulerUnreachable(
        f"the Dask scheduler did not answer about cluster limits ({type(exc).__name__}: {exc}): is it still running?"
        " Reconnect with nbflow.use('dask', ...)"
    )


def set_cluster_limit(engine: Any, name: str, capacity: float | None, rate: Rate | None, burst: int) -> None:
    """``nbflow.limit(..., scope="cluster")`` on the Dask engine ``engine``."""
    engine.cluster_limits.set(name, capacity, rate, burst)


def remove_cluster_limit(engine: Any, name: str) -> None:
    """``nbflow.remove_limit(name, scope="cluster")`` on the Dask engine ``engine``."""
    engine.cluster_limits.remove(name)
