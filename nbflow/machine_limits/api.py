"""The public limits API: set, list, remove, acquire (sync, several at once, async)."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping

from ..errors import LimitTimeout, TaskStopped
from ..specs import NAME_RE, Rate, check_amount, check_name, check_timeout
from ..thread_stop import shielded
from .holding import Holding
from .limit_on_disk import Budget, Cancel, GaveUp, Limit, get_limit
from .paths import limits_dir
from .status import LimitStatus
from .wake import GIVE_UP_POLL


def set_limit(name: str, capacity: float | None, rate: Rate | None = None, burst: int = 1) -> None:
    """Set this machine's limit ``name`` (checked by ``nbflow.limit``): its capacity and rate, persisted; waiters
    re-check at once. What is None is not set (removed if it was): each call states the whole limit."""
    get_limit(name).set(capacity, rate, burst)


def limit(name: str, capacity: float) -> None:
    """Set this machine's capacity for ``name``, without a rate (persisted; waiters re-check at once)."""
    name = check_name(name)
    set_limit(name, check_amount(name, capacity))


def remove_limit(name: str) -> None:
    """Forget the capacity and the rate set for ``name`` (``nbflow limits rm``).

    Allowed while the limit is held: holders keep their share until they release it; waiters and new
    acquirers then see the detected capacity (CPU, MEMORY, GPU) or get ``NoSuchLimit``.
    """
    name = check_name(name)
    get_limit(name).remove()


def limits() -> list[LimitStatus]:
    """This machine's limits (set, or detected and used), with live holders and the number waiting."""
    root = limits_dir()
    out = []
    for entry in sorted(os.listdir(root)):
        if NAME_RE.fullmatch(entry) and entry not in (".", "..") and os.path.isdir(os.path.join(root, entry)):
            status = get_limit(entry).status()
            if status is not None:
                out.append(status)
    return out


def check_demands(demands: Mapping[str, float]) -> None:
    """Raise ``NoSuchLimit`` / ``Unsatisfiable`` for a demand this machine can never grant (above the capacity
    or the rate's burst), so that it fails now (at submit, or before anything is held) instead of waiting forever.

    One ``stat`` of each capacity file (the parsed capacity is cached by inode and mtime) and one read of its
    rate record, if any.
    """
    for name, amount in demands.items():
        get_limit(name).check(amount)


def acquire(name: str, amount: float = 1.0, *, timeout: float | None = None, task: str = "") -> Holding:
    """Block until ``amount`` of ``name`` is free and take it all at once (``LimitTimeout`` after ``timeout``)."""
    name = check_name(name)
    amount = check_amount(name, amount)
    return get_limit(name).acquire(amount, task, Budget(timeout))


def acquire_all(demands: Mapping[str, float], *, timeout: float | None = None, task: str = "") -> list[Holding]:
    """Acquire several limits for one task, in sorted name order (so two callers never deadlock);
    on any failure release what was taken and re-raise. ``timeout`` bounds the whole."""
    checked = {check_name(name): check_amount(name, amount) for name, amount in demands.items()}
    check_demands(checked)
    return _acquire_all(checked, Budget(timeout), task)


def _acquire_all(checked: Mapping[str, float], budget: Budget, task: str) -> list[Holding]:
    held: list[Holding] = []
    with shielded:  # a stopped task's exception lands once the list is returned, not with part of it taken
        try:
            for name in sorted(checked):
                held.append(get_limit(name).acquire(checked[name], task, budget))
        except BaseException:
            for holding in reversed(held):
                holding.release()
            raise
    return held


def acquire_all_unless(
    demands: Mapping[str, float], give_up: Callable[[], bool], *, task: str = ""
) -> list[Holding] | None:
    """``acquire_all`` for a waiter that may be abandoned while it waits (a task cancelled or stopped meanwhile, an
    engine closed): waits in turns of ``GIVE_UP_POLL`` seconds; ``None`` once ``give_up()`` says so. A rate's
    token is reserved once and slept for in such turns (given back on giving up if nobody reserved after it)."""
    checked = {check_name(name): check_amount(name, amount) for name, amount in demands.items()}
    check_demands(checked)
    while True:
        try:
            return _acquire_all(checked, Budget(GIVE_UP_POLL, give_up=give_up), task)
        except LimitTimeout:
            if give_up():
                return None
        except GaveUp:
            return None


