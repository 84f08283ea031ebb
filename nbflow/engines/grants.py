"""The local engine's grant stage: machine limits are granted *before* a task takes a pool worker.

One thread per set of limit names ("line"), created on first use and fed FIFO, blocks in
``acquire_all`` and hands each granted task to the pool. A task waiting for ``GPU`` therefore never
holds a worker, and tasks without resources never meet a grant thread at all.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from ..machine_limits import Holding, acquire_all
from ..machine_limits.api import acquire_all_unless


class _Line:
    """The FIFO of one set of limit names and its thread; ``load`` counts items queued or being acquired."""

    __slots__ = ("queue", "thread", "load")

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.load = 0


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
        self._lines: dict[tuple[str, ...], _Line] = {}
        self._lock = threading.Lock()
        self._closed = False

    def put(self, item: Any) -> None:
        """Grant ``item`` now if its line is idle and the limits are free, else queue it on its line."""
        with self._lock:
            if self._closed:
                holdings = None
            else:
                line = self._lines.get(item.line)
                if line is None:
                    line = self._lines[item.line] = _Line()
                holdings = self._try_now(item) if line.load == 0 else None
                if holdings is None:
                    line.load += 1
                    line.queue.put(item)
                    if line.thread is None:
                        line.thread = threading.Thread(
                            target=self._serve, args=(line,), name=f"{self._name}-grant-{'+'.join(item.line)}"
                        )
                        line.thread.daemon = True
                        line.thread.start()
                    return
        if self._closed and holdings is None:
            self._failed(item, None)
        else:
            self._granted(item, holdings)

    @staticmethod
    def _try_now(item: Any) -> list[Holding] | None:
        """A non-blocking grant in the caller's thread. When the limit is free this hands the task to the
        pool before the thread that finished its upstream picks other work, so the resource never idles."""
        try:
            return acquire_all(item.demands, timeout=0, task=item.name)
        except Exception:  # busy (LimitTimeout) or broken: the line waits, and reports a real error
            return None

    def close(self) -> None:
        """Stop every line: queued items and the one being acquired end with ``failed(item, None)``."""
        with self._lock:
            self._closed = True
            lines = list(self._lines.values())
        for line in lines:
            line.queue.put(None)
        for line in lines:
            if line.thread is not None and line.thread is not threading.current_thread():
                line.thread.join()

    def _serve(self, line: _Line) -> None:
        while True:
            item = line.queue.get()
            if item is None:
                return
            try:
                self._serve_one(item)
            finally:
                with self._lock:
                    line.load -= 1

    def _serve_one(self, item: Any) -> None:
        if self._closed:
            self._failed(item, None)
            return
        if item.fut.cancelled():
            return
        try:
            holdings = self._acquire(item)
        except Exception as exc:  # e.g. the capacity was lowered or removed while it waited
            self._failed(item, exc)
            return
        if holdings is None:
            self._failed(item, None)
        else:
            self._granted(item, holdings)

    def _acquire(self, item: Any) -> list[Holding] | None:
        """The holdings, or None if the item was cancelled or the engine closed while it waited."""
        return acquire_all_unless(item.demands, lambda: self._closed or item.fut.cancelled(), task=item.name)
