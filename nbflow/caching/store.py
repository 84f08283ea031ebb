"""The cache's store: one file per key under a directory or an fsspec URL, read back by any process.

An entry is a tag line (a version mark and the entry's HMAC, see ``trust``), a JSON header line (task name, when
it was made, how long it took), then the pickled value. It is written to a temporary file and renamed into
place, so a killed writer leaves no entry. An entry whose HMAC does not verify is never unpickled: it counts as
absent, is replaced by the next run, and the first one per store and process is a warning. One that verifies
but cannot be read here (from an incompatible version) counts as absent too. A hit touches the entry; past the
size cap the least recently used entries are deleted. What lies where an entry belongs but is not a regular
file (a directory, a symbolic link, a FIFO) was not written by nbflow: it is never followed nor opened for a
blocking read, and eviction and ``clear`` leave it alone with a warning naming it.

A root with ``://`` (``s3://bucket/cache``) goes through fsspec, which comes with Dask: every worker that can
reach it shares it. A ``file://`` URL is a local directory like a plain path, except for its locks. The lock
that makes one process compute a key while others wait is a file lock on this machine, so on an URL store two
machines may compute the same key at once (the second write replaces the first, with the same value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import hmac
import io
import json
import os
import stat
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import cloudpickle

from ..errors import ResourceSpecError
from ..specs import parse_amount
from . import trust

SUFFIX = ".entry"
TAG = b"nbflow-entry-1 "  # the start of an entry's first line; the hex HMAC follows
_TAG_LINE = len(TAG) + 64 + 1  # that line: the tag, a hex SHA-256 and a newline
DEFAULT_CAP = 10e9  # bytes
LOW_WATER = 0.9  # an eviction the writes set off leaves this much of the cap, so the next rescan is 10% away
_HEADER_MAX = 1 << 16  # bytes of a header line read before giving up on it
_KINDS = {stat.S_IFDIR: "directory", stat.S_IFLNK: "symbolic link"}  # of what is not an entry, for warnings
_totals: dict[str, float] = {}  # bytes in each store (by root) as this process last counted them
_warned: set[str] = set()  # stores whose failing entry this process has warned about


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
    try:
        return parse_amount("NBFLOW_CACHE_SIZE", text)
    except ResourceSpecError:  # an ``OSError`` here: the task runs uncached with a warning, never fails
        fix = "is not a size in bytes > 0 such as '10GB': fix or unset it"
        raise OSError(f"NBFLOW_CACHE_SIZE={text!r} {fix}") from None


@dataclasses.dataclass(frozen=True)
class Entry:
    """A stored result: its key, the task's name, when it was made, how long the run took, its size."""

    key: str
    name: str
    created: float  # epoch seconds
    duration: float  # seconds the original run took
    size: int  # bytes
    used: float  # epoch seconds of the last hit (or the write)


def _foreign(path: str, kind: str) -> None:
    warnings.warn(
        f"nbflow: {path} is a {kind} where a cached result belongs, not written by nbflow: left alone "
        "(remove it by hand)",
        stacklevel=3,
    )


