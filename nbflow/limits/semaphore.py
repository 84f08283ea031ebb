"""One limit's counting semaphore on disk, in ``<limits dir>/<name>/``.

- ``capacity``: the set capacity as text, replaced atomically; absent for detected limits.
- ``gate``: the queue. Whoever holds its flock is the head: it waits until its amount fits, writes its
  slot file and unlocks the gate. Waiters block in the kernel on the gate, so a large request at the head
  cannot be overtaken by a stream of small ones.
- ``slots/``: one file per holding, named ``<amount>_<indices>_<pid>_<unique>`` so that a listing gives the
  use without opening files; each stays flocked by its holder, so an unlocked one is stale (holder died).
- ``waiting/``: one locked file per acquirer that had to wait (counted by ``limits()``).
- ``wake``: a FIFO; releases and ``limit()`` write a byte so the head re-checks at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import threading
import time
from json.encoder import encode_basestring

from ..errors import LimitsDirError, LimitTimeout, NoSuchLimit, Unsatisfiable
from .detect import detected_capacity
from .forksafe import HOST, Pool, close_tracked, open_tracked, pid, set_owner, unique
from .holding import Holding, keep_spare, spares, wake
from .paths import limits_dir
from .status import Holder, LimitStatus

EPS = 1e-9
FALLBACK_POLL = 0.25  # seconds; only matters for holders whose death no pidfd reports (other hosts)
MAX_INDEXED = 1024  # limits up to this capacity hand out device indices (GPU slot k)
HOST_JSON = json.dumps(HOST)
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def fits(used: float, amount: float, capacity: float) -> bool:
    """``used + amount <= capacity`` up to a relative epsilon, so 0.1 + 0.2 style sums are not refused."""
    return used + amount <= capacity + EPS * max(capacity, 1.0)


class _Filelock:
    """filelock's descriptor functions, imported on first use (importing filelock takes ~50 ms)."""

    def __getattr__(self, name: str):
        import filelock

        value = getattr(filelock, name)
        setattr(self, name, value)
        return value


filelock = _Filelock()


def lock_nb(fd: int) -> bool:
    return filelock.lock_descriptor(fd, blocking=False)


class Expired(Exception):
    """The budget of an acquisition ran out (turned into ``LimitTimeout`` or a failed try)."""


class Cancelled(Exception):
    """An async acquisition was cancelled while it waited in its helper thread."""


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
    """How long an acquisition may wait (``timeout=``), shared by every limit of one ``acquire_all``."""

    __slots__ = ("timeout", "deadline", "cancel")

    def __init__(self, timeout: float | None = None, cancel: Cancel | None = None) -> None:
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout >= 0
        ):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.cancel = cancel

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


def record(task: str, amount: float, since: float, slots: tuple[int, ...]) -> bytes:
    """The JSON a holder/waiter file holds (formatted by hand: this is on the hot path)."""
    return (
        f'{{"pid": {pid()}, "host": {HOST_JSON}, "task": {encode_basestring(task)}, "amount": {amount!r}, '
        f'"since": {since!r}, "slots": [{", ".join(map(str, slots))}]}}'
    ).encode()


def publish(directory: str, name: str, data: bytes) -> tuple[str, int]:
    """Create ``directory/name`` already flocked with ``record`` in it: written as a dotfile, then renamed,
    so a visible file is always locked while its creator lives."""
    tmp = f"{directory}/.tmp-{name}"
    path = f"{directory}/{name}"
    fd = open_tracked(tmp, CREATE)
    try:
        lock_nb(fd)  # a fresh file nobody else has open: this cannot be contended
        os.write(fd, data)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        finally:
            close_tracked(fd)
        raise
    return path, fd


def reap(path: str) -> bool:
    """Delete ``path`` if nobody holds its flock (its holder died); True when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        if not lock_nb(fd):
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return True
    finally:
        os.close(fd)


def read_live(path: str) -> dict | None:
    """The record of a live holder/waiter file, or None (and the file removed) when its owner is dead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if lock_nb(fd):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return None
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    try:
        fields = json.loads(data)
    except ValueError:
        fields = None
    return fields if isinstance(fields, dict) else {}


gates: Pool = Pool(64)  # gate path -> descriptors of this process not in use by an acquisition


def visible(directory: str) -> list[str]:
    """The holdings (or waiters) listed in ``directory``: dotfiles are spares or being written."""
    return [entry for entry in os.listdir(directory) if entry[0] != "."]


def used_of(names: list[str]) -> float:
    """Sum of the amounts in visible slot file names (names no nbflow process writes are ignored)."""
    used = 0.0
    for entry in names:
        try:
            used += float(entry.split("_", 1)[0])
        except ValueError:
            pass
    return used


