"""Results cached across re-runs, kernels and processes: ``@nbflow.task(cache=True)``.

A cached call whose key is stored returns the stored value without running, on every engine; on Dask such
a hit never reaches the cluster. A miss runs once per key across the machine: it holds a lock on the key
while it computes, so the same call made meanwhile by another process waits and then reads the entry. Only
successes are stored.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from .. import context
from ..engines import engine
from ..errors import TaskTimeout
from ..futures import Future, find_futures
from .keys import Unknown, call_key, code_hash, state_hash
from .store import Entry, Store, cache_dir

__all__ = ["Entry", "cache_dir", "clear", "entries"]


def store() -> Store:
    return Store(cache_dir())


def entries() -> list[Entry]:
    """What the cache holds, most recently used first (``nbflow cache ls``)."""
    return store().entries()


def clear(name: str | None = None) -> int:
    """Delete the cached results of task ``name``, or all of them; how many were deleted."""
    return store().clear(name)


class Cached:
    """A cached task's function as the engines run it: look the key up, else compute under the key's lock,
    store, return. Picklable: it runs in threads, child processes and on Dask workers alike.

    Its first argument is the call's key when it is known at submit (``None``: compute it from the arguments
    where it runs), so the key never mixes with the task's own arguments."""

    def __init__(self, fn: Callable[..., Any], name: str, code: str, options: Any, root: str) -> None:
        self.fn, self.name, self.code, self.root = fn, name, code, root
        self.cache_key, self.expiration = options.cache_key, options.cache_expiration

    def now(self) -> str:
        """The code part of the keys as of now: the notebook's constants and helpers may have changed (a cell
        defining them run again) since the plan."""
        return self.code + state_hash(self.fn)

    def key(self, code: str, args: tuple, kwargs: dict) -> str:
        return call_key(self.name, code, args, kwargs, self.cache_key)

    def __call__(self, key: str | None, /, *args: Any, **kwargs: Any) -> Any:
        return self._call(self.fn, key, *args, **kwargs)

    async def call_async(self, key: str | None, /, *args: Any, **kwargs: Any) -> Any:
        """``__call__`` for an async task: the key's lock and the store are used from a thread of the call's own
        (they block), which has the task's coroutine run on this loop; cancelling the call cancels it."""
        import asyncio
        import contextvars

        loop = asyncio.get_running_loop()
        running: list[Any] = []
        done = loop.create_future()

        def compute(*a: Any, **k: Any) -> Any:
            running.append(asyncio.run_coroutine_threadsafe(self.fn(*a, **k), loop))
            return running[-1].result()

        def work(context: contextvars.Context) -> None:  # (in the call's context: its deadline, for ``_ended``)
            try:
                outcome = (context.run(self._call, compute, key, *args, **kwargs), None)
            except BaseException as exc:
                outcome = (None, exc)
            loop.call_soon_threadsafe(_settle, done, *outcome)

        threading.Thread(target=work, args=(contextvars.copy_context(),), name="nbflow-cached", daemon=True).start()
        try:
            return await done
        except asyncio.CancelledError:
            for computing in running:
                computing.cancel()
            raise

    def _call(self, fn: Callable[..., Any], key: str | None, /, *args: Any, **kwargs: Any) -> Any:
        key = key or self.key(self.now(), args, kwargs)
        shelf = Store(self.root)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(shelf.computing(key))
            except TimeoutError:  # the attempt's own timeout (``TaskTimeout`` is an ``OSError`` too)
                raise
            except OSError as exc:  # a store that cannot be used never fails the task: it runs uncached
                _cannot_store(self.root, exc)
                return fn(*args, **kwargs)
            if _ended():  # the timeout fired while this attempt waited for the key's lock: nothing runs late
                raise TaskTimeout(f"task {self.name!r} ran past its timeout waiting for another run of the same call")
            found = shelf.get(key, self.expiration)
            if found is not None:  # another process computed it while this one waited
                return found[1]
            start = time.monotonic()
            value = fn(*args, **kwargs)
            took = time.monotonic() - start
            if not _ended():
                try:
                    shelf.put(key, self.name, value, took)
                except OSError as exc:
                    _cannot_store(self.root, exc)
            return value


