"""In the thread that runs a task (a local pool thread, a Dask worker's thread): stopping it from another thread.

CPython can raise an exception in another thread at its next Python bytecode
(``PyThreadState_SetAsyncExc``); a thread inside a C call (``time.sleep``, a lock, I/O) gets it when the call
returns. Sent carelessly, it lands in the engine's own code, or half-way through nbflow code the task called (a
limit's share taken and not yet handed over). So ``StoppableCall`` sends at most one, only while the task's
function runs, and withdraws one not yet delivered when the function returns; and nbflow code a task may call
runs ``with shielded:``, where a stop is held back until the outermost shielded block ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .errors import TaskStopped

_running = threading.local()  # .call: the StoppableCall running in this thread, if any
_lock = threading.Lock()  # guards every StoppableCall's fields: held for a few field updates, and one per call
# would cost an allocation for every task run


def _raise_in(thread: int, exc: type[BaseException] | None) -> None:
    """Have ``thread`` raise ``exc`` at its next bytecode; ``None`` withdraws one not delivered yet."""
    import ctypes  # only a stop needs it (``import nbflow`` stays light)

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None if exc is None else ctypes.py_object(exc))


class StoppableCall:
    """One call of a task's function that ``stop()`` can interrupt from any thread, once."""

    __slots__ = ("_thread", "_sent", "_asked", "_held_back", "_depth")

    def __init__(self) -> None:
        self._thread: int | None = None  # the thread running the function, while it runs
        self._sent: type[BaseException] | None = None  # the exception sent to it
        self._asked: type[BaseException] | None = None  # stop() came before the call began
        self._held_back: type[BaseException] | None = None  # stop() came while it ran shielded code
        self._depth = 0  # nesting of ``shielded`` blocks in its thread

    @property
    def stopped(self) -> bool:
        """``stop()`` was called (whether or not the function had begun)."""
        return bool(self._sent or self._asked or self._held_back)

    def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in the calling thread; raises ``TaskStopped`` (or what ``stop`` named) if stopped."""
        outer = getattr(_running, "call", None)
        _running.call = self
        try:
            with _lock:
                if self._asked is not None:
                    raise self._asked("the task was stopped before it started")
                self._thread = threading.get_ident()
            return fn()
        finally:
            while True:  # the one exception sent may land as ``_disarm`` begins: then disarm again
                try:
                    self._disarm(outer)
                    break
                except BaseException:
                    continue

    def stop(self, exc: type[BaseException] = TaskStopped) -> None:
        """Raise ``exc`` in the thread running the function (at once if it has not begun; nothing if it ended;
        once its shielded code is done if it runs some)."""
        with _lock:
            if self._sent or self._held_back:
                return
            if self._thread is None:
                self._asked = self._asked or exc
            elif self._depth:
                self._held_back = exc
            else:
                self._sent = exc
                _raise_in(self._thread, exc)

    def _shield(self, step: int) -> None:
        """Enter (``step`` 1) or leave (-1) a shielded block in the function's thread."""
        with _lock:
            self._depth += step
            if self._thread is None:
                return
            if step > 0 and self._depth == 1 and self._sent:  # sent, perhaps not delivered yet: hold it back
                _raise_in(self._thread, None)
                self._held_back, self._sent = self._sent, None
            elif step < 0 and self._depth == 0 and self._held_back:  # lands right after the block
                self._sent, self._held_back = self._held_back, None
                _raise_in(self._thread, self._sent)

    def _disarm(self, outer: StoppableCall | None) -> None:
        """The function returned: no exception may reach the engine's code after this (one sent and not yet
        delivered is withdrawn; one delivered while this runs is the one sent, and ``run`` drops it)."""
        with _lock:
            thread, self._thread = self._thread, None
            if self._sent and thread is not None:
                _raise_in(thread, None)
        _running.call = outer


class _Shielded:
    """``with shielded:`` around nbflow code a task may call that must not stop half-way (taking or giving back a
    limit's share, bookkeeping of a submit): a stop of the task is held back until the outermost such block ends,
    and then lands right after it. Outside a stoppable task it costs one thread-local lookup."""

    __slots__ = ()

    def __enter__(self) -> None:
        call = getattr(_running, "call", None)
        if call is not None:
            call._shield(1)

    def __exit__(self, *exc: object) -> None:
        call = getattr(_running, "call", None)
        if call is not None:
            call._shield(-1)


shielded = _Shielded()
