"""The Dask engine: each attempt of an nbflow task is one ``client.submit`` with Dask worker resources.

Only imported when a Dask engine is created, so ``import nbflow`` never imports ``distributed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle
import distributed
from distributed.client import done_callback  # the coroutine behind Future.add_done_callback, minus its thread hop
from distributed.scheduler import KilledWorker

from .. import sidechannel
from ..errors import EngineConfigError, Unsatisfiable, WorkerDied
from ..futures import Future, blocking
from ..options import Runnable
from ..snapshot import Occupancy, WorkerOccupancy, limits_snapshot
from ..specs import size_text
from .attempt import Attempt, Reported
from .core import Engine, Run, State
from .dask_attempt_keys import attempt_key
from .dask_cluster import connect
from .dask_cluster_limits import ClusterLimits
from .dask_worker_events import SIDE_TOPIC, STARTED_TOPIC
from .dask_worker_probe import probe
from .dask_worker_snapshots import fetch as fetch_locals
from .dask_worker_stops import stop_attempt
from .dask_worker_task import run_task

_MEMORY_RESTART_TOPIC = "worker-restart-memory"  # what a nanny logs when it restarts its worker for memory
_REMOTE = object()  # result placeholder: the value stays on the cluster until someone asks for it


class DaskFuture(Future):
    """An ``nbflow.Future`` backed by a Dask future; its value is fetched from the cluster on first use.

    Completion costs no data transfer (like a Dask future), so thousands of tasks stay cheap.
    """

    def __init__(self, name: str, engine: DaskEngine) -> None:
        super().__init__(name)
        self.engine = engine
        self.dask: distributed.Future | None = None  # the last attempt's Dask future
        self._value: Any = _REMOTE

    def result(self, timeout: float | None = None) -> Any:
        value = super().result(timeout)
        if value is _REMOTE:
            self._fetch([self])
            value = self._value
        return value

    def __await__(self):
        return self._awaited().__await__()

    async def _awaited(self) -> Any:
        """``await fut``: wait without a thread, then fetch the value without blocking the loop — on the client's
        own loop (an async task on a worker, where a blocking fetch would wait for itself) with the client's
        coroutine, elsewhere in a helper thread."""
        import asyncio

        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.add_done_callback(lambda _: loop.call_soon_threadsafe(_settle, done))
        with blocking():  # (a sync task's own event loop: its thread's slot is lent meanwhile)
            await done
        if not self._remote():
            return self.result()
        if getattr(self.engine.client.loop, "asyncio_loop", None) is loop:
            value = await self.dask
        else:
            value = await asyncio.to_thread(self.engine.client.gather, self.dask)
        if self._value is _REMOTE:
            self._value = value
        return self._value

    def _remote(self) -> bool:
        """Finished, and its value not fetched yet."""
        return self._value is _REMOTE and self.done() and not self.cancelled() and self.exception() is None

    @classmethod
    def _fetch(cls, futures: list[cf.Future]) -> None:
        """Fetch the values still on a cluster with one ``client.gather`` per engine."""
        batches: dict[DaskEngine, list[DaskFuture]] = {}
        for f in futures:
            if isinstance(f, DaskFuture) and f._remote():
                batches.setdefault(f.engine, []).append(f)
        for engine, batch in batches.items():
            values = engine.client.gather([f.dask for f in batch])
            for f, value in zip(batch, values, strict=True):
                if f._value is _REMOTE:  # two readers may fetch at once: the first value stored is kept
                    f._value = value


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
            raise EngineConfigError(f"on_unsatisfiable must be 'raise' or 'wait', got {on_unsatisfiable!r}")
        self.on_unsatisfiable = on_unsatisfiable
        self.client, self.cluster = connect(
            address, client, n_workers, threads_per_worker, processes, resources, connect_timeout
        )
        super().__init__("nbflow-dask")
        self._owns_client = client is None
        self._address = self.client.scheduler.address
        self._live: dict[str, Run] = {}  # Dask key of the current attempt -> run, until it ends
        self._offers: dict[str, tuple[str, dict[str, float]]] | None = None  # address -> (name, totals)
        self._watching = False
        self._watcher = _Watcher(self.client, self._finished_in_loop, self._attempt_over)
        self.client.subscribe_topic(STARTED_TOPIC, self._on_started)
        self.client.subscribe_topic(SIDE_TOPIC, _on_side)
        self._restarts: dict[str, dict] = {}  # worker address -> its nanny's last memory restart (an event)
        self.client.subscribe_topic(_MEMORY_RESTART_TOPIC, self._on_memory_restart)
        self.cluster_limits = ClusterLimits(self.client)

    # -- placing attempts -----------------------------------------------------------------------------

    def _future(self, name: str) -> Future:
        return DaskFuture(name, self)

    def _argument(self, dep: Future) -> Any:
        """A dependency on this cluster is handed to Dask as its Dask future: its value never visits here."""
        if self._owns(dep):
            return dep.dask
        return super()._argument(dep)

    def _owns(self, dep: Future) -> bool:
        return isinstance(dep, DaskFuture) and (dep.engine is self or dep.engine._address == self._address)

    def _submit_options(self, task: Runnable) -> dict[str, Any]:
        return {"resources": dict(task.options.resources) or None, "pure": False}

    def _place(self, run: Run) -> None:
        key = attempt_key(run.fut.key, run.attempt.number)
        self._wait_for_resources([run])
        try:
            args, kwargs = self._arguments(run)
            packed = cloudpickle.dumps(run.task)  # opaque to Dask: the scheduler passes the bytes on as they are
            fn, keyed = _runner(run.task)
            dask_future = self.client.submit(
                fn,
                packed,
                *[key][:keyed],
                args,
                kwargs,
                self.on_unsatisfiable,
                key=key,
                **self._submit_options(run.task),
            )
        except Exception as exc:  # the client is gone, an argument cannot be sent: the task fails, nothing hangs
            self._ended(run, run.attempt, exc=exc)
            return
        self._track([run], [dask_future])

    def _place_many(self, runs: list[Run]) -> None:
        """One ``client.map`` for a batch of first attempts: one graph message, the task pickled once."""
        self._wait_for_resources(runs)
        try:
            packed = cloudpickle.dumps(runs[0].task)
            keys = [run.fut.key for run in runs]
            fn, keyed = _runner(runs[0].task)
            dask_futures = self.client.map(
                fn,
                [packed] * len(runs),
                *[keys][:keyed],
                [run.args for run in runs],
                [run.kwargs for run in runs],
                [self.on_unsatisfiable] * len(runs),
                key=keys,
                **self._submit_options(runs[0].task),
            )
        except Exception as exc:
            for run in runs:
                self._ended(run, run.attempt, exc=exc)
            return
        self._track(runs, dask_futures)

    def _wait_for_resources(self, runs: list[Run]) -> None:
        """A task with Dask resources waits for a worker to give them until it starts (its start event)."""
        if runs[0].task.options.resources:
            for run in runs:
                self._waiting(run)

    def _track(self, runs: list[Run], dask_futures: list[distributed.Future]) -> None:
        with self._lock:
            for run, dask_future in zip(runs, dask_futures, strict=True):
                run.fut.dask = dask_future
                self._live[dask_future.key] = run
        self._watcher.watch(runs, dask_futures)

    def _on_started(self, event: tuple[float, dict]) -> None:
        """Workers report attempts that have been running a moment (see ``dask_worker_events.Starts``)."""
        worker = event[1]["name"]
        for key in event[1]["keys"]:
            run = self._live.get(key)
            if run is None or run.fut.done():
                continue
            if run.state is State.STOPPING:  # Dask ran it again (its worker died): stop it there too
                self._halt(run, run.attempt, 0.0)
            else:
                self._started(run, worker)

    def _finished_in_loop(self, run: Run, dask_future: distributed.Future) -> bool:
        """The common case, right in Dask's loop: a success that no done-callback waits for."""
        if dask_future.status != "finished":
            return False
        if not self._succeeded_unwatched(run, _REMOTE):
            return False
        self._forget(dask_future)
        return True

    def _attempt_over(self, run: Run, dask_future: distributed.Future) -> None:
        """An attempt ended (in the engine's completion thread): report it to the lifecycle."""
        self._forget(dask_future)
        status = dask_future.status
        if status == "finished":
            self._ended(run, run.attempt, _REMOTE)
        elif status == "error":
            exc = dask_future.exception()
            if isinstance(exc, Reported):
                report = run.attempt.report = exc.report
                exc = exc.error
                run.fut.worker = run.fut.worker or report.get("worker")
                if report["frames"].left is not None:  # its big locals wait on the worker, fetched only if debugged
                    report["fetch"] = functools.partial(fetch_locals, self.client)
            elif isinstance(exc, KilledWorker):
                exc = self._worker_died(run.name, exc)
            self._ended(run, run.attempt, exc=exc.with_traceback(dask_future.traceback()))
        else:  # cancelled on the cluster (not by its future's cancel()), or lost
            self._abandon(run)

    def _on_memory_restart(self, event: tuple[float, dict]) -> None:
        self._restarts[str(event[1].get("worker"))] = event[1]

    def _worker_died(self, name: str, exc: KilledWorker) -> WorkerDied:
        """Dask's ``KilledWorker`` as ``WorkerDied``, with the reason its nanny gave if it restarted the worker for
        its memory (a nanny's ``--memory-limit`` is what bounds a Dask task's memory)."""
        last = getattr(exc.last_worker, "address", str(exc.last_worker))
        restart = self._restarts.get(last)
        if restart is not None:
            why = f"its nanny restarted it for using {size_text(restart.get('rss', 0))}, past its --memory-limit"
        else:
            why = "no reason was reported (see that worker's log)"
        tried = exc.allowed_failures + 1
        return WorkerDied(f"task {name!r}: the Dask worker running it died ({tried} tried, the last {last}): {why}")

    def _forget(self, dask_future: distributed.Future) -> None:
        with self._lock:
            self._live.pop(dask_future.key, None)

    def _withdraw(self, run: Run) -> None:
        dask_future = run.fut.dask
        if dask_future is not None:
            dask_future.cancel()

    def _halt(self, run: Run, attempt: Attempt, grace: float) -> None:
        """Have the worker running ``attempt`` raise ``TaskStopped`` in its thread (every worker is asked: the
        message costs one round trip and waits for no answer). Its Dask task then ends, and ``_ended`` follows. Sent
        from Dask's event loop, where this may be called (a start event) and ``client.run`` is a coroutine."""
        try:
            self.client.loop.add_callback(self._send_stop, attempt_key(run.fut.key, attempt.number))
        except Exception:  # the client is closed: the attempt ends with the cluster
            pass

    async def _send_stop(self, key: str) -> None:
        try:
            await self.client.run(stop_attempt, key, wait=False)
        except Exception:  # the cluster is gone: the attempt ends with it
            pass

    # -- fail fast on demands no worker can meet -----------------------------------------------------

    def _check(self, task: Runnable) -> None:
        if task.options.max_memory is not None:  # a worker's tasks share its process: no per-task bound is possible
            raise EngineConfigError(
                f"task {task.name!r} has max_memory, which the Dask engine cannot bound per task: a worker's memory is"
                " bounded by its nanny (dask worker --memory-limit 4GB), and a task whose worker its nanny killed"
                " fails with WorkerDied, the nanny's reason in the message; drop max_memory here"
                " (task.with_options(max_memory=None))"
            )
        self.check(task.options.resources, task.name)
        if task.options.limits:
            self.cluster_limits.check(task.options.limits, task.name)

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
        """What every worker holds and runs, in one ``client.run`` round trip (the cluster limits read from the
        scheduler meanwhile). Reading it changes nothing: task statuses come from the workers' events alone."""
        cluster_limits = self.cluster_limits.statuses_soon()  # (under way while the workers are probed)
        probes = self.client.run(probe, on_error="ignore")
        workers: list[WorkerOccupancy] = []
        for found in probes.values():
            total, available = found["total"], found["available"]
            workers.append(
                {
                    "name": found["name"],
                    "host": found["host"],
                    "resources": {
                        res: {"total": amount, "used": amount - available.get(res, amount)}
                        for res, amount in total.items()
                    },
                    "running": len(found["running"]),
                    "waiting": len(found["waiting"]),
                    "queued": found["queued"],
                    "gpus": found["gpus"],
                }
            )
        return {
            "engine": self.kind,
            "time": time.time(),
            "workers": workers,
            "tasks": self.task_counts(),
            "limits": limits_snapshot() + cluster_limits.result(),
        }

    # -- shutdown -----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Cancel every unfinished task; close the client and cluster if this engine started them (in the
        background if tasks were still running). A client passed in by the caller stays open (its owner closes
        it); the unfinished tasks are cancelled on it in one call."""
        with self._lock:
            live, self._live = list(self._live.values()), {}
        for run in live:
            self._abandon(run)  # the nbflow side; Dask is told below, in one message
        self._watcher.close()
        self.client.unsubscribe_topic(STARTED_TOPIC)
        self.client.unsubscribe_topic(SIDE_TOPIC)
        self.client.unsubscribe_topic(_MEMORY_RESTART_TOPIC)
        if live and not self._owns_client:
            self.client.cancel([run.fut.dask for run in live])
        if self._watching:
            self.client.unsubscribe_topic("all")
        if not self._owns_client:
            return
        if live:  # a thread worker still running a task makes closing take up to 30 s: do it in the background
            threading.Thread(target=self._close_cluster, name="nbflow-dask-close", daemon=True).start()
        else:
            self._close_cluster()

    def _close_cluster(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __repr__(self) -> str:
        return f"<nbflow.DaskEngine {self._address}>"


class _Watcher:
    """Reports the end of every attempt, at a fraction of ``distributed.Future.add_done_callback``'s cost.

    New futures reach the client's event loop in batches (one loop wake-up per batch, not per task), where
    one small coroutine per future waits on it: ``done_callback``, which ``add_done_callback`` uses too, but
    without its hop through a thread per callback (no public API awaits a future inside the loop). Successes
    that no callback waits for complete in the loop; the rest in one thread of this engine, started when first
    needed, so user callbacks, retries and calls back into the client never run in the loop.
    """

    def __init__(
        self,
        client: distributed.Client,
        finished_in_loop: Callable[[Any, distributed.Future], bool],
        attempt_over: Callable[[Any, distributed.Future], None],
    ) -> None:
        self._loop = client.loop
        self._finished_in_loop = finished_in_loop
        self._attempt_over = attempt_over
        self._lock = threading.Lock()
        self._new: list[tuple[Any, distributed.Future]] = []
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def watch(self, runs: list[Any], dask_futures: list[distributed.Future]) -> None:
        with self._lock:
            first = not self._new
            self._new.extend(zip(runs, dask_futures, strict=True))
        if first:
            self._loop.add_callback(self._register)

    def _register(self) -> None:  # in the client's event loop
        with self._lock:
            batch, self._new = self._new, []
        for run, dask_future in batch:
            asyncio.ensure_future(done_callback(dask_future, functools.partial(self._on_done, run)))

    def _on_done(self, run: Any, dask_future: distributed.Future) -> None:  # in the client's event loop
        if self._finished_in_loop(run, dask_future):
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._complete, name="nbflow-dask-completions", daemon=True)
                self._thread.start()
        self._done.put((run, dask_future))

    def _complete(self) -> None:
        while True:
            item = self._done.get()
            if item is None:
                return
            self._attempt_over(*item)
            del item  # holding it while idle would keep the last task's value on the cluster

    def close(self) -> None:
        self._done.put(None)


def _settle(done: Any) -> None:
    if not done.done():  # (its awaiter may have been cancelled)
        done.set_result(None)


def _runner(task: Runnable) -> tuple[Callable[..., Any], bool]:
    """What Dask runs for an attempt of ``task``, and whether it is passed its Dask key (an async task's coroutine
    function: no worker thread knows the key for it)."""
    if getattr(task, "is_async", False):
        from .dask_worker_async import run_task_async

        return run_task_async, True
    return run_task, False


def _fits(demand: Mapping[str, float], offers: Mapping[str, tuple[str, dict[str, float]]]) -> bool:
    return any(all(res.get(k, 0) >= v for k, v in demand.items()) for _, res in offers.values())


def _on_side(event: tuple[float, dict]) -> None:
    """A side-channel message from a task on a worker (what a task cell printed so far)."""
    sidechannel.deliver(event[1]["channel"], event[1]["message"])
