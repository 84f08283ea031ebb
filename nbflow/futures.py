"""``nbflow.Future``: a ``concurrent.futures.Future`` with a name, a key and a status, awaitable.

Because it *is* a ``concurrent.futures.Future``, ``wait`` and ``as_completed`` are the standard library's.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import UpstreamError

STATUSES = ("pending", "waiting", "running", "finished", "error", "cancelled")

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


def new_key(name: str) -> str:
    """A readable key unique across processes and clients: ``infer-3fa2c1d0-17``."""
    return f"{name}-{_TOKEN}-{next(_counter)}"


class Future(cf.Future):
    """The result of a submitted task; also exposes ``name``, ``key``, ``status`` and ``worker``."""

    def __init__(self, name: str, key: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.key = key or new_key(name)
        self.worker: str | None = None  # where the task ran (or runs), once known
        self.phase = "pending"  # pending | waiting | running, set by the engine while not done
        self.on_cancel: Callable[[], object] | None = None  # engine hook, e.g. cancel the Dask future

    @property
    def status(self) -> str:
        """One of ``pending``, ``waiting`` (for a resource), ``running``, ``finished``, ``error``, ``cancelled``."""
        if not self.done():
            return self.phase
        if self.cancelled():
            return "cancelled"
        return "error" if self.exception() is not None else "finished"

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            with blocking():
                return super().result(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            with blocking():
                return super().exception(timeout)
        return super().exception(timeout)

    def cancel(self) -> bool:
        first = self.mark_cancelled()
        if first and self.on_cancel is not None:
            self.on_cancel()
        return first or self.cancelled()

    def mark_cancelled(self) -> bool:
        """Cancel without telling the engine (for the engine itself); True if this call cancelled it."""
        with self._condition:
            if not super().cancel() or self._state == cf._base.CANCELLED_AND_NOTIFIED:
                return False
            # No executor will notify it: wake wait() and as_completed() now, not when a worker would pick it.
            self.set_running_or_notify_cancel()
            return True

    def _prefetch(self, siblings: list[Future]) -> None:
        """Fetch the values of ``siblings`` along with this one (engines that keep values remote; else no-op)."""

    def __await__(self):
        import asyncio  # already loaded wherever something awaits; importing it eagerly costs ~50 ms

        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        where = f" on {self.worker}" if self.worker else ""
        return f"<nbflow.Future {self.key} {self.status}{where}>"


def wait(fs: Iterable[cf.Future], timeout: float | None = None, return_when: str = cf.ALL_COMPLETED):
    """``concurrent.futures.wait`` for nbflow futures (returns ``(done, not_done)``)."""
    with blocking():
        return cf.wait(list(fs), timeout=timeout, return_when=return_when)


def as_completed(fs: Iterable[cf.Future], timeout: float | None = None):
    """``concurrent.futures.as_completed`` for nbflow futures."""
    with blocking():
        yield from cf.as_completed(list(fs), timeout=timeout)


def gather(fs: Iterable[cf.Future], timeout: float | None = None) -> list[Any]:
    """The results of ``fs`` in order; raises the first failure (in order) like ``Future.result``.

    Values kept on a cluster are fetched in batches: every sibling already done comes along with the first.
    """
    fs = list(fs)
    values = []
    for f in fs:
        if isinstance(f, Future) and f.exception(timeout) is None:
            f._prefetch(fs)
        values.append(f.result(timeout))
    return values


def find_futures(obj: Any, out: list[Future] | None = None) -> list[Future]:
    """The nbflow futures inside ``obj`` (itself, or nested in lists, tuples, sets and dict values)."""
    out = [] if out is None else out
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            find_futures(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            find_futures(item, out)
    return out


def substitute(obj: Any, replace: Callable[[Future], Any]) -> Any:
    """A copy of ``obj`` with every nbflow future replaced by ``replace(future)``; containers rebuilt."""
    if isinstance(obj, Future):
        return replace(obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [substitute(item, replace) for item in obj]
        if type(obj) is tuple or type(obj) is list or type(obj) is set or type(obj) is frozenset:
            return type(obj)(items)
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)  # namedtuple
    if isinstance(obj, dict):
        return type(obj)((k, substitute(v, replace)) for k, v in obj.items())
    return obj


def upstream_value(dep: Future) -> Any:
    """The value of a finished dependency, or ``UpstreamError`` naming it if it failed or was cancelled."""
    if dep.cancelled():
        raise UpstreamError(dep.name)
    exc = dep.exception()
    if exc is not None:
        raise UpstreamError(dep.name, exc) from exc
    return dep.result()