def free_indices(names: list[str], count: int, capacity: float) -> tuple[int, ...]:
    """The ``count`` lowest device indices in ``range(capacity)`` that no holder has; none for limits
    larger than ``MAX_INDEXED`` (MEMORY bytes are not devices)."""
    if capacity > MAX_INDEXED:
        return ()
    if not names:
        return tuple(range(count))
    taken: set[int] = set()
    for entry in names:
        parts = entry.split("_", 2)
        if len(parts) == 3 and parts[1]:
            taken.update(int(i) for i in parts[1].split(",") if i.isdigit())
    free = [i for i in range(int(capacity + EPS * max(capacity, 1.0))) if i not in taken]
    return tuple(free[:count]) if len(free) >= count else ()


def holder_pids(names: list[str]) -> set[int]:
    pids = set()
    for entry in names:
        parts = entry.split("_", 3)
        if len(parts) == 4 and parts[2].isdigit():
            pids.add(int(parts[2]))
    pids.discard(pid())
    return pids


_fifos: dict[str, int] = {}  # wake FIFO path -> this process's O_RDWR descriptor (no locks: fork-safe)


def fifo_fd(path: str) -> int:
    """This process's reading end of a wake FIFO; O_RDWR so it never reports end-of-file."""
    fd = _fifos.get(path)
    if fd is None:
        opened = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        fd = _fifos.setdefault(path, opened)
        if fd != opened:  # another thread opened it first
            os.close(opened)
    return fd


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


