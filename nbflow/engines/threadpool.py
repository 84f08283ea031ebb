"""The local engine's worker threads.

Work items sit in two deques (granted tasks, which already hold a scarce resource, go first); a
``SimpleQueue`` carries one token per item, which is the cheapest way in CPython to wake exactly one
idle thread. A thread whose task blocks on a future (or overruns its timeout) *lends* its slot: the
pool starts a replacement, so nested pipelines never deadlock, even with one worker, and the surplus
thread retires after its next task once the borrower is back.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

_STOP = object()
_WORK = True


class ThreadPool:
    """``workers`` threads running ``execute(item)``; ``setup()`` runs first in each thread."""

    def __init__(
        self,
        workers: int,
        execute: Callable[[Any], None],
        setup: Callable[[], None],
        teardown: Callable[[], None],
        name: str,
    ) -> None:
        self.workers = workers
        self._execute = execute
        self._setup = setup
        self._teardown = teardown
        self._name = name
        self._tokens: queue.SimpleQueue = queue.SimpleQueue()
        self._normal: deque = deque()
        self._urgent: deque = deque()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._ids = itertools.count(1)
        self._lent = 0
        self.closing = False

    def put(self, item: Any, urgent: bool = False) -> bool:
        """Queue ``item``; False once the pool is closing (the caller settles the item)."""
        if self.closing:
            return False
        (self._urgent if urgent else self._normal).append(item)
        self._tokens.put(_WORK)
        if len(self._threads) < self.workers + self._lent:
            self._grow(one=True)
        return True

    @property
    def queued(self) -> int:
        """Items waiting for a thread."""
        return len(self._normal) + len(self._urgent)

    def lend(self) -> None:
        """The calling task stops using its slot for a while: make sure another thread can run."""
        with self._lock:
            self._lent += 1
        self._grow()

    def unlend(self) -> None:
        """The borrower is back; a surplus thread retires after its current task."""
        with self._lock:
            self._lent -= 1

    @contextlib.contextmanager
    def lent(self) -> Iterator[None]:
        """The block hook of the worker threads: lend the slot while waiting on a future."""
        self.lend()
        try:
            yield
        finally:
            self.unlend()

    def close(self) -> list[Any]:
        """Stop taking items; returns the items never run. Running items finish in the background, then
        their threads end (this does not wait for them)."""
        with self._lock:
            self.closing = True
            threads = len(self._threads)
        left = self._drain()
        for _ in range(threads):
            self._tokens.put(_STOP)
        return left + self._drain()

    def _drain(self) -> list[Any]:
        items = []
        for source in (self._urgent, self._normal):
            while True:
                try:
                    items.append(source.popleft())
                except IndexError:
                    break
        return items

    def _grow(self, one: bool = False) -> None:
        with self._lock:
            while not self.closing and len(self._threads) < self.workers + self._lent:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{next(self._ids)}", daemon=True)
                self._threads.add(thread)
                thread.start()
                if one:
                    break

    def _next(self) -> Any:
        """The next item (granted ones first), or ``_STOP``."""
        while True:
            if self._tokens.get() is _STOP:
                return _STOP
            while True:  # one item per token was queued before the token, so this ends at once
                if self._urgent:
                    try:
                        return self._urgent.popleft()
                    except IndexError:
                        pass
                try:
                    return self._normal.popleft()
                except IndexError:
                    if self.closing:  # close() drained the deques: wait for the stop token
                        break

    def _retire(self, me: threading.Thread) -> bool:
        with self._lock:
            if len(self._threads) > self.workers + self._lent:
                self._threads.discard(me)
                return True
        return False

    def _work(self) -> None:
        me = threading.current_thread()
        self._setup()
        try:
            while True:
                item = self._next()
                if item is _STOP:
                    return
                self._execute(item)
                if len(self._threads) > self.workers + self._lent and self._retire(me):
                    return
        finally:
            with self._lock:
                self._threads.discard(me)
            self._teardown()
