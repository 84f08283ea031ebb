"""What runs on a Dask worker: the task wrapper, the secede/rejoin block hook and the occupancy probe.

Imported by the client (which pickles ``run_task`` by reference) and by every worker running an nbflow task.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pickle
import queue
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from distributed import get_client, get_worker, rejoin, secede
from distributed.comm.addressing import get_address_host

from .. import context, devices, sidechannel
from ..errors import TaskTimeout, portable
from ..futures import set_block_hook
from ..options import Runnable
from .core import Engine, bind

_state = threading.local()  # per task thread: depth of nested waits, so we secede and rejoin once


STARTED_TOPIC = "nbflow-started"  # worker -> clients: attempts that have been running a moment
SIDE_TOPIC = "nbflow-side"  # worker -> clients: side-channel messages of running tasks (see ``nbflow.sidechannel``)


def run_task(packed: bytes, args: tuple, kwargs: dict, on_unsatisfiable: str) -> Any:
    """The function Dask runs for every attempt of an nbflow task: bind the worker's engine, hold the
    task's machine-wide ``limits``, enforce its ``timeout``.

    ``packed`` is the task cloudpickled by the client (see ``DaskEngine._place``). Dependencies arrive
    already resolved by Dask. Retries are the client's: a failed attempt raises, and holds nothing after.
    """
    task = _unpack(packed)
    opts = task.options
    worker = get_worker()
    sidechannel.install(functools.partial(_send_side, worker))
    engine = _worker_engine(worker, on_unsatisfiable)
    previous = bind(engine)
    set_block_hook(_seceded)
    key = _starts.begin(worker)
    try:
        holdings = _acquire_limits(opts.limits, opts.name) if opts.limits else []
        try:
            ctx = _context(worker, key, opts, holdings)
            if opts.timeout is None:
                saved = context.enter(ctx)
                try:
                    return task.fn(*args, **kwargs)
                finally:
                    context.leave(saved)
            return _run_with_deadline(task, args, kwargs, engine, holdings, ctx)
        finally:
            for holding in holdings:
                holding.release()
    except Exception as exc:
        sendable = portable(exc, traceback.format_exc())
        if sendable is exc:
            raise
        raise sendable from None
    finally:
        _starts.end(key)
        set_block_hook(None)
        bind(previous)


def attempt_key(key: str, attempt: int) -> str:
    """The Dask key of an attempt: the task's key, then ``<key>-retry<N>`` for the retries."""
    return key if attempt == 0 else f"{key}-retry{attempt}"


def _task_key(dask_key: str) -> tuple[str, int]:
    """The task's key and the attempt number, from an attempt's Dask key (``attempt_key`` reversed)."""
    key, sep, number = dask_key.rpartition("-retry")
    return (key, int(number)) if sep and number.isdigit() else (dask_key, 0)


class _Devices:
    """The GPUs a task on this worker holds through its ``GPU`` resource, given back by ``release``."""

    def __init__(self, table: devices.Table, amount: float, key: str, name: str) -> None:
        self.table, self.amount, self.key, self.name = table, amount, key, name
        self.ordinals = table.take(amount)
        _holders[key] = self

    def release(self) -> None:
        if _holders.pop(self.key, None) is self:
            self.table.give(self.ordinals, self.amount)


_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # worker -> devices.Table
_holders: dict[str, _Devices] = {}  # Dask key -> the devices its attempt holds (for the panel)


def _table(worker: Any) -> devices.Table:
    """This worker's GPUs: its ``CUDA_VISIBLE_DEVICES`` (read once), else as many as its ``GPU`` resource,
    which may not exceed the devices listed."""
    table = _tables.get(worker)
    if table is None:
        value = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = devices.listed(value)
        resource = worker.state.total_resources.get("GPU", 0)
        devices.check_capacity(resource, value, f"worker {worker.name!r}'s GPU resource", "start it with GPU={n}")
        table = _tables.setdefault(worker, devices.Table(len(ids) if ids is not None else int(resource), value))
    return table


