"""The cache's store: one file per key under a directory or an fsspec URL, read back by any process.

An entry is a JSON header line (task name, when it was made, how long it took) then the pickled value. It is
written to a temporary file and renamed into place, so a killed writer leaves no entry; an entry that cannot
be read (cut short, corrupt, from an incompatible version) counts as absent and is replaced by the next run.
A hit touches the entry; past the size cap the least recently used entries are deleted.

A root with ``://`` (``s3://bucket/cache``, ``file:///shared/cache``) goes through fsspec, which comes with
Dask: every worker that can reach it shares it. The lock that makes one process compute a key while others
wait is a file lock on this machine, so on such a store two machines may compute the same key at once (the
second write replaces the first, with the same value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle

SUFFIX = ".entry"
DEFAULT_CAP = 10e9  # bytes
_EVICT_EVERY = 32  # writes (in this process) between two checks of the size cap
_writes = itertools.count(1)


def cache_dir() -> str:
    """``$NBFLOW_CACHE_DIR`` (a path or an fsspec URL), else ``$XDG_CACHE_HOME/nbflow``, else ``~/.cache/nbflow``."""
    explicit = os.environ.get("NBFLOW_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nbflow")


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
    size: int  # bytes
    used: float  # epoch seconds of the last hit (or the write)


class _Local:
    """Files under a directory of this machine."""

    def __init__(self, root: str) -> None:
        self.root = root

    def open(self, path: str) -> Any:
        """A regular file for reading; anything else there (a FIFO would block) is refused as unreadable."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")

    def write(self, path: str, data: list[bytes]) -> None:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as file:
                for chunk in data:
                    file.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def touch(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    def listing(self) -> list[tuple[str, int, float]]:
        """(path, size, last used) of every entry."""
        found = []
        for path in Path(self.root).glob(f"*/*{SUFFIX}"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                found.append((str(path), stat.st_size, stat.st_mtime))
        return found

    def unlink(self, path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def sweep(self) -> None:
        """Delete what writers killed mid-write left: temporary files an hour old."""
        for tmp in Path(self.root).glob("*/.tmp-*"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > 3600:
                    tmp.unlink()


class _Fsspec(_Local):
    """Files under an fsspec URL (a shared store the Dask workers reach)."""

    def __init__(self, root: str) -> None:
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(root)

    def open(self, path: str) -> Any:
        return io.BytesIO(self.fs.cat_file(path))

    def write(self, path: str, data: list[bytes]) -> None:
        folder = path.rsplit("/", 1)[0]
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
        self.fs.pipe_file(tmp, b"".join(data))
        self.fs.mv(tmp, path)

    def touch(self, path: str) -> None:
        """Not every store can change a modification time: there, least recently *made* goes first."""

    def listing(self) -> list[tuple[str, int, float]]:
        found = []
        for path, info in self.fs.glob(f"{self.root}/*/*{SUFFIX}", detail=True).items():
            modified = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
            found.append((path, int(info.get("size") or 0), stamp))
        return found

    def unlink(self, path: str) -> bool:
        try:
            self.fs.rm_file(path)
            return True
        except FileNotFoundError:
            return False

    def sweep(self) -> None:
        pass


class Store:
    """The entries under ``root`` (a directory or an fsspec URL): ``<root>/<key[:2]>/<key>.entry``."""

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self.files = _Fsspec(self.root) if "://" in self.root else _Local(self.root)

    def _path(self, key: str) -> str:
        return f"{self.files.root}/{key[:2]}/{key}{SUFFIX}"

    def get(self, key: str, expiration: float | None = None) -> tuple[Entry, Any] | None:
        """The entry and its value, or None if absent, expired or unreadable."""
        path = self._path(key)
        try:
            with self.files.open(path) as file:
                header = json.loads(file.readline())
                if expiration is not None and time.time() - header["created"] > expiration:
                    return None
                value = cloudpickle.load(file)
                size = file.tell()
        except Exception:  # absent, cut short, corrupt, or unpicklable here: recompute
            return None
        self.files.touch(path)  # least recently used goes first
        return Entry(key, header["name"], header["created"], header["duration"], size, time.time()), value

    def put(self, key: str, name: str, value: Any, duration: float) -> None:
        """Store a value; one that cannot be pickled is simply not cached."""
        try:
            payload = cloudpickle.dumps(value, protocol=5)
        except Exception:
            return
        header = json.dumps({"name": name, "created": time.time(), "duration": duration}).encode() + b"\n"
        self.files.write(self._path(key), [header, payload])
        if next(_writes) % _EVICT_EVERY == 1:
            self.evict(size_cap())

    @contextlib.contextmanager
    def computing(self, key: str) -> Iterator[None]:
        """Held while one process of this machine computes ``key``: the same key elsewhere waits, then reads
        the entry. The lock files live beside a local store, else in this machine's own cache directory."""
        import filelock

        if isinstance(self.files, _Fsspec):
            where = hashlib.blake2b(self.root.encode(), digest_size=8).hexdigest()
            locks = os.path.join(os.path.expanduser("~"), ".cache", "nbflow-locks", where)
        else:
            locks = os.path.join(self.root, "locks")
        os.makedirs(locks, exist_ok=True)
        with filelock.FileLock(os.path.join(locks, f"{key}.lock")):
            yield

    def entries(self) -> list[Entry]:
        """Every readable entry, most recently used first."""
        found = []
        for path, size, used in self.files.listing():
            try:
                with self.files.open(path) as file:
                    header = json.loads(file.readline())
                key = path.rsplit("/", 1)[-1][: -len(SUFFIX)]
                found.append(Entry(key, header["name"], header["created"], header["duration"], size, used))
            except Exception:
                continue
        return sorted(found, key=lambda entry: -entry.used)

    def clear(self, name: str | None = None) -> int:
        """Delete the entries of task ``name`` (every entry if None); how many were deleted."""
        if name is None:
            paths = [path for path, _, _ in self.files.listing()]
        else:
            paths = [self._path(entry.key) for entry in self.entries() if entry.name == name]
        return sum(self.files.unlink(path) for path in paths)

    def evict(self, cap: float) -> None:
        """Delete the least recently used entries until the store is within ``cap`` bytes, and what writers
        killed mid-write left."""
        self.files.sweep()
        listing = sorted(self.files.listing(), key=lambda item: item[2])
        total = sum(size for _, size, _ in listing)
        for path, size, _ in listing:
            if total <= cap:
                break
            if self.files.unlink(path):
                total -= size
