"""The local engine's grant stage: machine limits are granted *before* a task takes a pool worker.

One thread per set of limit names ("line"), created on first use and fed FIFO, blocks in
``acquire_all`` and hands each granted task to the pool. A task waiting for ``GPU`` therefore never
holds a worker, and tasks without resources never meet a grant thread at all.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import LimitTimeout, NbflowError
from ..limits import Holding, acquire_all

POLL = 0.5  # seconds a line waits in one acquire before it re-checks for cancellation and close


def check(demands: Mapping[str, float]) -> None:
    """Raise ``NoSuchLimit`` / ``Unsatisfiable`` now, at submit, for a demand this machine can never grant.

    One ``stat`` of each capacity file: the limits module caches the parsed capacity by inode and mtime.
    """
    from ..limits.semaphore import get_limit

    for name, amount in demands.items():
        get_limit(name).check(amount)


class Grants:
    """FIFO lines of tasks waiting for limits; ``granted(item, holdings)`` or ``failed(item, exc)`` ends each wait.

    Items need ``demands`` (name -> amount), ``line`` (the sorted names), ``name`` and ``fut``.
    """

    def __init__(
        self,
        granted: Callable[[Any, list[Holding]], None],
        failed: Callable[[Any, BaseException | None], None],
        name: str,
    ) -> None:
        self._granted = granted
        self._failed = failed
        self._name = name
        self._lines: dict[tuple[str, ...], tuple[queue.SimpleQueue, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def put(self, item: Any) -> None:
        """Queue ``item`` on the line of its limit names (starting that line's thread on first use)."""
        line = self._lines.get(item.line)
        if line is None:
            with self._lock:
                if self._closed:
                    self._failed(item, None)
                    return
                line = self._lines.get(item.line)
                if line is None:
                    q: queue.SimpleQueue = queue.SimpleQueue()
                    thread = threading.Thread(
                        target=self._serve, args=(q,), name=f"{self._name}-grant-{'+'.join(item.line)}", daemon=True
                    )
                    line = self._lines[item.line] = (q, thread)
                    thread.start()
        line[0].put(item)

    def close(self) -> None:
        """Stop every line: queued items and the one being acquired end with ``failed(item, None)``."""
        with self._lock:
            self._closed = True
            lines = list(self._lines.values())
        for q, _ in lines:
            q.put(None)
        for _, thread in lines:
            if thread is not threading.current_thread():
                thread.join()

    def _serve(self, q: queue.SimpleQueue) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            if self._closed:
                self._failed(item, None)
                continue
            if item.fut.cancelled():
                continue
            try:
                holdings = self._acquire(item)
            except NbflowError as exc:  # e.g. the capacity was lowered or removed while it waited
                self._failed(item, exc)
                continue
            if holdings is None:
                self._failed(item, None)
            else:
                self._granted(item, holdings)

    def _acquire(self, item: Any) -> list[Holding] | None:
        """The holdings, or None if the item was cancelled or the engine closed while it waited."""
        while True:
            try:
                return acquire_all(item.demands, timeout=POLL, task=item.name)
            except LimitTimeout:
                if self._closed or item.fut.cancelled():
                    return None