def _context(worker: Any, dask_key: str, opts: Any, holdings: list) -> tuple:
    """The attempt's ``nbflow.current()`` (the arguments of ``context.of``): GPUs from a machine-wide ``GPU``
    limit it holds (distinct across the machine), else from this worker's devices for its ``GPU`` resource
    (distinct on this worker)."""
    gpus = devices.held(holdings)
    amount = opts.resources.get("GPU", 0)
    table = _table(worker) if gpus or amount else None
    if not gpus and amount:
        held = _Devices(table, amount, dask_key, opts.name)
        holdings.append(held)  # released with the limits: when the function has really stopped
        gpus = held.ordinals
    ids = devices.physical(gpus, table.value) if gpus else None
    key, attempt = _task_key(dask_key)
    return (key, opts.name, attempt, str(worker.name), opts.held() if opts.limits else opts.resources, gpus, ids)


def _send_side(worker: Any, channel: str, message: Any) -> None:
    worker.log_event(SIDE_TOPIC, {"channel": channel, "message": message})


class Starts:
    """Tells the clients which attempts are running, so their futures read ``running`` with nobody asking.

    An attempt is reported once it has run for a tick; one event per worker per tick carries every such
    key. A task that ends within a tick costs a dict insert and delete, never a message.
    """

    TICK = 0.05

    def __init__(self) -> None:
        self._running: dict[str, tuple[float, Any]] = {}  # key -> (start time, worker), not yet reported
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def begin(self, worker: Any) -> str:
        key = worker.get_current_task()
        self._running[key] = (time.monotonic(), worker)
        if not self._wake.is_set():
            self._wake.set()
            if self._thread is None:
                self._start()
        return key

    def end(self, key: str) -> None:
        self._running.pop(key, None)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="nbflow-started", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.TICK)
            due = time.monotonic() - self.TICK
            by_worker: dict[Any, list[str]] = {}
            for key, (since, worker) in list(self._running.items()):
                if since <= due and self._running.pop(key, None) is not None:
                    by_worker.setdefault(worker, []).append(key)
            for worker, keys in by_worker.items():
                # (the scheduler sets "worker" to the worker's address: the name goes under another key)
                worker.log_event(STARTED_TOPIC, {"name": str(worker.name), "keys": keys})
            if not self._running:
                self._wake.clear()
                if self._running:  # one began between the check and the clear
                    self._wake.set()


_starts = Starts()


_CACHED_BELOW = 64 * 1024  # a task closing over big data is not kept alive by the cache


def _unpack(packed: bytes) -> Runnable:
    """The task in ``packed``, unpickled once per distinct bytes: its tasks share the function and its globals."""
    return _unpack_cached(packed) if len(packed) < _CACHED_BELOW else pickle.loads(packed)


@functools.lru_cache(maxsize=256)
def _unpack_cached(packed: bytes) -> Runnable:
    return pickle.loads(packed)


def _secede_once() -> None:
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    if depth == 0:
        secede()


def _rejoin_once() -> None:
    _state.depth -= 1
    if _state.depth == 0:
        rejoin()


@contextlib.contextmanager
def _seceded() -> Iterator[None]:
    """Leave the worker's thread pool while this task waits (nested tasks, a limit); rejoin after."""
    _secede_once()
    try:
        yield
    finally:
        _rejoin_once()


def _acquire_limits(demands: dict, name: str) -> list:
    from ..semaphores import acquire_all

    with _seceded():  # waiting for a machine-wide limit must not hold a worker thread
        return acquire_all(demands, task=name)


class _Relay:
    """Runs secede/rejoin in the task thread on behalf of the helper thread that runs a timed task.

    Dask's secede/rejoin only work in the thread Dask started the task in; that thread waits on ``requests``.
    """

    def __init__(self) -> None:
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.closed = False

    def call(self, fn: Callable[[], object]) -> None:
        done = threading.Event()
        with self.lock:
            if self.closed:  # the task timed out: nobody will serve the request
                return
            self.requests.put((fn, done))
        done.wait()

    def close(self) -> None:
        with self.lock:
            self.closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                request = self.requests.get_nowait()
                if request is not None:
                    request[1].set()

    @contextlib.contextmanager
    def seceded(self) -> Iterator[None]:
        self.call(_secede_once)
        try:
            yield
        finally:
            self.call(_rejoin_once)


