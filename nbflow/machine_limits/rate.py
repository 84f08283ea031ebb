"""A limit's rate: GCRA over one small record, ``<limit dir>/rate``, shared by every process of this machine.

The record holds the rate (seconds between starts ``T``, ``burst``, its text) and the "theoretical arrival time"
(TAT) on ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for all processes of a boot) with the boot's identity,
so one locked ``pread`` gets all of it. A take of ``n`` tokens reads it under the file's ``flock``, sets
``tat' = max(tat, now) + n*T``, writes it back and unlocks; it may start at ``due = max(now, tat' - burst*T)``,
so at most ``burst + W/T`` starts have a due time in any window of ``W`` seconds. Only the taker sleeps, until its
own due time: takers are served in the order of their reservations, with no polling and no herd.

The file is created once and never replaced (removing the rate writes a record with ``T = 0``), so a descriptor
kept open stays the file every process uses. A record of another boot reads as empty (its clock restarted).
"""

from __future__ import annotations

import fcntl
import functools
import os
import stat
import struct
import time
from typing import NamedTuple

from ..errors import LimitsDirError, Unsatisfiable
from ..specs import Rate
from .damage import kind
from .forksafe import Pool, close_tracked, open_tracked, unique
from .wake import Expired

MAGIC = b"nbrate1\n"
_RECORD = struct.Struct("<8s16sddI4x24s")  # magic, boot id, tat, interval (0: no rate), burst, rate text
records: Pool = Pool(16)  # rate path -> descriptors of this process not in use by a take


