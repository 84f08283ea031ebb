"""``nbflow.Future``: a ``concurrent.futures.Future`` with a name, a key and a status, awaitable.

Because it *is* a ``concurrent.futures.Future``, ``wait`` and ``as_completed`` are the standard library's.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import NbflowError, TaskArgumentError, UpstreamError
from .specs import duration

STOP_GRACE = 3.0  # seconds a stopped task's child process has between SIGTERM and SIGKILL

STATUSES = ("pending", "waiting", "running", "stopping", "finished", "error", "cancelled")

_PENDING = cf._base.PENDING
_TOKEN = os.urandom(4).hex()
_counter = itertools.count()
_thread = threading.local()


def set_block_hook(hook: Callable[[], contextlib.AbstractContextManager] | None) -> None:
    """Engines call this in their worker threads: ``hook()`` wraps every blocking wait on a future there.

    It lets a task wait for tasks it submitted without starving the pool (the local engine lends out
    its worker slot; the Dask engine secedes and rejoins).
    """
    _thread.hook = hook


@contextlib.contextmanager
def blocking() -> Iterator[None]:
    """Wrap a wait on futures in the calling thread's block hook, if any."""
    hook = getattr(_thread, "hook", None)
    if hook is None:
        yield
    else:
        with hook():
            yield


def _not_on_a_task_loop(name: str) -> None:
    """Refuse a blocking wait in an async task's coroutine: it would hold the event loop that the awaited task (or
    its result) may need, for good."""
    from .context import in_coroutine

    if in_coroutine():
        import asyncio

        if asyncio._get_running_loop() is not None:
            raise NbflowError(
                f"waiting for task {name!r} with .result() inside an async task would block its event loop (and"
                " perhaps never end): use await on the future instead"
            )


def new_key(name: str) -> str:
    """A readable key unique across processes and clients: ``infer-3fa2c1d0-17``."""
    return f"{name}-{_TOKEN}-{next(_counter)}"


class _Condition(threading.Condition):
    """A ``threading.Condition`` over an ``RLock`` whose lock methods are looked up when used, not bound when it is
    made: five objects fewer per future for the garbage collector to walk, thousands of futures pending at once."""

    def __init__(self) -> None:  # (not the base's: it binds the lock's methods)
        self._lock = threading.RLock()
        self._waiters: collections.deque = collections.deque()

    acquire = property(lambda self: self._lock.acquire)
    release = property(lambda self: self._lock.release)
    _release_save = property(lambda self: self._lock._release_save)
    _acquire_restore = property(lambda self: self._lock._acquire_restore)
    _is_owned = property(lambda self: self._lock._is_owned)


