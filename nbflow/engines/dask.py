"""The Dask engine: nbflow tasks as ``client.submit`` calls with Dask worker resources.

Only imported when a Dask engine is created, so ``import nbflow`` never imports ``distributed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle
import distributed
from distributed.client import done_callback

from ..errors import ResourceSpecError, Unsatisfiable, UpstreamError
from ..futures import Future, find_futures, substitute, upstream_value
from ..occupancy import Occupancy, WorkerOccupancy, empty_task_counts, limits_snapshot
from ..task import Task
from .base import Engine
from .dask_cluster import connect
from .dask_worker import probe, run_task

_REMOTE = object()  # result placeholder: the value stays on the cluster until someone asks for it


class DaskFuture(Future):
    """An ``nbflow.Future`` backed by a Dask future; its value is fetched from the cluster on first use.

    Completion costs no data transfer (like a Dask future), so thousands of tasks stay cheap.
    """

    def __init__(self, name: str, engine: DaskEngine) -> None:
        super().__init__(name)
        self.engine = engine
        self.dask: distributed.Future | None = None

    def result(self, timeout: float | None = None) -> Any:
        value = super().result(timeout)
        if value is _REMOTE:
            self._prefetch([])
            value = self._result
        return value

    def _prefetch(self, siblings: list[Future]) -> None:
        """Fetch this value and those of the finished ``siblings`` on the same cluster in one ``client.gather``."""
        if self._result is not _REMOTE:
            return
        batch = [self] + [
            f
            for f in siblings
            if isinstance(f, DaskFuture) and f.engine is self.engine and f._result is _REMOTE and f is not self
        ]
        values = self.engine.client.gather([f.dask for f in batch])
        for f, value in zip(batch, values, strict=True):
            with f._condition:
                if f._result is _REMOTE:
                    f._result = value


class DaskEngine(Engine):
    """Runs tasks on a Dask cluster: an existing scheduler, an existing client, or an embedded LocalCluster.

    ``resources`` (embedded cluster only) is one dict for every worker or a list with one dict per worker.
    """

    kind = "dask"

    def __init__(
        self,
        address: str | None = None,
        client: distributed.Client | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool | None = None,
        resources: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        on_unsatisfiable: str = "raise",
        connect_timeout: float = 10.0,
    ) -> None:
        if on_unsatisfiable not in ("raise", "wait"):
            raise ResourceSpecError(f"on_unsatisfiable must be 'raise' or 'wait', got {on_unsatisfiable!r}")
        self.on_unsatisfiable = on_unsatisfiable
        self.client, self.cluster = connect(
            address, client, n_workers, threads_per_worker, processes, resources, connect_timeout
        )
        self._owns_client = client is None
        self._closed = False
        self._address = self.client.scheduler.address
        self._lock = threading.Lock()
        self._pending: dict[str, DaskFuture] = {}  # key -> future not yet done
        self._done = empty_task_counts()
        self._offers: dict[str, tuple[str, dict[str, float]]] | None = None  # address -> (name, totals)
        self._watching = False
        self._watcher = _Watcher(self.client, self._finish_in_loop, self._finish)

    # -- submit ---------------------------------------------------------------------------------------

    def submit(self, task: Task, args: tuple, kwargs: dict) -> Future:
        """Schedule ``task`` on the cluster; nbflow futures among the arguments become Dask dependencies."""
        self.check(task.options.resources, task.name)
        future = DaskFuture(task.name, self)
        deps = find_futures((args, kwargs))
        foreign = [dep for dep in deps if not self._owns(dep)]
        waiting_for = [dep for dep in foreign if not dep.done()]
        if waiting_for:  # e.g. a local-engine future: submit once it is done, never block here
            countdown = [len(waiting_for)]

            def ready(_: object) -> None:
                with self._lock:
                    countdown[0] -= 1
                    last = countdown[0] == 0
                if last:
                    self._send(future, task, args, kwargs, deps)

            for dep in waiting_for:
                dep.add_done_callback(ready)
        else:
            self._send(future, task, args, kwargs, deps)
        return future

    def _owns(self, dep: Future) -> bool:
        """Whether ``dep`` lives on this cluster, so Dask can take it as a dependency directly."""
        return isinstance(dep, DaskFuture) and (dep.engine is self or dep.engine._address == self._address)

    def _send(self, future: DaskFuture, task: Task, args: tuple, kwargs: dict, deps: list[Future]) -> None:
        if future.done():  # cancelled while it waited for a foreign dependency
            return
        try:
            failed = next((dep for dep in deps if dep.done() and dep.status != "finished"), None)
            if failed is not None:
                upstream_value(failed)
            args, kwargs = substitute((args, kwargs), self._as_argument)
            opts = task.options
            dask_future = self.client.submit(
                run_task,
                cloudpickle.dumps(task),  # opaque to Dask: the scheduler passes the bytes on without unpickling
                args,
                kwargs,
                self.on_unsatisfiable,
                key=future.key,
                resources=dict(opts.resources) or None,
                retries=opts.retries or None,
                pure=False,
            )
        except Exception as exc:  # an upstream failure, or the client is gone: the task fails, nothing hangs
            future.set_exception(exc)
            with self._lock:
                self._done["error"] += 1
            return
        future.dask = dask_future
        future.on_cancel = dask_future.cancel
        owned = [dep for dep in deps if self._owns(dep)]
        with self._lock:
            self._pending[future.key] = future
        self._watcher.watch(dask_future, (future, owned, dask_future))

    def _as_argument(self, dep: Future) -> Any:
        return dep.dask if self._owns(dep) else upstream_value(dep)

    def _finish(self, future: DaskFuture, deps: list[DaskFuture], dask_future: distributed.Future) -> None:
        """Complete the nbflow future from its Dask future, in the engine's completion thread."""
        status = dask_future.status
        failed = next((dep for dep in deps if dep.dask.status in ("error", "cancelled")), None)
        try:
            if status == "finished":
                future.set_result(_REMOTE)
            elif failed is not None:  # Dask hands the dependent the upstream exception; name the upstream
                cause = failed.dask.exception() if failed.dask.status == "error" else None
                future.set_exception(UpstreamError(failed.name, cause))
            elif status == "error":
                future.set_exception(dask_future.exception().with_traceback(dask_future.traceback()))
            else:  # cancelled on the cluster (or by our own on_cancel): do not cancel Dask again
                future.mark_cancelled()
        except cf.InvalidStateError:  # the nbflow future was cancelled first
            pass
        self._count_done(future)

    def _finish_in_loop(self, future: DaskFuture, deps: list[DaskFuture], dask_future: distributed.Future) -> bool:
        """The common case, right in Dask's loop: a success with no callback to run (those never run in the loop)."""
        if dask_future.status != "finished":
            return False
        with future._condition:  # reentrant: a callback added from now on sees the future done and runs in its caller
            if future._done_callbacks:
                return False
            with contextlib.suppress(cf.InvalidStateError):  # the nbflow future was cancelled first
                future.set_result(_REMOTE)
        self._count_done(future)
        return True

    def _count_done(self, future: DaskFuture) -> None:
        with self._lock:
            self._pending.pop(future.key, None)
            self._done[future.status] += 1

    def call(self, task: Task, args: tuple, kwargs: dict) -> Any:
        """Run ``task`` here and now, holding its machine-wide ``limits`` (Dask resources belong to workers)."""
        from ..limits import acquire_all

        args, kwargs = substitute((args, kwargs), upstream_value)
        holdings = acquire_all(task.options.limits, task=task.name) if task.options.limits else []
        try:
            return task.fn(*args, **kwargs)
        finally:
            for holding in holdings:
                holding.release()

    # -- fail fast on demands no worker can meet -----------------------------------------------------

    def check(self, demand: Mapping[str, float], name: str = "task") -> None:
        """Raise ``Unsatisfiable`` if no current worker could ever give ``demand`` (unless waiting is on)."""
        if not demand or self.on_unsatisfiable == "wait":
            return
        offers = self._offers
        if offers is not None and _fits(demand, offers):
            return
        offers = self._refresh_offers()
        if _fits(demand, offers):
            return
        wanted = ", ".join(f"{k}={v:g}" for k, v in demand.items())
        offered = "; ".join(
            f"{name} {' '.join(f'{k}={v:g}' for k, v in res.items()) or '(no resources)'}"
            for name, res in sorted(offers.values())
        )
        raise Unsatisfiable(
            f"task {name!r} needs {wanted} but no worker can ever give it; workers offer: {offered or 'no workers'}"
            f" (start a worker with --resources, or nbflow.use('dask', ..., on_unsatisfiable='wait'))"
        )

    def _refresh_offers(self) -> dict[str, tuple[str, dict[str, float]]]:
        """Read every worker's resource totals (one scheduler round trip) and watch for joins and leaves."""
        if not self._watching:
            self._watching = True
            self.client.subscribe_topic("all", self._on_cluster_event)
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        offers = {
            addr: (str(info.get("name", addr)), dict(info.get("resources", {}))) for addr, info in workers.items()
        }
        self._offers = offers
        return offers

    def _on_cluster_event(self, event: tuple[float, dict]) -> None:
        if event[1].get("action") in ("add-worker", "remove-worker"):
            self._offers = None  # re-read at the next submit that needs it

    # -- occupancy ----------------------------------------------------------------------------------

    def occupancy(self) -> Occupancy:
        """What every worker holds and runs, in one ``client.run`` round trip; also marks futures running."""
        probes = self.client.run(probe, on_error="ignore")
        workers: list[WorkerOccupancy] = []
        with self._lock:
            pending = self._pending
            for probe_result in probes.values():
                total, available = probe_result["total"], probe_result["available"]
                workers.append(
                    {
                        "name": probe_result["name"],
                        "host": probe_result["host"],
                        "resources": {
                            res: {"total": amount, "used": amount - available.get(res, amount)}
                            for res, amount in total.items()
                        },
                        "running": len(probe_result["running"]),
                        "waiting": len(probe_result["waiting"]),
                        "queued": probe_result["queued"],
                    }
                )
                for phase in ("running", "waiting"):
                    for key in probe_result[phase]:
                        future = pending.get(key)
                        if future is not None:
                            future.phase, future.worker = phase, probe_result["name"]
            tasks = dict(self._done)
            for future in pending.values():
                tasks[future.status] += 1
        return {
            "engine": self.kind,
            "time": time.time(),
            "workers": workers,
            "tasks": tasks,
            "limits": limits_snapshot(),
        }

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel what is still pending; close the client and cluster if this engine started them.

        A client passed in by the caller stays open (its owner closes it); the pending tasks are cancelled
        on it in one call. Closing twice is harmless.
        """
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            closed, self._closed = self._closed, True
        if closed:
            return
        for future in pending:
            future.mark_cancelled()  # the nbflow side; Dask is told below, in one message
        self._watcher.close()
        if pending and not self._owns_client:
            self.client.cancel([future.dask for future in pending])
        if self._watching:
            self.client.unsubscribe_topic("all")
        if self._owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __repr__(self) -> str:
        return f"<nbflow.DaskEngine {self._address}>"


class _Watcher:
    """Completes nbflow futures from their Dask futures at a fraction of ``add_done_callback``'s cost.

    New futures are handed to the client's event loop in batches (one loop wake-up per batch, not per task).
    Successes without callbacks complete in the loop; the rest in one thread of this engine, started when
    first needed, so user callbacks and calls back into the client never run in the loop.
    """

    def __init__(
        self, client: distributed.Client, finish_in_loop: Callable[..., bool], finish: Callable[..., None]
    ) -> None:
        self._loop = client.loop
        self._finish_in_loop = finish_in_loop
        self._finish = finish
        self._lock = threading.Lock()
        self._new: list[tuple[distributed.Future, tuple]] = []
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def watch(self, dask_future: distributed.Future, payload: tuple) -> None:
        with self._lock:
            self._new.append((dask_future, payload))
            first = len(self._new) == 1
        if first:
            self._loop.add_callback(self._register)

    def _register(self) -> None:  # in the client's event loop
        with self._lock:
            batch, self._new = self._new, []
        for dask_future, payload in batch:
            asyncio.ensure_future(done_callback(dask_future, functools.partial(self._on_done, payload)))

    def _on_done(self, payload: tuple, _: distributed.Future) -> None:  # in the client's event loop
        if self._finish_in_loop(*payload):
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._complete, name="nbflow-dask-completions", daemon=True)
                self._thread.start()
        self._done.put(payload)

    def _complete(self) -> None:
        while True:
            payload = self._done.get()
            if payload is None:
                return
            self._finish(*payload)
            del payload  # holding it while idle would keep the last task's value on the cluster

    def close(self) -> None:
        self._done.put(None)


def _fits(demand: Mapping[str, float], offers: Mapping[str, tuple[str, dict[str, float]]]) -> bool:
    return any(all(res.get(k, 0) >= v for k, v in demand.items()) for _, res in offers.values())
