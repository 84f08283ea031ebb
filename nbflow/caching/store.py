"""The cache's store: one file per key in a directory, written atomically, read back by any process.

An entry is a JSON header line (task name, when it was made, how long it took) then the pickled value. It is
written to a temporary file and renamed into place, so a killed writer leaves no entry; an entry that cannot
be read (cut short, corrupt, from an incompatible version) counts as absent and is replaced by the next run.
A hit touches the entry; past the size cap the least recently used entries are deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle

SUFFIX = ".entry"
DEFAULT_CAP = 10e9  # bytes
_EVICT_EVERY = 32  # writes between two checks of the size cap


def cache_dir() -> Path:
    """``$NBFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/nbflow``, else ``~/.cache/nbflow``."""
    explicit = os.environ.get("NBFLOW_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbflow"


def size_cap() -> float:
    """``$NBFLOW_CACHE_SIZE`` (bytes, ``10GB`` style accepted), else 10 GB."""
    text = os.environ.get("NBFLOW_CACHE_SIZE")
    if not text:
        return DEFAULT_CAP
    from ..specs import parse_amount

    return parse_amount("NBFLOW_CACHE_SIZE", text)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A stored result: its key, the task's name, when it was made, how long the run took, its size."""

    key: str
    name: str
    created: float  # epoch seconds
    duration: float  # seconds the original run took
    size: int  # bytes on disk
    used: float  # epoch seconds of the last hit (or the write)


class Store:
    """The entries under ``root``: ``<root>/<key[:2]>/<key>.entry``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._writes = 0
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def get(self, key: str, expiration: float | None = None) -> tuple[Entry, Any] | None:
        """The entry and its value, or None if absent, expired or unreadable."""
        path = self._path(key)
        try:
            with open(path, "rb") as file:
                header = json.loads(file.readline())
                if expiration is not None and time.time() - header["created"] > expiration:
                    return None
                value = cloudpickle.load(file)
            now = time.time()
            with contextlib.suppress(OSError):
                os.utime(path, (now, now))  # least recently used goes first
            return Entry(key, header["name"], header["created"], header["duration"], path.stat().st_size, now), value
        except Exception:  # absent, cut short, corrupt, or unpicklable here: recompute
            return None

    def put(self, key: str, name: str, value: Any, duration: float) -> bool:
        """Store a value (False if it cannot be pickled: then it is simply not cached)."""
        try:
            payload = cloudpickle.dumps(value, protocol=5)
        except Exception:
            return False
        header = json.dumps({"name": name, "created": time.time(), "duration": duration}).encode() + b"\n"
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as file:
                file.write(header)
                file.write(payload)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with self._lock:
            self._writes += 1
            due = self._writes % _EVICT_EVERY == 1
        if due:
            self.evict(size_cap())
        return True

    @contextlib.contextmanager
    def computing(self, key: str) -> Iterator[None]:
        """Held while one process computes ``key``: the same key elsewhere waits, then reads the entry."""
        import filelock

        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(locks / f"{key}.lock")):
            yield

    def entries(self) -> list[Entry]:
        """Every readable entry, most recently used first."""
        found = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            try:
                with open(path, "rb") as file:
                    header = json.loads(file.readline())
                stat = path.stat()
                found.append(
                    Entry(path.stem, header["name"], header["created"], header["duration"], stat.st_size, stat.st_mtime)
                )
            except Exception:
                continue
        return sorted(found, key=lambda entry: -entry.used)

    def clear(self, name: str | None = None) -> int:
        """Delete the entries of task ``name`` (every entry if None); how many were deleted."""
        if name is None:
            keys = [path.stem for path in self.root.glob(f"*/*{SUFFIX}")]
        else:
            keys = [entry.key for entry in self.entries() if entry.name == name]
        return sum(self._remove(key) for key in keys)

    def evict(self, cap: float) -> None:
        """Delete the least recently used entries until the store is within ``cap`` bytes, and what writers
        killed mid-write left (temporary files an hour old)."""
        for tmp in self.root.glob("*/.tmp-*"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > 3600:
                    tmp.unlink()
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        for entry in reversed(entries):
            if total <= cap:
                break
            total -= entry.size
            self._remove(entry.key)

    def _remove(self, key: str) -> int:
        try:
            self._path(key).unlink()
            return 1
        except FileNotFoundError:
            return 0