@functools.cache
def boot_id() -> bytes:
    """This boot's identity (16 bytes), read once per process, at its first use of a rate; zeros where the system
    does not say (then a record from before a reboot is not recognised: remove the limit and set it again)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().decode().strip().replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)


class Params(NamedTuple):
    """A rate as stored: ``interval`` seconds between starts (0.0: no rate), ``burst``, ``text``."""

    interval: float
    burst: int
    text: str


NO_RATE = Params(0.0, 1, "")


class Reservation(NamedTuple):
    """Tokens taken: the TAT before and after the take (to give them back) and when the taker may start."""

    before: float
    after: float
    due: float


class RateFile:
    """The GCRA record of one limit."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path

    # --- the record, under its lock -----------------------------------------------------------------

    def _open(self, create: bool) -> int | None:
        """A pooled or new locked descriptor of the record; None when there is none (and not ``create``)."""
        fd = records.take(self.path)
        if fd is None:
            try:
                fd = open_tracked(self.path, os.O_RDWR | os.O_NONBLOCK)
            except FileNotFoundError:
                if not create:
                    return None
                self._create()
                return self._open(create)
            except OSError as exc:
                try:
                    mode = os.lstat(self.path).st_mode
                except OSError:
                    raise exc from None
                raise self._corrupt(f"not a file but {kind(mode)}") from None
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                close_tracked(fd)
                raise self._corrupt(f"not a file but {kind(mode)}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a few microseconds: a kernel queue, the GIL released
        except BaseException:
            close_tracked(fd)
            raise
        if os.fstat(fd).st_nlink == 0:  # deleted by hand since it was opened: use the file now in its place
            close_tracked(fd)
            return self._open(create)
        return fd

    def _create(self) -> None:
        """Put a whole record (no rate) in place at once — a new file linked under the record's name — so that an
        empty or short record is always damage, never a setter's file not written yet."""
        tmp = f"{os.path.dirname(self.path)}/.rate-{unique()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _RECORD.pack(MAGIC, boot_id(), 0.0, 0.0, 1, b""))
            os.link(tmp, self.path)
        except FileExistsError:  # another process made it first
            pass
        finally:
            os.close(fd)
            os.unlink(tmp)

    def _close(self, fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        if not records.give(self.path, fd):
            close_tracked(fd)

    def _read(self, fd: int) -> tuple[Params, float]:
        """(rate, TAT) of the locked record; a TAT of another boot reads as 0.0 (nothing reserved)."""
        data = os.pread(fd, _RECORD.size + 1, 0)
        try:
            magic, boot, tat, interval, burst, text = _RECORD.unpack(data)
        except struct.error:
            raise self._corrupt(f"{len(data)} bytes") from None
        params = Params(interval, burst, text.rstrip(b"\0").decode("ascii", "replace"))
        if magic != MAGIC or not (interval == 0.0 or 0.0 < interval < 1e12) or burst < 1 or tat != tat:
            raise self._corrupt(repr(data[:40]))
        return params, tat if boot == boot_id() else 0.0

    def _read_or_forget(self, fd: int) -> tuple[Params, float]:
        """``_read``, except that a damaged record reads as empty: what setting or removing the rate writes over."""
        try:
            return self._read(fd)
        except LimitsDirError:
            return NO_RATE, 0.0

    def _write(self, fd: int, params: Params, tat: float) -> None:
        data = _RECORD.pack(MAGIC, boot_id(), tat, params.interval, params.burst, params.text.encode("ascii")[:24])
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(f"short write to {self.path}")

    def _corrupt(self, what: str) -> LimitsDirError:
        return LimitsDirError(
            f"corrupted limits state file {self.path} ({what}): set the rate again with "
            f"`nbflow limits set {self.name} --rate N/s` or delete it"
        )

    # --- setting ------------------------------------------------------------------------------------------

    def set(self, rate: Rate | None, burst: int) -> None:
        """Store ``rate`` (None: no rate). Takers already sleeping keep their due times, and the next start is spaced
        one new interval after the last one reserved (``tat - burst*T`` at the old rate): a raise takes effect at
        once, a cut spaces the next start at the new interval, and the two schedules never run side by side."""
        fd = self._open(create=rate is not None)
        if fd is None:
            return  # no record and no rate to store
        try:
            params = NO_RATE if rate is None else Params(rate.interval, burst, rate.text)
            old, tat = self._read_or_forget(fd)
            if old.interval and params.interval and tat > time.monotonic():
                tat += params.burst * params.interval - old.burst * old.interval
            self._write(fd, params, tat)
        finally:
            self._close(fd)

    def params(self) -> Params:
        """The stored rate (``NO_RATE`` when none)."""
        fd = self._open(create=False)
        if fd is None:
            return NO_RATE
        try:
            return self._read(fd)[0]
        finally:
            self._close(fd)

    def next_start(self) -> tuple[Params, float]:
        """(rate, seconds until a take of 1 would be allowed now)."""
        fd = self._open(create=False)
        if fd is None:
            return NO_RATE, 0.0
        try:
            params, tat = self._read(fd)
        finally:
            self._close(fd)
        if not params.interval:
            return params, 0.0
        return params, max(0.0, tat - params.burst * params.interval + params.interval - time.monotonic())

    # --- taking -------------------------------------------------------------------------------------------

    def reserve(self, amount: float, deadline: float | None) -> Reservation | None:
        """Take ``amount`` tokens: None when the limit has no rate; ``Expired`` (nothing taken) when they would be
        due after ``deadline``, so a timeout is known at once instead of slept through."""
        fd = self._open(create=False)
        if fd is None:
            return None
        try:
            params, tat = self._read(fd)
            if not params.interval:
                return None
            if amount > params.burst:
                raise Unsatisfiable(
                    f"limit {self.name!r} has rate {params.text} with burst {params.burst}, so {amount:g} can never "
                    f"be granted at once: ask for less or raise the burst with "
                    f'nbflow.limit("{self.name}", rate="{params.text}", burst=n)'
                )
            now = time.monotonic()
            after = max(tat, now) + amount * params.interval
            due = max(now, after - params.burst * params.interval)
            if deadline is not None and due > now and due > deadline:
                raise Expired
            self._write(fd, params, after)
            return Reservation(tat, after, due)
        finally:
            self._close(fd)

    def give_back(self, taken: Reservation) -> bool:
        """Undo a take whose taker gave up before its due time, if no take came after it (else its tokens are
        spent: a later reservation was spaced from it). True when given back."""
        fd = self._open(create=False)
        if fd is None:
            return False
        try:
            params, tat = self._read(fd)
            if tat != taken.after or not params.interval:
                return False
            self._write(fd, params, taken.before)
            return True
        finally:
            self._close(fd)

    def remove(self) -> bool:
        """Forget the rate and its reservations (the record stays, marked as no rate); True if there was one."""
        fd = self._open(create=False)
        if fd is None:
            return False
        try:
            params, _ = self._read_or_forget(fd)
            self._write(fd, NO_RATE, 0.0)  # its reservations go with it: a rate set again starts afresh
            return bool(params.interval)
        finally:
            self._close(fd)
