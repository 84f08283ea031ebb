"""One thread that runs callbacks at deadlines: task timeouts and retry delays.

The thread runs only while a deadline is armed: it starts with the first one and ends when none is left,
so an engine whose tasks use neither option never creates it, and a closed engine leaves none behind.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import traceback
from collections.abc import Callable

_LONGEST_WAIT = 3600.0  # a wait is cut into pieces no longer than this (thread waits overflow near 1e10 s)


class Timers:
    """A heap of ``[when, seq, callback]`` entries served by one daemon thread while any is armed."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[list] = []
        self._cond = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._armed = 0  # entries not yet run or cancelled

    def call_later(self, delay: float, callback: Callable[[], object]) -> list:
        """Run ``callback()`` in the timer thread after ``delay`` seconds; returns an entry for ``cancel``."""
        entry = [time.monotonic() + delay, next(self._seq), callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._armed += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=f"{self._name}-timers", daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list | None) -> None:
        """Disable ``entry`` (harmless if it ran or was cancelled already)."""
        if entry is None:
            return
        with self._cond:
            if entry[2] is None:
                return
            entry[2] = None
            self._armed -= 1
            if self._armed == 0:
                self._heap.clear()
                self._cond.notify()
            elif len(self._heap) > 64 and self._armed * 2 < len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)

    def _serve(self) -> None:
        with self._cond:
            while True:
                if self._armed == 0:
                    self._heap.clear()
                    self._thread = None
                    return
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(min(delay, _LONGEST_WAIT))
                    continue
                entry = heapq.heappop(self._heap)
                callback, entry[2] = entry[2], None
                if callback is None:
                    continue
                self._armed -= 1
                self._cond.release()
                try:
                    callback()
                except BaseException:  # a bug in one callback must not stop every later deadline
                    traceback.print_exc()
                finally:
                    self._cond.acquire()
