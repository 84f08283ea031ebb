"""On a Dask worker: the function Dask runs for every attempt of an nbflow task.

Imported by the client (which pickles ``run_task`` by reference) and by every worker running an nbflow task.
"""

from __future__ import annotations

import functools
import pickle
import traceback
from typing import Any

from distributed import get_worker

from .. import context, devices, sidechannel
from ..errors import TaskStopped, portable
from ..futures import set_block_hook
from ..options import Runnable
from . import dask_worker_snapshots as snapshots
from . import dask_worker_stops as stops
from .attempt import Attempt, Reported, not_a_coroutine
from .core import bind
from .dask_attempt_keys import task_key
from .dask_worker_deadline import run_with_deadline
from .dask_worker_engine import worker_engine
from .dask_worker_events import send_side, starts
from .dask_worker_gpus import WorkerGpus, gpu_table
from .dask_worker_secede import acquire_limits, seceded


def run_task(packed: bytes, args: tuple, kwargs: dict, on_unsatisfiable: str) -> Any:
    """The function Dask runs for every attempt of an nbflow task: bind the worker's engine, hold the
    task's ``limits`` (cluster, then machine-wide), enforce its ``timeout``.

    ``packed`` is the task cloudpickled by the client (see ``DaskEngine._place``). Dependencies arrive
    already resolved by Dask. Retries are the client's: a failed attempt raises, and holds nothing after. A
    client stops it by its Dask key (``dask_worker_stops``): ``TaskStopped`` is raised in the function.
    """
    task = unpack(packed)
    opts = task.options
    worker = get_worker()
    sidechannel.install(functools.partial(send_side, worker))
    engine = worker_engine(worker, on_unsatisfiable)
    previous = bind(engine)
    set_block_hook(seceded)
    dask_key = starts.begin(worker)
    call = stops.begin(dask_key)
    try:
        key, number = task_key(dask_key)
        attempt = Attempt(number, key, opts.name)
        attempt.holdings = acquire_limits(opts.limits, opts.name, call, worker, dask_key) if opts.limits else []
        try:
            pick_gpus(worker, attempt, opts.resources.get("GPU", 0), dask_key)
            where, holds = str(worker.name), opts.held() if opts.limits else opts.resources
            if opts.timeout is None:
                saved = context.enter(attempt.context(where, holds))
                try:
                    return not_a_coroutine(call.run(functools.partial(task.fn, *args, **kwargs)), opts.name)
                finally:
                    context.leave(saved)
            return run_with_deadline(task, args, kwargs, engine, attempt, where, holds, call)
        finally:
            attempt.release()
    except TaskStopped:
        if call.stopped:  # the client stopped it, and counts it cancelled: no error for Dask to log
            return None
        raise
    except BaseException as exc:  # (SystemExit, KeyboardInterrupt too: raised as they are, Dask ends the worker)
        failed = reported(exc, args, kwargs, worker, dask_key)
    finally:
        stops.end(dask_key)
        starts.end(dask_key)
        set_block_hook(None)
        bind(previous)
    raise failed  # (outside the handler: the user's exception, deep traceback and all, is not its context)


def reported(exc: BaseException, args: tuple, kwargs: dict, worker: Any, dask_key: str) -> Reported:
    """The failed attempt's exception with its report (a snapshot of its frames, its big locals kept here), and the
    innermost frames of its traceback: Dask pickles it with its traceback, and one a few hundred frames deep does
    not pickle (the task's future would never be set)."""
    from ..debugging.worker_snapshot import FRAMES_KEPT, report

    sent = report(exc, (args, kwargs), frames=True)
    sent["worker"] = str(worker.name)  # (a task that fails at once ends before its start is reported)
    snapshots.keep_big_locals(sent["frames"], worker.address, dask_key)
    tb, depth = exc.__traceback__, 0
    chain = tb
    while chain is not None:
        depth, chain = depth + 1, chain.tb_next
    for _ in range(depth - FRAMES_KEPT):
        tb = tb.tb_next if tb is not None else None
    return Reported(portable(exc, traceback.format_exc()), sent).with_traceback(tb)


def pick_gpus(worker: Any, attempt: Attempt, amount: float, dask_key: str) -> None:
    """The attempt's GPUs: from a machine-wide ``GPU`` limit it holds (distinct across the machine), else from this
    worker's devices for its ``GPU`` resource ``amount`` (distinct on this worker)."""
    gpus = devices.held(attempt.holdings)
    table = gpu_table(worker) if gpus or amount else None
    if not gpus and amount:
        held = WorkerGpus(table, amount, dask_key, attempt.name)
        attempt.holdings = [*attempt.holdings, held]  # released with the limits: when the function has really stopped
        gpus = held.ordinals
    attempt.gpus = gpus
    attempt.ids = devices.physical(gpus, table.value) if gpus else None


_CACHED_BELOW = 64 * 1024  # a task closing over big data is not kept alive by the cache


def unpack(packed: bytes) -> Runnable:
    """The task in ``packed``, unpickled once per distinct bytes: its tasks share the function and its globals."""
    return _unpack_cached(packed) if len(packed) < _CACHED_BELOW else pickle.loads(packed)


@functools.lru_cache(maxsize=256)
def _unpack_cached(packed: bytes) -> Runnable:
    return pickle.loads(packed)
