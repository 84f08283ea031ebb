"""The capacity of a limit: the ``capacity`` file written by ``limit()``, else the detected one.

The file is replaced atomically (tmp file + rename) and read through a cache keyed by (inode, mtime), so a
read that hits is one ``stat``; a FIFO or other special file in its place is reported, never opened.
"""

from __future__ import annotations

import os
import stat

from ..errors import LimitsDirError, NoSuchLimit, Unsatisfiable
from .damage import kind
from .detect import detected_capacity
from .forksafe import unique
from .holding import wake
from .slotfiles import CREATE, PEEK, fits


class Capacity:
    """The capacity half of ``Limit`` (which provides the paths, ``ensure`` and ``damaged``)."""

    name: str
    dir: str
    capacity_path: str
    wake_path: str
    _cached: tuple[tuple[int, int], float] | None
    _last: float | None

    def set_capacity(self) -> float | None:
        """The capacity written by ``limit()``, or None; cached by (inode, mtime) so a hit is one stat."""
        try:
            st = os.stat(self.capacity_path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns)
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        text = self._read_capacity(st.st_mode)
        if text is None:
            return self.set_capacity()  # replaced or removed between stat and open
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise LimitsDirError(
                f"corrupted limits state file {self.capacity_path} (contains {text[:40]!r}): "
                f"rewrite it with `nbflow limits set {self.name} N` or delete it"
            )
        self._cached = (key, value)
        return value

    def _read_capacity(self, mode: int) -> str | None:
        """The capacity file's text (None if it vanished); a description of what is there instead of a
        regular file, never opened since a FIFO would block."""
        if not stat.S_ISREG(mode):
            return f"not a file but {kind(mode)}"
        try:
            fd = os.open(self.capacity_path, PEEK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return exc.strerror or str(exc)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None  # swapped since the stat: look again
            return os.read(fd, 256).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)

    def capacity(self) -> float:
        """The set capacity, else the detected one (CPU, MEMORY, GPU), else ``NoSuchLimit``."""
        value = self.set_capacity()
        if value is None:
            value = detected_capacity(self.name)
            if value is None:
                raise NoSuchLimit(
                    f"no capacity is set for limit {self.name!r} on this machine: "
                    f'set one with nbflow.limit("{self.name}", n) or `nbflow limits set {self.name} n`'
                )
        self._last = value
        return value

    def check(self, amount: float) -> float:
        """The capacity, after refusing an amount it can never give."""
        capacity = self.capacity()
        if not fits(0.0, amount, capacity):
            raise Unsatisfiable(
                f"limit {self.name!r} has capacity {capacity:g}, so {amount:g} can never be granted: "
                f'ask for less or raise it with nbflow.limit("{self.name}", n)'
            )
        return capacity

    def write_capacity(self, capacity: float) -> None:
        """Persist ``capacity`` atomically (tmp file + rename) and wake the head to re-check."""
        self.ensure()
        tmp = f"{self.dir}/.capacity-{unique()}"
        try:
            fd = os.open(tmp, CREATE | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, f"{capacity!r}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.capacity_path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise LimitsDirError(f"cannot write {self.capacity_path}: {exc.strerror or exc}") from None
        wake(self.wake_path)

    def remove_capacity(self) -> None:
        try:
            os.unlink(self.capacity_path)
        except FileNotFoundError:
            raise NoSuchLimit(f"no capacity is set for limit {self.name!r}, so there is nothing to remove") from None
        except OSError as exc:
            raise self.damaged(exc) from None
        wake(self.wake_path)