class _Local:
    """Files under a directory of this machine: private (0700/0600), or shared (the umask and group decide)."""

    def __init__(self, root: str, shared: bool) -> None:
        self.root, self.shared = root, shared

    def ready(self) -> None:
        """Create the directory, and refuse it when other users could plant results in it."""
        trust.check_dir(self.root, self.shared)

    def open(self, path: str) -> Any:
        """A regular file for reading, never through a symbolic link; anything else is refused as unreadable (a
        FIFO is never opened for a blocking read)."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")

    def write(self, path: str, data: list[bytes]) -> None:
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=trust.dir_mode(self.shared), exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, trust.file_mode(self.shared))
            with os.fdopen(fd, "wb") as file:
                for chunk in data:
                    file.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def touch(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(path, follow_symlinks=False)

    def listing(self) -> list[tuple[str, int, float]]:
        """(path, size, last used) of every entry; anything else named like one is skipped with a warning."""
        found = []
        for shard in _scan(self.root):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for item in _scan(shard.path):
                if not item.name.endswith(SUFFIX):
                    continue
                with contextlib.suppress(OSError):
                    st = item.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        found.append((item.path, st.st_size, st.st_mtime))
                    else:
                        _foreign(item.path, _KINDS.get(stat.S_IFMT(st.st_mode), "special file"))
        return found

    def unlink(self, path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def sweep(self) -> None:
        """Delete what writers killed mid-write left: temporary files an hour old."""
        for shard in _scan(self.root):
            for item in _scan(shard.path) if shard.is_dir(follow_symlinks=False) else ():
                with contextlib.suppress(OSError):
                    if item.name.startswith(".tmp-") and time.time() - item.stat(follow_symlinks=False).st_mtime > 3600:
                        os.unlink(item.path)


def _scan(folder: str) -> list[os.DirEntry]:
    """The items of ``folder`` (none if it cannot be read)."""
    try:
        with os.scandir(folder) as items:
            return list(items)
    except OSError:
        return []


class _Fsspec:
    """Files under an fsspec URL (a shared store the Dask workers reach). Who may read and write it is the
    object store's business (a bucket's policy); the HMAC still keeps out entries written without the key."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs, self.root = fs, root

    def ready(self) -> None:
        pass

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
            if info.get("type") != "file":
                _foreign(path, str(info.get("type") or "special file"))
                continue
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
        self.keys = trust.keyring()
        self.shared = self.keys.shared
        if "://" not in self.root:
            self.files: _Local | _Fsspec = _Local(self.root, self.shared)
            return
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        fs, path = fsspec.core.url_to_fs(self.root)
        self.files = _Local(path, self.shared) if isinstance(fs, LocalFileSystem) else _Fsspec(fs, path)

    @functools.cached_property
    def locks(self) -> str:
        """Where the one-run-per-key locks live: beside a local store, else in this machine's own cache directory
        (a shared file system may lack flock). Only a miss needs it."""
        if "://" not in self.root:
            return os.path.join(self.root, "locks")
        where = hashlib.blake2b(self.root.encode(), digest_size=8).hexdigest()
        return os.path.join(os.path.expanduser("~"), ".cache", "nbflow-locks", where)

    def _path(self, key: str) -> str:
        return f"{self.files.root}/{key[:2]}/{key}{SUFFIX}"

    def get(self, key: str, expiration: float | None = None) -> tuple[Entry, Any] | None:
        """The entry and its value, or None if absent, expired, unreadable, not signed with this process's key,
        or in a store that may not be used (the run that follows says why)."""
        path = self._path(key)
        try:
            self.files.ready()
            with self.files.open(path) as file:
                tag, line = file.readline(_TAG_LINE), file.readline(_HEADER_MAX)
                header = _header(line)
                if header is not None and _expired(header["created"], expiration):
                    return None
                payload = file.read()
            good = header is not None and hmac.compare_digest(tag, TAG + self.keys.sign(key, line, payload) + b"\n")
        except Exception:  # absent, not a regular file, a store that may not be used, no key
            return None
        if not good:
            self._distrust(path)
            return None
        try:
            value = cloudpickle.loads(payload)
        except Exception:  # signed with our key, but not loadable here (a class that changed): recompute
            return None
        self.files.touch(path)  # least recently used goes first
        size = len(tag) + len(line) + len(payload)
        return Entry(key, header["name"], header["created"], header["duration"], size, time.time()), value

    def _distrust(self, path: str) -> None:
        if self.root in _warned:
            return
        _warned.add(self.root)
        warnings.warn(
            f"nbflow: the cached result {path} failed its integrity check (another key, an older nbflow, or "
            "tampering): it is ignored and replaced; processes that share a store across users or machines need "
            "the same NBFLOW_CACHE_SECRET",
            stacklevel=3,
        )

    def put(self, key: str, name: str, value: Any, duration: float) -> None:
        """Store a signed value; one that cannot be pickled is simply not cached. Raises ``OSError`` (among them
        ``trust.UntrustedStore``) when the store cannot be used."""
        self.files.ready()
        try:
            payload = cloudpickle.dumps(value, protocol=5)
        except Exception:
            return
        header = json.dumps({"name": name, "created": time.time(), "duration": duration}).encode() + b"\n"
        data = [TAG + self.keys.sign(key, header, payload) + b"\n", header, payload]
        self.files.write(self._path(key), data)
        self._count(sum(map(len, data)))

    def _count(self, size: int) -> None:
        """Add a write to this process's running count of the store's bytes (counted by a scan at its first
        write); past the cap, rescan and evict, which also counts what other processes wrote meanwhile."""
        total = _totals.get(self.root)
        total = _totals[self.root] = sum(item[1] for item in self.files.listing()) if total is None else total + size
        cap = size_cap()
        if total > cap:
            self.evict(cap * LOW_WATER)

    @contextlib.contextmanager
    def computing(self, key: str) -> Iterator[None]:
        """Held while one process of this machine computes ``key``: the same key elsewhere waits, then reads
        the entry. The lock files live beside a local store, else in this machine's own cache directory.
        Raises ``OSError`` (among them ``trust.UntrustedStore``) when the store cannot be used."""
        import filelock

        self.files.ready()
        self.keys.hmac()
        size_cap()  # a malformed cap is found before the run, not after it stored
        os.makedirs(self.locks, mode=trust.dir_mode(self.shared), exist_ok=True)
        mode = {} if self.shared else {"mode": trust.file_mode(False)}
        with filelock.FileLock(os.path.join(self.locks, f"{key}.lock"), **mode):
            yield

    def entries(self) -> list[Entry]:
        """Every entry, most recently used first (as its header says: only a hit checks its signature)."""
        found = []
        for path, size, used in self.files.listing():
            try:
                with self.files.open(path) as file:
                    tag, header = file.readline(_TAG_LINE), _header(file.readline(_HEADER_MAX))
            except Exception:
                continue
            if tag.startswith(TAG) and header is not None:
                key = path.rsplit("/", 1)[-1][: -len(SUFFIX)]
                found.append(Entry(key, header["name"], header["created"], header["duration"], size, used))
        return sorted(found, key=lambda entry: -entry.used)

    def clear(self, name: str | None = None) -> int:
        """Delete the entries of task ``name`` (every entry if None); how many were deleted."""
        if name is None:
            paths = [path for path, _, _ in self.files.listing()]
        else:
            paths = [self._path(entry.key) for entry in self.entries() if entry.name == name]
        _totals.pop(self.root, None)
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
            self.files.unlink(path)
            total -= size
        _totals[self.root] = total


def _header(line: bytes) -> dict[str, Any] | None:
    """An entry's header fields, or None if ``line`` is not a header (it is JSON: reading it runs no code)."""
    try:
        header = json.loads(line)
        float(header["created"]), float(header["duration"])
    except (ValueError, TypeError, KeyError):
        return None
    return header if isinstance(header["name"], str) else None


def _expired(created: float, expiration: float | None) -> bool:
    """Older than ``expiration`` seconds — or dated in the future (the clock was set back since, or the writer's
    runs ahead): such an entry cannot be aged, so it goes, and no entry outlives ``expiration`` of real time."""
    return expiration is not None and not 0 <= time.time() - created <= expiration
