"""On a Dask worker: the events it sends the clients (which attempts run; what running tasks show meanwhile)."""

from __future__ import annotations

import threading
import time
from typing import Any

STARTED_TOPIC = "nbflow-started"  # worker -> clients: attempts that have been running a moment
SIDE_TOPIC = "nbflow-side"  # worker -> clients: side-channel messages of running tasks (see ``nbflow.sidechannel``)


def send_side(worker: Any, channel: str, message: Any) -> None:
    worker.log_event(SIDE_TOPIC, {"channel": channel, "message": message})


class Starts:
    """Tells the clients which attempts are running, so their futures read ``running`` with nobody asking.

    An attempt is reported once it has run for a tick; one event per worker per tick carries every such
    key. A task that ends within a tick costs a dict insert and delete, never a message.
    """

    TICK = 0.05

    def __init__(self) -> None:
        self._running: dict[str, tuple[float, Any]] = {}  # key -> (start time, worker), not yet reported
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._edit = threading.Lock()  # ``_running`` is copied while threads (and an event loop's) add to it
        self._thread: threading.Thread | None = None

    def begin(self, worker: Any, key: str | None = None) -> str:
        """The attempt running under ``key`` (default: the task of this worker thread) began."""
        key = key or worker.get_current_task()
        with self._edit:
            self._running[key] = (time.monotonic(), worker)
        if not self._wake.is_set():
            self._wake.set()
            if self._thread is None:
                self._start()
        return key

    def end(self, key: str) -> None:
        with self._edit:
            self._running.pop(key, None)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="nbflow-started", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.TICK)
            due = time.monotonic() - self.TICK
            by_worker: dict[Any, list[str]] = {}
            with self._edit:  # (copying thousands of items may let another thread run, and add one)
                running = list(self._running.items())
            for key, (since, worker) in running:
                if since <= due and self._running.pop(key, None) is not None:
                    by_worker.setdefault(worker, []).append(key)
            for worker, keys in by_worker.items():
                # (the scheduler sets "worker" to the worker's address: the name goes under another key)
                worker.log_event(STARTED_TOPIC, {"name": str(worker.name), "keys": keys})
            if not self._running:
                self._wake.clear()
                if self._running:  # one began between the check and the clear
                    self._wake.set()


starts = Starts()