async def acquire_async(name: str, amount: float = 1.0, *, timeout: float | None = None, task: str = "") -> Holding:
    """``acquire`` without blocking the event loop: a free slot is taken inline, otherwise a helper thread waits
    for it; then the rate's tokens are slept for with ``asyncio.sleep``. If the awaiting task is cancelled the
    wait is aborted, a late grant released and the tokens given back (when nobody reserved after them)."""
    name = check_name(name)
    amount = check_amount(name, amount)
    timeout = check_timeout(timeout)  # before the cancellation pipe is opened
    lim = get_limit(name)
    budget = Budget(timeout)
    holding = lim.try_slot(amount, task)
    if holding is None:
        holding = await _slot_in_thread(lim, amount, task, timeout)
    try:
        taken = lim.reserve(holding, amount, budget)
        if taken is not None and (delay := taken.due - time.monotonic()) > 0:
            import asyncio  # already loaded when a coroutine runs; importing it eagerly costs ~50 ms

            try:
                await asyncio.sleep(delay)
            except BaseException:
                lim.rate.give_back(taken)
                raise
    except BaseException:
        holding.release()
        raise
    return holding


async def _slot_in_thread(lim: Limit, amount: float, task: str, timeout: float | None) -> Holding:
    """A helper thread waits for the slot; cancelling the awaiting task aborts its wait."""
    cancel = Cancel()
    budget = Budget(timeout, cancel)
    done: concurrent.futures.Future[Holding] = concurrent.futures.Future()
    done.set_running_or_notify_cancel()  # so cancelling the awaiting task cannot drop a late result

    def wait() -> None:
        try:
            done.set_result(lim.slot(amount, task, budget))
        except BaseException as exc:
            done.set_exception(exc)
        finally:
            cancel.close()

    import asyncio

    threading.Thread(target=wait, name=f"nbflow-acquire-{lim.name}", daemon=True).start()
    try:
        return await asyncio.wrap_future(done)
    except asyncio.CancelledError:
        cancel.set()
        done.add_done_callback(_release_if_granted)
        raise


async def acquire_all_async(demands: Mapping[str, float], *, task: str = "") -> list[Holding]:
    """``acquire_all`` without blocking the event loop (``acquire_async`` for each, in sorted name order); if the
    awaiting task is cancelled or one fails, what was taken is released."""
    checked = {check_name(name): check_amount(name, amount) for name, amount in demands.items()}
    check_demands(checked)
    held: list[Holding] = []
    try:
        for name in sorted(checked):
            held.append(await acquire_async(name, checked[name], task=task))
    except BaseException:
        for holding in reversed(held):
            holding.release()
        raise
    return held


def _release_if_granted(done: concurrent.futures.Future[Holding]) -> None:
    if done.exception() is None:
        done.result().release()


class Concurrency:
    """``with``/``async with`` a share of a limit; yields the ``Holding``.

    One object may be shared by threads and asyncio tasks (e.g. a module-level ``gpu = concurrency("GPU")``):
    each thread or task releases the holding it entered with, even when their blocks interleave.
    """

    def __init__(self, name: str, occupy: float = 1, timeout: float | None = None, *, task: str = "") -> None:
        self.name = check_name(name)
        self.occupy = check_amount(self.name, occupy)
        self.timeout = check_timeout(timeout)  # refused here, not at the first ``with``
        self.task = task
        self._held: dict[object, list[Holding]] = {}  # per thread / asyncio task: a stack (nested entries)

    def _push(self, owner: object, holding: Holding) -> Holding:
        self._held.setdefault(owner, []).append(holding)
        return holding

    def _pop(self, owner: object) -> None:
        stack = self._held[owner]
        holding = stack.pop()
        if not stack:
            del self._held[owner]
        holding.release()

    def __enter__(self) -> Holding:
        owner = threading.get_ident()
        try:
            with shielded:
                holding = self._push(owner, acquire(self.name, self.occupy, timeout=self.timeout, task=self.task))
            return holding
        except TaskStopped:  # the task was stopped while it waited: the stop lands here, before the block runs
            self._pop(owner)
            raise

    def __exit__(self, *exc: object) -> None:
        with shielded:
            self._pop(threading.get_ident())

    async def __aenter__(self) -> Holding:
        import asyncio

        holding = await acquire_async(self.name, self.occupy, timeout=self.timeout, task=self.task)
        return self._push(asyncio.current_task(), holding)

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        self._pop(asyncio.current_task())


def concurrency(name: str, occupy: float = 1, timeout: float | None = None, *, task: str = "") -> Concurrency:
    """Hold ``occupy`` of the machine-wide limit ``name`` for a ``with`` or ``async with`` block."""
    return Concurrency(name, occupy, timeout, task=task)
