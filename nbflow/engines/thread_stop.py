"""In the thread that runs a task (a local pool thread, a Dask worker's thread): stopping it from another thread.

CPython can raise an exception in another thread at its next Python bytecode
(``PyThreadState_SetAsyncExc``); a thread inside a C call (``time.sleep``, a lock, I/O) gets it when the call
returns. Sent carelessly, it lands in the engine's own code; ``StoppableCall`` sends at most one, only while
the task's function runs, and withdraws one not yet delivered when the function returns.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

from ..errors import TaskStopped


def _raise_in(thread: int, exc: type[BaseException] | None) -> None:
    """Have ``thread`` raise ``exc`` at its next bytecode; ``None`` withdraws one not delivered yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None if exc is None else ctypes.py_object(exc))


class StoppableCall:
    """One call of a task's function that ``stop()`` can interrupt from any thread, once."""

    __slots__ = ("_lock", "_thread", "_sent", "_asked")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: int | None = None  # the thread running the function, while it runs
        self._sent = False
        self._asked: type[BaseException] | None = None  # stop() came before the call began

    def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in the calling thread; raises ``TaskStopped`` (or what ``stop`` named) if stopped."""
        with self._lock:
            if self._asked is not None:
                raise self._asked("the task was stopped before it started")
            self._thread = threading.get_ident()
        try:
            return fn()
        finally:
            self._disarm()

    @property
    def stopped(self) -> bool:
        """``stop()`` was called (whether or not the function had begun)."""
        return self._sent or self._asked is not None

    def stop(self, exc: type[BaseException] = TaskStopped) -> None:
        """Raise ``exc`` in the thread running the function (at once if it has not begun; nothing if it ended)."""
        with self._lock:
            if self._sent:
                return
            if self._thread is None:
                self._asked = self._asked or exc
                return
            self._sent = True
            _raise_in(self._thread, exc)

    def _disarm(self) -> None:
        """The function returned: no exception may reach the engine's code after this (one sent and not yet
        delivered is withdrawn; one delivered here is the one sent, and dropped)."""
        while True:
            try:
                with self._lock:
                    thread, self._thread = self._thread, None
                    if self._sent and thread is not None:
                        _raise_in(thread, None)
                return
            except BaseException:  # the exception sent, delivered in this method: it was meant for the function
                continue