class Future(cf.Future):
    """The result of a submitted task; also exposes ``name``, ``key``, ``status``, ``worker``, ``attempt`` and, for
    cached tasks, ``cache_key`` and ``cached``."""

    def __init__(self, name: str, key: str | None = None) -> None:
        # the base's fields (``concurrent.futures.Future.__init__``), with a lighter condition
        self._condition = _Condition()
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list = []
        self._done_callbacks: list = []
        self.name = name
        self.key = key or new_key(name)
        self.worker: str | None = None  # where the task ran (or runs), once known
        self.attempt = 0  # the attempt running or next to run: 1 once the first failure is to be retried
        self.cache_key: str | None = None  # a cached task's: the key its value is stored under
        self.cached: Any = None  # the cache entry it was read from (``caching.Entry``), if it did not run
        # the engines' (below): the status while not done (pending | waiting | running), the engine and run that
        # cancel() (once it succeeds) and stop() tell, and what it keeps of its failed attempt (``kernel_failure``)
        self._phase = "pending"
        self._failure: Any = None
        self._owner: tuple | None = None  # (engine, run) while not done: what cancel() and stop() tell
        self._watched = False  # a done-callback was added: completion must not run it in an engine's loop

    @property
    def status(self) -> str:
        """One of ``pending``, ``waiting`` (for a resource), ``running``, ``stopping`` (``stop()`` was asked and the
        task has not really stopped yet), ``finished``, ``error``, ``cancelled``."""
        if not self.done():
            return self._phase
        if self.cancelled():
            return "cancelled"
        return "error" if self.exception() is not None else "finished"

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            _not_on_a_task_loop(self.name)
            with blocking(), self._interruptible():
                return super().result(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            _not_on_a_task_loop(self.name)
            with blocking(), self._interruptible():
                return super().exception(timeout)
        return super().exception(timeout)

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """An interrupted wait (Kernel > Interrupt) stops the wait only: its traceback says how to stop the task."""
        try:
            yield
        except KeyboardInterrupt as exc:
            note = (
                f"nbflow: only the wait was interrupted; task {self.name!r} keeps running: its future's .stop() "
                "stops it (a task cell: %nbflow stop NAME)"
            )
            exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # (add_note, also on Python 3.10)
            raise

    def add_done_callback(self, fn: Callable[[cf.Future], object]) -> None:
        # ``_condition`` is the base class's lock: no public API makes "no callback yet, so set the result
        # here" atomic with a concurrent add_done_callback (see ``_set_result_unwatched``).
        with self._condition:
            self._watched = True
            super().add_done_callback(fn)

    def cancel(self) -> bool:
        """Cancel the task if it has not started (``concurrent.futures``' meaning); ``stop()`` stops it in any state."""
        first = self._mark_cancelled()
        owner = self._owner
        if first and owner is not None:
            owner[0]._cancelled(owner[1])
        return first or self.cancelled()

    def stop(self, grace: float | str = STOP_GRACE) -> bool:
        """Stop the task, whether it is pending, waiting for a resource, in a retry delay or running; it is not
        retried, and its status becomes ``cancelled`` once it has really stopped (``stopping`` until then).

        A ``processes=True`` task's child gets SIGTERM, then SIGKILL ``grace`` seconds later (stopping it again
        with a shorter grace, e.g. ``stop(grace=0)``, kills it sooner); a task in a thread
        gets ``TaskStopped`` at its next Python bytecode (code stuck in a C call stops when the call returns).
        Its limits, resources and GPUs are free once it has stopped. Returns True if the task is cancelled or
        stopping, False if it had already finished or failed.
        """
        grace = duration(grace, "grace", zero_ok=True)
        if self.done():
            return self.cancelled()
        owner = self._owner
        return owner[0]._stop(owner[1], grace) if owner is not None else self.cancel()

    def replay(self) -> Any:
        """Run this failed task's last attempt again, here in the calling thread, with the inputs it received
        (dependency values included), so that ``breakpoint()`` or ``%debug`` can step through it; returns or raises
        what the task's function does. Side effects run again. A task that never ran (an upstream failed) is not
        replayed: ``NbflowError`` names the task that failed, to replay that one."""
        __tracebackhide__ = True  # (IPython leaves this frame out of the replayed task's traceback)
        return own_failure(self).replay()

    # --- the engines' side: like ``set_running_or_notify_cancel``, only engine implementations call these ---------

    def _set_result_unwatched(self, value: Any, before: Callable[[], object]) -> bool:
        """Set the result only if no done-callback waits for it, so none runs in the caller's thread (an event
        loop), after ``before()`` (counting it); True if set. A callback added later runs in its own thread."""
        with self._condition:
            if self._watched or self.done():
                return False
            before()
            self.set_result(value)
            return True

    def _mark_cancelled(self) -> bool:
        """Cancel a future that has not started, without telling the engine (for the engine itself); True if this
        call cancelled it."""
        return self._end_cancelled((cf._base.PENDING,))

    def _mark_stopped(self) -> bool:
        """A future that may already be running ends cancelled (its task was stopped); True if this call did it."""
        return self._end_cancelled((cf._base.PENDING, cf._base.RUNNING))

    def _end_cancelled(self, states: tuple[str, ...]) -> bool:
        """Cancelled and notified in one step under the future's lock (no executor notifies it, and two steps
        would race an engine's ``_claim``: whoever came second would get "unexpected state")."""
        with self._condition:
            if self._state not in states:
                return False
            self._state = cf._base.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        return True

    def _claim(self) -> bool:
        """Pending -> running, like an executor's check; True if it runs (now or already), False if it was
        cancelled (or is done)."""
        with self._condition:
            if self._state == cf._base.RUNNING:
                return True
            if self._state != cf._base.PENDING:  # (nbflow never leaves one CANCELLED without notifying it)
                return False
            return self.set_running_or_notify_cancel()

    @classmethod
    def _fetch(cls, futures: list[cf.Future]) -> None:
        """Bring here, in as few round trips as possible, the values of those of ``futures`` (all finished without
        error) that are of this class and still kept elsewhere (engines that keep values on a cluster)."""

    def __await__(self):
        return self._awaited().__await__()

    async def _awaited(self) -> Any:
        """``await fut``: in a worker's thread running an event loop of its own (a sync task's ``asyncio.run``), the
        thread's slot is lent while it waits, as for ``result()`` (the awaited task may need it)."""
        import asyncio  # already loaded wherever something awaits; importing it eagerly costs ~50 ms

        with blocking():
            return await asyncio.wrap_future(self)

    def __repr__(self) -> str:
        where = f" on {self.worker}" if self.worker else ""
        return f"<nbflow.Future {self.key} {self.status}{where}>"


def failed_origin(fut: Future) -> tuple[Future, Any]:
    """The future whose attempt really failed, for ``fut`` or, if it never ran, its upstream, and what it keeps of
    that failure (``debugging.kernel_failure.Failure``); a one-line ``NbflowError`` when there is none (not done,
    finished, cancelled, failed before it ran)."""
    if not isinstance(fut, Future):
        raise TypeError(f"expected an nbflow future (what submit returns), got {type(fut).__name__}")
    while True:
        if not fut.done():
            raise NbflowError(f"task {fut.name!r} has not failed: it is {fut.status} (wait for it first)")
        if fut.cancelled():
            raise NbflowError(f"task {fut.name!r} did not fail: it was cancelled")
        exc = fut.exception()
        if exc is None:
            raise NbflowError(f"task {fut.name!r} did not fail: it finished")
        failure = getattr(fut, "_failure", None)
        if failure is not None:
            return fut, failure
        upstream = getattr(exc, "upstream", None)
        if not isinstance(exc, UpstreamError) or upstream is None:
            raise NbflowError(f"task {fut.name!r} failed before it ran ({type(exc).__name__}: {exc}): nothing to debug")
        fut = upstream


def own_failure(fut: Future) -> Any:
    """What ``fut`` keeps of its own failed attempt, for ``replay``; a one-line ``NbflowError`` if it has none (as
    for ``failed_origin``), or if it never ran because an upstream task failed (that one is to be replayed)."""
    failed, failure = failed_origin(fut)
    if failed is not fut:
        raise NbflowError(
            f"task {fut.name!r} never ran: its upstream task {failed.name!r} failed; replay that one (its future's"
            " .replay(), or %nbflow replay for a task cell)"
        )
    return failure


def wait(fs: Iterable[cf.Future], timeout: float | None = None, return_when: str = cf.ALL_COMPLETED):
    """``concurrent.futures.wait`` for nbflow futures (returns ``(done, not_done)``)."""
    with blocking():
        return cf.wait(list(fs), timeout=timeout, return_when=return_when)


def as_completed(fs: Iterable[cf.Future], timeout: float | None = None):
    """``concurrent.futures.as_completed`` for nbflow futures."""
    with blocking():
        yield from cf.as_completed(list(fs), timeout=timeout)


def gather(fs: Iterable[cf.Future], timeout: float | None = None) -> list[Any]:
    """The results of ``fs`` in order; raises the first failure (in order) like ``Future.result``, or
    ``TimeoutError`` if they are not all done within ``timeout`` seconds (for the whole call).

    Like ``client.gather``: wait for all, then fetch the values kept on a cluster in one batch per engine,
    not one round trip per future.
    """
    fs = list(fs)
    for i, f in enumerate(fs):
        if not isinstance(f, cf.Future):
            raise TypeError(
                f"nbflow.gather takes futures, but item {i} is a {type(f).__name__}: pass a flat list of futures"
                " (e.g. [f for group in groups for f in group])"
            )
    deadline = None if timeout is None else time.monotonic() + timeout
    with blocking():  # one wake-up when all are done (or one failed), not one per future as it finishes
        cf.wait(fs, timeout, cf.FIRST_EXCEPTION)
    for f in fs:
        exc = f.exception(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if exc is not None:
            raise exc
    for kind in {type(f) for f in fs if isinstance(f, Future)}:
        kind._fetch(fs)
    return [f.result() for f in fs]


def find_futures(obj: Any, out: list[Future] | None = None) -> list[Future]:
    """The nbflow futures inside ``obj`` (itself, or nested in lists, tuples, sets and dict values)."""
    out = [] if out is None else out
    _find(obj, out, set())
    return out


def _find(obj: Any, out: list[Future], seen: set[int]) -> None:
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set, frozenset, dict)):
        if id(obj) in seen:  # a container that holds itself: one visit is enough
            return
        seen.add(id(obj))
        for item in obj.values() if isinstance(obj, dict) else obj:
            _find(item, out, seen)


