"""How an acquisition waits: a budget (timeout, cancellation) and a wake FIFO plus pidfds of local holders."""

from __future__ import annotations

import os
import select
import stat
import threading
import time
from collections.abc import Callable

from ..specs import check_timeout
from .damage import misplaced
from .slotfiles import holder_pids

FALLBACK_POLL = 0.25  # seconds; only matters for holders whose death no pidfd reports (other hosts)
GIVE_UP_POLL = 0.5  # seconds ``acquire_all_unless`` waits in one turn before it asks whether to give up
_nudged = threading.Condition()  # token sleepers of ``acquire_all_unless`` in this process: ``nudge`` wakes them


def nudge() -> None:
    """Have this process's token sleepers ask their ``give_up()`` now (an engine's task was stopped or cancelled
    while its grant slept for a rate's token holding its slot), instead of at the end of their turn."""
    with _nudged:
        _nudged.notify_all()


class Expired(Exception):
    """The budget of an acquisition ran out (turned into ``LimitTimeout`` or a failed try)."""


class Cancelled(Exception):
    """An async acquisition was cancelled while it waited in its helper thread."""


class GaveUp(Exception):
    """The ``give_up()`` of ``acquire_all_unless`` said so while it waited for a rate's token."""


class Cancel:
    """A cancellation flag with a pipe, so a head waiting in ``poll`` wakes at once when it is set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.event = threading.Event()
        self.fd, self._w = os.pipe()

    def set(self) -> None:
        with self._lock:
            self.event.set()
            if self._w >= 0:
                os.write(self._w, b"\0")

    def close(self) -> None:
        with self._lock:
            os.close(self.fd)
            os.close(self._w)
            self.fd = self._w = -1


class Budget:
    """How long an acquisition may wait (``timeout=``), shared by every limit of one ``acquire_all``.

    With ``give_up`` the deadline is only one turn of a wait for a slot (``acquire_all_unless``): a token's wait
    ignores it and asks ``give_up()`` every ``GIVE_UP_POLL`` seconds instead."""

    __slots__ = ("timeout", "deadline", "cancel", "give_up")

    def __init__(
        self, timeout: float | None = None, cancel: Cancel | None = None, give_up: Callable[[], bool] | None = None
    ) -> None:
        self.timeout = timeout = check_timeout(timeout)  # math.inf: no bound, as None
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.cancel = cancel
        self.give_up = give_up

    def token_deadline(self) -> float | None:
        """The latest due time a token may have (None: any)."""
        return None if self.give_up is not None else self.deadline

    def sleep_until(self, due: float) -> None:
        """Sleep until the monotonic time ``due`` (a token's); ``Cancelled`` at once when cancelled, ``GaveUp``
        once ``give_up()`` says so (asked at each ``nudge``, and every ``GIVE_UP_POLL`` seconds)."""
        while (left := due - time.monotonic()) > 0:
            if self.cancel is not None:
                if self.cancel.event.wait(left):
                    raise Cancelled
            elif self.give_up is not None:
                with _nudged:  # asked under the lock: a stop between the question and the wait still wakes it
                    if self.give_up():
                        raise GaveUp
                    _nudged.wait(min(left, GIVE_UP_POLL))
            else:
                time.sleep(left)

    def remaining(self, cap: float | None = None) -> float | None:
        """Seconds left (at most ``cap``; None = no bound); raises ``Expired``/``Cancelled`` when done."""
        if self.cancel is not None and self.cancel.event.is_set():
            raise Cancelled
        if self.deadline is None:
            return cap
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Expired
        return left if cap is None else min(left, cap)


_fifos: dict[str, int] = {}  # wake FIFO path -> this process's O_RDWR descriptor (no locks: fork-safe)


def fifo_fd(path: str) -> int:
    """This process's reading end of a wake FIFO; O_RDWR so it never reports end-of-file."""
    fd = _fifos.get(path)
    if fd is None:
        opened = _open_fifo(path)
        fd = _fifos.setdefault(path, opened)
        if fd != opened:  # another thread opened it first
            os.close(opened)
    return fd


def _open_fifo(path: str) -> int:
    """Open the wake FIFO, first recreating it if it is missing or a regular file (which polls as always
    readable: the head would spin). Only the head calls this, under the gate, so nobody races the repair."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    except IsADirectoryError:
        raise misplaced(path, stat.S_IFDIR, "a FIFO") from None
    if fd >= 0:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            return fd
        os.close(fd)
        if not stat.S_ISREG(mode):
            raise misplaced(path, mode, "a FIFO")
        os.unlink(path)
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:  # a process setting the limit up made it meanwhile
        pass
    return _open_fifo(path)


def drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def sleep_until_change(fifo: int, names: list[str], budget: Budget) -> None:
    """Wait for a wake byte, a local holder's death (pidfd) or the fallback poll, within the budget."""
    timeout = budget.remaining(FALLBACK_POLL)
    poller = select.poll()
    poller.register(fifo, select.POLLIN)
    if budget.cancel is not None:
        poller.register(budget.cancel.fd, select.POLLIN)
    pidfds = []
    if hasattr(os, "pidfd_open"):
        for holder in holder_pids(names):
            try:
                pidfds.append(os.pidfd_open(holder))
            except OSError:
                continue  # already gone (its slot is reaped on the next scan) or not allowed
            poller.register(pidfds[-1], select.POLLIN)
    try:
        poller.poll(timeout * 1000)
    finally:
        for fd in pidfds:
            os.close(fd)
    budget.remaining()
