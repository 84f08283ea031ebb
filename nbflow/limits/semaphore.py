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
import os
import time

from ..errors import LimitsDirError, LimitTimeout, NoSuchLimit, Unsatisfiable
from .detect import detected_capacity
from .forksafe import Pool, close_tracked, open_tracked, set_owner, unique
from .holding import Holding, keep_spare, spares, wake
from .paths import limits_dir
from .slotfiles import CREATE, filelock, fits, free_indices, lock_nb, publish, read_live, reap, record, used_of, visible
from .status import Holder, LimitStatus
from .wake import Budget, Cancel, Cancelled, Expired, drain, fifo_fd, sleep_until_change

__all__ = ["Budget", "Cancel", "Cancelled", "Expired", "Limit", "get_limit"]

gates: Pool = Pool(64)  # gate path -> descriptors of this process not in use by an acquisition


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