def _settle(done: Any, value: Any, exc: BaseException | None) -> None:
    if done.done():  # its awaiter was cancelled
        return
    if exc is None:
        done.set_result(value)
    else:
        done.set_exception(exc)


def _ended() -> bool:
    """Whether the engine has ended the attempt running here: its timeout fired (while it waited for the key's
    lock or computed), so its late result is dropped. The deadline is taken before the engine's timer is armed,
    so a timeout that has fired is always seen."""
    ctx = context.current()
    return ctx is not None and ctx.deadline is not None and time.monotonic() >= ctx.deadline


def _cannot_store(root: str, exc: OSError) -> None:
    warnings.warn(f"nbflow: results are not cached: the store {root} cannot be used ({exc})", stacklevel=3)


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # task -> its Cached function, while it lives


def plan(task: Any) -> Cached:
    """The ``Cached`` function of a cached task, made once per task (its code is hashed here, in the kernel)."""
    cached = _plans.get(task)
    if cached is None:
        opts = task.options
        cached = _plans.setdefault(task, Cached(task.fn, opts.name, code_hash(task.fn), opts, cache_dir()))
    return cached


def known_key(cached: Cached, code: str, args: tuple, kwargs: dict) -> str | None:
    """The call's key if it can be known before running (futures among the arguments: only if they are of
    cached tasks, and no ``cache_key`` function needs their values)."""
    if find_futures((args, kwargs)) and cached.cache_key is not None:
        return None
    try:
        return cached.key(code, args, kwargs)
    except Unknown:
        return None


def hit(name: str, key: str, found: tuple[Entry, Any]) -> Future:
    """A future that is already done with the stored value."""
    fut = Future(name)
    fut.cache_key = key
    fut.cached = found[0]
    fut.set_result(found[1])
    return fut


class _Runner:
    """The task as the engine runs it on a miss: the same options, the ``Cached`` function (an async task's: its
    coroutine function)."""

    def __init__(self, cached: Cached, options: Any, is_async: bool) -> None:
        self.fn = cached.call_async if is_async else cached
        self.options, self.is_async = options, is_async

    @property
    def name(self) -> str:
        return self.options.name


def submit_many(task: Any, calls: list[tuple[tuple, dict]]) -> list[Future]:
    """Submit cached calls: a stored one is a done future at once, the others go to the engine in one batch."""
    cached, shelf = plan(task), store()
    code = cached.now()  # once for the batch
    out: dict[int, Future] = {}
    misses: list[tuple[int, str | None, tuple, dict]] = []  # (index, key if known, args, kwargs)
    for i, (args, kwargs) in enumerate(calls):
        key = known_key(cached, code, args, kwargs)
        found = shelf.get(key, cached.expiration) if key is not None else None
        if found is not None:
            out[i] = hit(task.name, key, found)
        else:
            misses.append((i, key, args, kwargs))
    if misses:
        runner = _Runner(cached, task.options, task.is_async)
        placed = engine().map(runner, [((key, *args), kwargs) for _, key, args, kwargs in misses])
        for (i, key, _, _), fut in zip(misses, placed, strict=True):
            fut.cache_key = key
            out[i] = fut
    return [out[i] for i in range(len(calls))]


def call(task: Any, args: tuple, kwargs: dict) -> Any:
    """A direct call of a cached task: the stored value, else run here and store."""
    cached = plan(task)
    key = known_key(cached, cached.now(), args, kwargs)
    found = store().get(key, cached.expiration) if key is not None else None
    if found is not None:
        return found[1]
    return engine().call(_Runner(cached, task.options, False), (key, *args), kwargs)


async def call_async(task: Any, args: tuple, kwargs: dict) -> Any:
    """``call`` for an async task: awaited where it is called."""
    from ..engines.async_call import call_async as run

    cached = plan(task)
    key = known_key(cached, cached.now(), args, kwargs)
    found = store().get(key, cached.expiration) if key is not None else None
    if found is not None:
        return found[1]
    return await run(engine(), _Runner(cached, task.options, True), (key, *args), kwargs)