def substitute(obj: Any, replace: Callable[[Future], Any], _path: frozenset[int] = frozenset()) -> Any:
    """A copy of ``obj`` with every nbflow future replaced by ``replace(future)``; containers rebuilt.

    Containers without futures are returned as they are. A container that holds itself *and* futures cannot
    be rebuilt: ``TaskArgumentError``.
    """
    if isinstance(obj, Future):
        return replace(obj)
    if not isinstance(obj, (list, tuple, set, frozenset, dict)) or not find_futures(obj):
        return obj
    if id(obj) in _path:
        raise TaskArgumentError(
            f"a task argument of type {type(obj).__name__} contains itself and holds futures: pass the futures"
            " in a container without cycles"
        )
    path = _path | {id(obj)}
    if isinstance(obj, dict):
        return type(obj)((k, substitute(v, replace, path)) for k, v in obj.items())
    items = [substitute(item, replace, path) for item in obj]
    if type(obj) in (tuple, list, set, frozenset):
        return type(obj)(items)
    return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)  # namedtuple


def upstream_value(dep: Future) -> Any:
    """The value of a finished dependency, or ``UpstreamError`` naming it if it failed or was cancelled."""
    if dep.cancelled():
        raise UpstreamError(dep.name, None, dep)
    exc = dep.exception()
    if exc is not None:
        raise UpstreamError(dep.name, exc, dep) from exc
    return dep.result()
