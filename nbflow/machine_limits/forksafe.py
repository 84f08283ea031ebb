"""Lock-bearing descriptors of this process, and the identity used to name its files.

flock locks belong to the open file description, which a child forked without exec shares: if it kept
the descriptor, a SIGKILLed parent's share would live on in the child. So every descriptor that can carry
a lock is opened through ``open_tracked`` and closed in a forked child before its code runs. Opening and
closing happen under ``_lock``, which fork also takes, so no descriptor is ever inherited untracked.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Protocol


class Owner(Protocol):
    def _forget(self) -> None: ...


_lock = threading.Lock()
_tracked: dict[int, Owner | None] = {}
_pid = os.getpid()
_token = os.urandom(4).hex()
_counter = itertools.count()
HOST = os.uname().nodename


def open_tracked(path: str, flags: int, owner: Owner | None = None) -> int:
    """``os.open`` a descriptor that a forked child will close (and whose ``owner`` it will forget)."""
    with _lock:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        _tracked[fd] = owner
    return fd


def set_owner(fd: int, owner: Owner | None) -> None:
    """Make ``owner`` the object a forked child forgets for the tracked ``fd``."""
    _tracked[fd] = owner


def close_tracked(fd: int) -> None:
    with _lock:
        _tracked.pop(fd, None)
        os.close(fd)


def unique() -> str:
    """``<pid>_<token><n>``: unique across processes and hosts for this process's file names."""
    return f"{_pid}_{_token}{next(_counter)}"


def pid() -> int:
    return _pid


class Pool:
    """Open descriptors (with their details) kept for reuse, keyed by path, at most ``size`` per key.

    Opening or creating a file costs more than the rest of an acquisition; the pooled descriptors are
    tracked, so a forked child closes them, and the pool is emptied there.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[str, list] = {}
        os.register_at_fork(after_in_child=self._items.clear)

    def take(self, key: str):
        """A pooled item for ``key``, or None."""
        items = self._items.get(key)
        try:
            return items.pop() if items else None
        except IndexError:  # another thread took the last one
            return None

    def give(self, key: str, item) -> bool:
        """Keep ``item`` for reuse; False when the pool for ``key`` is full (the caller closes it)."""
        items = self._items.setdefault(key, [])
        if len(items) >= self.size:
            return False
        items.append(item)
        return True


def _after_fork_child() -> None:
    global _pid, _token, _counter
    for fd, owner in _tracked.items():
        if owner is not None:
            owner._forget()
        try:
            os.close(fd)
        except OSError:
            pass
    _tracked.clear()
    _pid, _token, _counter = os.getpid(), os.urandom(4).hex(), itertools.count()
    _lock.release()


os.register_at_fork(before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_after_fork_child)
