"""A limit's set capacity: the ``capacity`` file that ``limit()`` writes in the limit's directory.

Replaced atomically (a new file renamed over it) and read through a cache keyed by (inode, mtime), so a read that
hits is one ``stat``; a FIFO or other special file in its place is reported, never opened.
"""

from __future__ import annotations

import os
import stat

from ..errors import LimitsDirError
from .damage import kind
from .forksafe import unique
from .slotfiles import CREATE, PEEK


class CapacityFile:
    """The capacity file of limit ``name`` at ``path``; ``rated`` tells whether a rate record at ``rate_path`` stood
    beside the capacity file last read (``set()`` writes the record first, so a capacity file read with no record
    beside it spares later grants a look for one, until the file is replaced)."""

    def __init__(self, name: str, path: str, rate_path: str) -> None:
        self.name = name
        self.path = path
        self.rate_path = rate_path
        self.rated = True
        self._cached: tuple[tuple[int, int], float] | None = None

    def read(self) -> float | None:
        """The capacity written by ``limit()``, or None; cached by (inode, mtime) so a hit is one stat."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.rated = True
            return None
        key = (st.st_ino, st.st_mtime_ns)
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        self.rated = os.path.lexists(self.rate_path)
        text = self._text(st.st_mode)
        if text is None:
            return self.read()  # replaced or removed between stat and open
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise LimitsDirError(
                f"corrupted limits state file {self.path} (contains {text[:40]!r}): "
                f"rewrite it with `nbflow limits set {self.name} N` or delete it"
            )
        self._cached = (key, value)
        return value

    def _text(self, mode: int) -> str | None:
        """The file's text (None if it vanished); a description of what is there instead of a regular file, never
        opened since a FIFO would block."""
        if not stat.S_ISREG(mode):
            return f"not a file but {kind(mode)}"
        try:
            fd = os.open(self.path, PEEK)
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

    def write(self, capacity: float) -> None:
        """Persist ``capacity`` atomically (a new file, synced, renamed over the old one)."""
        tmp = f"{os.path.dirname(self.path)}/.capacity-{unique()}"
        try:
            fd = os.open(tmp, CREATE | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, f"{capacity!r}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise LimitsDirError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def remove(self) -> bool:
        """Delete the set capacity; False when none was set (other system errors propagate)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True
