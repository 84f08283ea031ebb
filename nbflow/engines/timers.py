"""One thread that runs callbacks at deadlines: task timeouts and retry delays of the local engine.

It starts on the first deadline, so an engine whose tasks have neither option never creates it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import traceback
from collections.abc import Callable


class Timers:
    """A heap of ``[when, seq, callback]`` entries served by one lazily started daemon thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[list] = []
        self._cond = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._dead = 0  # cancelled entries still in the heap
        self._closed = False

    def call_later(self, delay: float, callback: Callable[[], object]) -> list:
        """Run ``callback()`` in the timer thread after ``delay`` seconds; returns an entry for ``cancel``."""
        entry = [time.monotonic() + delay, next(self._seq), callback]
        with self._cond:
            if self._closed:
                raise RuntimeError("timers closed")
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=f"{self._name}-timers", daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list) -> None:
        """Disable ``entry``; the heap is compacted when cancelled entries pile up (long timeouts)."""
        with self._cond:
            if entry[2] is None:
                return
            entry[2] = None
            self._dead += 1
            if self._dead > 64 and self._dead * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._dead = 0

    def close(self) -> list[Callable[[], object]]:
        """Stop the thread; returns the callbacks that never ran, so the owner can settle what they were for."""
        with self._cond:
            self._closed = True
            pending = [e[2] for e in sorted(self._heap) if e[2] is not None]
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return pending

    def _serve(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                entry = heapq.heappop(self._heap)
                callback, entry[2] = entry[2], None
                if callback is None:
                    self._dead -= 1
                    continue
                self._cond.release()
                try:
                    callback()
                except Exception:  # a bug in one callback must not stop every later timeout
                    traceback.print_exc()
                finally:
                    self._cond.acquire()
