"""A granted share of a limit, its reusable slot file, and the wake-up a release sends to the head.

Creating a file costs ~100 µs on ext4 where a link or unlink costs ~8 µs, so a slot file is a locked
dotfile (a "spare", invisible to the accounting) that a grant hard-links under its visible name and a
release unlinks from it; the spare stays locked in this process for its next grant of the same limit.
"""

from __future__ import annotations

import os
import threading

from ..thread_stop import shielded
from .damage import failure
from .forksafe import Pool, close_tracked, set_owner

_release_lock = threading.Lock()
spares: Pool = Pool(8)  # slots dir -> [(fd, dotfile path, size)]: locked slot files free for the next grant


def keep_spare(slots_dir: str, fd: int, path: str, size: int) -> None:
    """Pool a free (still locked) slot file, or delete it when the pool is full."""
    set_owner(fd, None)
    if not spares.give(slots_dir, (fd, path, size)):
        try:
            os.unlink(path)
        finally:
            close_tracked(fd)


class Holding:
    """A granted share of a limit: ``release()`` (idempotent) or use it as a context manager.

    ``slots`` are its device indices (GPU slot k; see ``nbflow.devices``), ``()`` for limits too large to be
    devices.
    The share is a visible slot file kept flocked through ``_fd``; the kernel drops that lock when the
    process dies, which is how a killed holder's share is freed without leases or timers.
    """

    __slots__ = ("name", "amount", "slots", "task", "since", "_slots_dir", "_path", "_spare", "_size", "_fd", "_wake")

    def __init__(
        self, name: str, amount: float, slots: tuple[int, ...], task: str, since: float, slots_dir: str, wake: str
    ):
        self.name = name
        self.amount = amount
        self.slots = slots
        self.task = task
        self.since = since
        self._slots_dir = slots_dir
        self._wake = wake
        self._path = self._spare = ""
        self._size = 0
        self._fd = -1

    @property
    def released(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        """The locked descriptor that keeps the share taken: a process holding a copy keeps it taken too."""
        return self._fd

    def release(self) -> None:
        """Give the share back (unlink the visible name; the locked spare stays for reuse), wake the head."""
        with shielded:  # (a stopped task's exception lands after it, never between the unlink and the wake)
            with _release_lock:
                fd, self._fd = self._fd, -1
            if fd < 0:
                return
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. slots/ made immutable: unlock the file, so it reads as a dead holder's
                close_tracked(fd)
                wake(self._wake)
                raise failure(self.name, exc) from None
            keep_spare(self._slots_dir, fd, self._spare, self._size)
            wake(self._wake)

    def _forget(self) -> None:
        """In a forked child: the share is the parent's, so never release it from here."""
        self._fd = -1

    def __enter__(self) -> Holding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Holding {self.name}={self.amount:g} slots={self.slots} {state}>"


def wake(fifo: str) -> None:
    """Nudge the head waiting on ``fifo``; no reader (ENXIO) or a full pipe means nothing to do."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


class Token(Holding):
    """A start admitted by a rate-only limit: nothing stays held (the rate's record already counts it), so
    there is no slot file and no descriptor; ``release()`` only marks it released."""

    __slots__ = ("_done",)

    def __init__(self, name: str, amount: float, task: str, since: float) -> None:
        super().__init__(name, amount, (), task, since, "", "")
        self._done = False

    @property
    def released(self) -> bool:
        return self._done

    def release(self) -> None:
        self._done = True