def _run_with_deadline(task: Runnable, args: tuple, kwargs: dict, engine: Any, holdings: list, ctx: tuple) -> Any:
    """Run the task in a helper thread and raise ``TaskTimeout`` in this one at the deadline.

    At the deadline the worker thread and the task's Dask resources are free at once; the helper gets an
    asynchronous ``TaskTimeout`` that stops Python code at its next bytecode (a blocking C call finishes
    first), and keeps the task's machine-wide limits until it has really stopped.
    """
    timeout = task.options.timeout
    deadline = time.monotonic() + timeout
    current = context.of(*ctx, deadline=deadline)  # the attempt's ``nbflow.current()``, with its deadline
    relay = _Relay()
    outcome: dict[str, Any] = {}

    def finish() -> None:  # idempotent: a late TaskTimeout may interrupt it and make it run again
        with relay.lock:
            outcome["finished"] = True
            orphaned = outcome.get("orphaned", [])
        for holding in orphaned:
            holding.release()
        relay.requests.put(None)

    def helper() -> None:
        bind(engine)
        set_block_hook(relay.seceded)
        try:
            try:
                with context.running(current):
                    outcome["value"] = task.fn(*args, **kwargs)
            except BaseException as exc:  # handed to the task thread, which raises it
                outcome["error"] = exc
        finally:
            while True:
                try:
                    finish()
                    break
                except TaskTimeout:
                    continue

    thread = threading.Thread(target=helper, name=f"nbflow-{task.name}", daemon=True)
    thread.start()
    while (request := _next_request(relay, deadline)) is not None:
        fn, done = request
        try:
            fn()
        finally:
            done.set()
    with relay.lock:
        timed_out = not outcome.get("finished")
        if timed_out:
            outcome["orphaned"] = holdings[:]
            holdings.clear()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(TaskTimeout))
    if timed_out:
        relay.close()
        raise TaskTimeout(f"task {task.name!r} ran longer than its timeout of {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _next_request(relay: _Relay, deadline: float) -> tuple | None:
    """The helper's next secede/rejoin request; ``None`` when it finished or the deadline passed."""
    try:
        return relay.requests.get(timeout=max(deadline - time.monotonic(), 0))
    except queue.Empty:
        return None


class _WorkerEngine:
    """The engine tasks see on a worker: a Dask engine on the worker's client, created on first use."""

    kind = "dask"

    def __init__(self, on_unsatisfiable: str) -> None:
        self.on_unsatisfiable = on_unsatisfiable
        self._real: Engine | None = None
        self._lock = threading.Lock()

    def _engine(self) -> Engine:
        with self._lock:
            if self._real is None:
                from . import create

                self._real = create(get_client(), on_unsatisfiable=self.on_unsatisfiable)
            return self._real

    def __getattr__(self, name: str) -> Any:  # submit, map, call, occupancy, .client: the real engine's
        return getattr(self._engine(), name)


_worker_engines: dict[tuple[str, str], _WorkerEngine] = {}


def _worker_engine(worker: Any, on_unsatisfiable: str) -> _WorkerEngine:
    """One engine per cluster and option in this process (thread workers of several clusters may share it)."""
    where = (worker.scheduler.address, on_unsatisfiable)
    found = _worker_engines.get(where)
    if found is None:
        found = _worker_engines.setdefault(where, _WorkerEngine(on_unsatisfiable))
    return found


def probe(dask_worker: Any) -> dict[str, Any]:
    """Run by ``client.run`` on every worker: what this worker itself holds and runs right now."""
    state = dask_worker.state
    return {
        "name": str(dask_worker.name),
        "host": get_address_host(dask_worker.address),
        "total": dict(state.total_resources),
        "available": dict(state.available_resources),
        "running": [ts.key for ts in state.executing] + [ts.key for ts in state.long_running],
        "waiting": [ts.key for ts in state.constrained],
        "queued": len(state.ready),
        "gpus": [  # the devices each running task holds through this worker's GPU resource
            {"task": held.name, "ids": devices.physical(held.ordinals, held.table.value)}
            for held in list(_holders.values())
            if held.table is _tables.get(dask_worker)
        ],
    }