class Limit:
    """The on-disk semaphore of one limit name in one limits directory."""

    def __init__(self, root: str, name: str) -> None:
        self.name = name
        self.dir = os.path.join(root, name)
        self.capacity_path = self.dir + "/capacity"
        self.gate_path = self.dir + "/gate"
        self.slots_dir = self.dir + "/slots"
        self.waiting_dir = self.dir + "/waiting"
        self.wake_path = self.dir + "/wake"
        self._cached: tuple[tuple[int, int], float] | None = None
        self._ready = False

    # --- capacity -------------------------------------------------------------------------------

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
        try:
            with open(self.capacity_path, "rb") as f:
                text = f.read(256).decode("utf-8", "replace").strip()
        except FileNotFoundError:
            return self.set_capacity()  # replaced or removed between stat and open
        except OSError as exc:  # e.g. a directory in its place
            text = exc.strerror or str(exc)
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
        wake(self.wake_path)

    # --- files --------------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the limit's directories and wake FIFO once per process."""
        if self._ready:
            return
        try:
            os.makedirs(self.slots_dir, mode=0o700, exist_ok=True)
            os.makedirs(self.waiting_dir, mode=0o700, exist_ok=True)
            try:
                os.mkfifo(self.wake_path, 0o600)
            except FileExistsError:
                pass
        except OSError as exc:
            raise LimitsDirError(
                f"cannot create the state of limit {self.name!r} in {self.dir}: {exc.strerror or exc}; "
                "set NBFLOW_LIMITS_DIR to a directory you own"
            ) from None
        self._ready = True

    def holders(self) -> list[Holder]:
        """Live holders (stale slot files of dead holders are removed on the way)."""
        out = []
        for entry in visible(self.slots_dir):
            fields = read_live(f"{self.slots_dir}/{entry}")
            if fields is None:
                continue
            parts = entry.split("_", 3)
            out.append(
                Holder(
                    pid=int(fields.get("pid", parts[2] if len(parts) > 2 and parts[2].isdigit() else 0)),
                    host=str(fields.get("host", "")),
                    task=str(fields.get("task", "")),
                    amount=float(fields.get("amount", used_of([entry]))),
                    since=float(fields.get("since", 0.0)),
                )
            )
        return sorted(out, key=lambda h: h.since)

    def waiting(self) -> int:
        return sum(1 for entry in visible(self.waiting_dir) if read_live(f"{self.waiting_dir}/{entry}") is not None)

    def status(self) -> LimitStatus | None:
        """This limit as ``limits()`` shows it; None when it has neither a capacity nor holders."""
        capacity = self.set_capacity()
        if capacity is None:
            capacity = detected_capacity(self.name)
        self.ensure()
        holders = self.holders()
        if capacity is None and not holders:
            return None
        used = float(sum(h.amount for h in holders))
        return LimitStatus(self.name, capacity or 0.0, used, holders, self.waiting())

    def _reap_stale(self) -> bool:
        """As head: remove slot files whose holder died, visible ones and spares (True if any)."""
        return sum(reap(f"{self.slots_dir}/{entry}") for entry in os.listdir(self.slots_dir)) > 0

    # --- acquisition ----------------------------------------------------------------------------

    def acquire(self, amount: float, task: str, budget: Budget) -> Holding:
        try:
            return self._acquire(amount, task, budget)
        except Expired:
            raise self._timeout_error(amount, budget) from None

    def try_acquire(self, amount: float, task: str) -> Holding | None:
        """Grant at once if the gate is free and the amount fits, else None (no waiting)."""
        try:
            return self._acquire(amount, task, Budget(0.0))
        except Expired:
            return None

    def _acquire(self, amount: float, task: str, budget: Budget) -> Holding:
        capacity = self.check(amount)
        self.ensure()
        gate = gates.take(self.gate_path)  # one open file description per acquisition in flight
        if gate is None:
            gate = open_tracked(self.gate_path, os.O_RDWR | os.O_CREAT)
        marker: tuple[str, int] | None = None
        locked = False
        try:
            locked = lock_nb(gate)
            if not locked:
                marker = self._mark_waiting(amount, task, budget)
                self._wait_gate(gate, budget)
                locked = True
            fifo = -1
            while True:
                names = visible(self.slots_dir)
                if not fits(used_of(names), amount, capacity) and self._reap_stale():
                    names = visible(self.slots_dir)
                if fits(used_of(names), amount, capacity):
                    return self._grant(amount, task, capacity, names)
                if fifo < 0:  # drain old wake-ups, then look again before sleeping so none is missed
                    fifo = fifo_fd(self.wake_path)
                    drain(fifo)
                    continue
                if marker is None:
                    marker = self._mark_waiting(amount, task, budget)
                sleep_until_change(fifo, names, budget)
                drain(fifo)
                capacity = self.check(amount)
        finally:
            if marker is not None:
                try:
                    os.unlink(marker[0])
                finally:
                    close_tracked(marker[1])
            if locked:
                filelock.unlock_descriptor(gate)
            if not gates.give(self.gate_path, gate):
                close_tracked(gate)

    def _wait_gate(self, gate: int, budget: Budget) -> None:
        """Become head: a blocking flock (kernel queue, GIL released) or, with a timeout, short polls."""
        if budget.deadline is None and budget.cancel is None:
            fcntl.flock(gate, fcntl.LOCK_EX)
            return
        delay = 1e-4
        while not lock_nb(gate):
            left = budget.remaining(delay)
            if budget.cancel is not None:
                budget.cancel.event.wait(left)
            else:
                time.sleep(left)
            delay = min(delay * 2, 2e-3)

    def _mark_waiting(self, amount: float, task: str, budget: Budget) -> tuple[str, int]:
        budget.remaining()  # a try that may not wait (timeout=0) leaves no waiting file behind
        return publish(self.waiting_dir, unique(), record(task, amount, time.time(), ()))

    def _grant(self, amount: float, task: str, capacity: float, names: list[str]) -> Holding:
        """As head: publish a slot file (a reused spare when this process has one) under its final name."""
        slots = free_indices(names, int(amount), capacity) if amount.is_integer() else ()
        since = time.time()
        holding = Holding(self.name, amount, slots, task, since, self.slots_dir, self.wake_path)
        data = record(task, amount, since, slots)
        path = f"{self.slots_dir}/{amount!r}_{','.join(map(str, slots))}_{unique()}"
        spare = spares.take(self.slots_dir)
        if spare is None:
            spare_path = f"{self.slots_dir}/.spare-{unique()}"
            fd = open_tracked(spare_path, CREATE, holding)
            lock_nb(fd)  # a fresh file nobody else has open: this cannot be contended
            size = 0
        else:
            fd, spare_path, size = spare
            set_owner(fd, holding)
        try:
            os.pwrite(fd, data.ljust(size), 0)  # JSON readers ignore the trailing blanks
            os.link(spare_path, path)
        except BaseException:
            keep_spare(self.slots_dir, fd, spare_path, size)
            raise
        holding._path, holding._spare, holding._size, holding._fd = path, spare_path, max(size, len(data)), fd
        return holding

    def _timeout_error(self, amount: float, budget: Budget) -> LimitTimeout:
        holders = self.holders()
        who = ", ".join(f"pid {h.pid} on {h.host} task {h.task or '-'!r} holds {h.amount:g}" for h in holders)
        try:
            capacity = f"{self.capacity():g}"
        except NoSuchLimit:
            capacity = "none"
        return LimitTimeout(
            f"limit {self.name!r}: {amount:g} not granted within {budget.timeout:g} s "
            f"(capacity {capacity}, in use {sum(h.amount for h in holders):g}{': ' + who if who else ''})"
        )


_limits: dict[tuple[str, str], Limit] = {}


def get_limit(name: str) -> Limit:
    """The ``Limit`` for a checked name in the current limits directory (cached per directory)."""
    root = limits_dir()
    lim = _limits.get((root, name))
    if lim is None:
        lim = _limits.setdefault((root, name), Limit(root, name))
    return lim
