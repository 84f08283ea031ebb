"""One limit's counting semaphore on disk, in ``<limits dir>/<name>/``.

- ``capacity``: the set capacity as text, replaced atomically; absent for detected limits.
- ``gate``: the queue. Whoever holds its flock is the head: it waits until its amount fits, writes its
  slot file and unlocks the gate. Waiters block in the kernel on the gate, so a large request at the head
  cannot be overtaken by a stream of small ones.
- ``slots/``: one file per holding, named ``<amount>_<indices>_<pid>_<unique>`` so that a listing gives the
  use without opening files; each stays flocked by its holder, so an unlocked one is stale (holder died).
- ``waiting/``: one locked file per acquirer that had to wait (counted by ``limits()``).
- ``wake``: a FIFO; releases and ``limit()`` write a byte so the head re-checks at once.
- ``rate``: the rate's GCRA record (``rate.py``), when a rate was ever set. A limit with a rate and no capacity
  (none set or detected) takes no slot: its ``Holding`` is a ``Token``.

With a capacity and a rate, an acquisition takes its slot first, then its tokens, sleeping until their due
time while holding the slot, so starts never bunch above the rate; a failed or cancelled wait releases both.

The head reads the capacity under the gate once its slot file is visible (a waiter also before it decides):
a ``limit()`` that lowered it since the head decided makes the head take the slot back and decide again. So
once ``limit()`` has returned, nobody is granted beyond the new capacity, whatever was queued before; an
uncontended acquisition decides with the capacity it read last, so this costs no extra ``stat``.
"""

from __future__ import annotations

import fcntl
import os
import time

from ..errors import LimitsDirError, LimitTimeout, NbflowError, NoSuchLimit, Unsatisfiable
from ..specs import Rate
from ..thread_stop import shielded
from .capacity_file import CapacityFile
from .damage import check_regular, check_tree, deleted, failure
from .detect import detected_capacity
from .forksafe import Pool, close_tracked, open_tracked, set_owner, unique
from .holding import Holding, Token, keep_spare, spares, wake
from .paths import limits_dir
from .rate import NO_RATE, RateFile, Reservation
from .slotfiles import (
    CREATE,
    entries,
    filelock,
    fits,
    lock_nb,
    parse_slot_name,
    pick_devices,
    publish,
    read_live,
    reap,
    record,
    slot_name,
    used_of,
    visible,
)
from .status import Holder, LimitStatus
from .wake import Budget, Cancel, Cancelled, Expired, GaveUp, drain, fifo_fd, sleep_until_change

__all__ = ["Budget", "Cancel", "Cancelled", "Expired", "GaveUp", "Limit", "get_limit"]

gates: Pool = Pool(64)  # gate path -> descriptors of this process not in use by an acquisition
UNLOCKED_GRACE = 60.0  # seconds an empty, unlocked waiting file is taken to be a waiter still creating it


class _RateOnly(Exception):
    """The capacity was removed while a slot was sought, and a rate remains: take a ``Token`` instead."""


class Limit:
    """The on-disk semaphore of one limit name in one limits directory."""

    def __init__(self, root: str, name: str) -> None:
        self.name = name
        self.dir = os.path.join(root, name)
        self.gate_path = self.dir + "/gate"
        self.slots_dir = self.dir + "/slots"
        self.waiting_dir = self.dir + "/waiting"
        self.wake_path = self.dir + "/wake"
        self.rate = RateFile(name, self.dir + "/rate")
        self.capacity_file = CapacityFile(name, self.dir + "/capacity", self.rate.path)
        self._last: float | None = None  # the capacity this process read last (a guess, checked after a grant)
        self._ready = False

    # --- files --------------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Check the limit's directory and create its parts once per process."""
        if self._ready:
            return
        check_tree(self.name, self.dir)
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

    def damaged(self, exc: OSError) -> OSError:
        """The most precise account of a system error met in this limit's directory (nbflow errors as is)."""
        if isinstance(exc, NbflowError):
            return exc
        try:
            check_tree(self.name, self.dir)
        except LimitsDirError as found:
            return found
        except OSError:
            pass
        return failure(self.name, exc)

    # --- capacity: the ``capacity`` file written by ``limit()`` (``capacity_file``), else the detected one ----

    def capacity(self) -> float | None:
        """The set capacity, else the detected one (CPU, MEMORY, GPU), else None when a rate is set (concurrency
        unbounded), else ``NoSuchLimit``."""
        value = self.capacity_file.read()
        if value is None:
            value = detected_capacity(self.name)
            if value is None and not self.rate.params().interval:
                raise self._no_such()
        self._last = value
        return value

    def _no_such(self) -> NoSuchLimit:
        return NoSuchLimit(
            f"no capacity or rate is set for limit {self.name!r} on this machine: set one with "
            f'nbflow.limit("{self.name}", n) or `nbflow limits set {self.name} n` (a rate: rate="10/s", --rate 10/s)'
        )

    def check(self, amount: float) -> float | None:
        """The capacity (None: rate only), after refusing an amount it or the rate's burst can never give."""
        capacity = self.capacity()
        if capacity is not None and not fits(0.0, amount, capacity):
            raise Unsatisfiable(
                f"limit {self.name!r} has capacity {capacity:g}, so {amount:g} can never be granted: "
                f'ask for less or raise it with nbflow.limit("{self.name}", n)'
            )
        params = self.rate.params() if self.capacity_file.rated else NO_RATE  # (no record: no read)
        if params.interval and amount > params.burst:
            raise Unsatisfiable(
                f"limit {self.name!r} has rate {params.text} with burst {params.burst}, so {amount:g} can never be "
                f'granted at once: ask for less or raise the burst with nbflow.limit("{self.name}", ..., burst=n)'
            )
        return capacity

    def _slot_capacity(self, amount: float) -> float:
        """``check`` for the slot loop: a capacity removed meanwhile leaves the rate alone (``_RateOnly``)."""
        capacity = self.check(amount)
        if capacity is None:
            raise _RateOnly
        return capacity

    def remove_capacity(self) -> bool:
        """Delete the set capacity (waking the head to re-check); False when none was set."""
        try:
            removed = self.capacity_file.remove()
        except OSError as exc:
            raise self.damaged(exc) from None
        if removed:
            wake(self.wake_path)
        return removed

    def set(self, capacity: float | None, rate: Rate | None, burst: int) -> None:
        """The whole limit: what is None is not set (removed if it was)."""
        self.ensure()
        try:
            self.rate.set(rate, burst)  # first: a process that reads the new capacity file then sees the record
        except OSError as exc:
            raise self.damaged(exc) from None
        if capacity is None:
            self.remove_capacity()
        else:
            self.capacity_file.write(capacity)
            wake(self.wake_path)  # the head re-checks at once
        self._last = None  # the next acquisition reads what was set here

    def remove(self) -> None:
        """Forget the capacity and the rate; ``NoSuchLimit`` when neither was set."""
        try:
            had_rate = self.rate.remove()
        except OSError as exc:
            raise self.damaged(exc) from None
        if not self.remove_capacity() and not had_rate:
            raise NoSuchLimit(f"no capacity or rate is set for limit {self.name!r}, so there is nothing to remove")

    # --- slots ------------------------------------------------------------------------------------

    def _slots(self, typed: bool = False) -> list[str]:
        """The visible slot files; a deleted ``slots/`` is refused (its holders would go uncounted)."""
        try:
            return visible(self.slots_dir, typed)
        except FileNotFoundError:
            raise deleted(self.name, self.slots_dir) from None

    def holders(self) -> list[Holder]:
        """Live holders (stale slot files of dead holders are removed on the way)."""
        out = []
        for entry in self._slots(typed=True):
            fields = read_live(f"{self.slots_dir}/{entry}")
            if fields is None:
                continue
            amount, _, pid = parse_slot_name(entry)
            out.append(
                Holder(
                    pid=int(fields.get("pid", pid)),
                    host=str(fields.get("host", "")),
                    task=str(fields.get("task", "")),
                    amount=float(fields.get("amount", amount)),
                    since=float(fields.get("since", 0.0)),
                    slots=tuple(int(i) for i in fields.get("slots") or () if isinstance(i, int)),
                )
            )
        return sorted(out, key=lambda h: h.since)

    def waiting(self) -> int:
        """Live waiters (files of dead ones are removed on the way)."""
        waiting = visible(self.waiting_dir, typed=True)
        return sum(1 for entry in waiting if read_live(f"{self.waiting_dir}/{entry}") is not None)

    def status(self) -> LimitStatus | None:
        """This limit as ``limits()`` shows it; None when it has neither a capacity, a rate nor holders."""
        try:
            capacity = self.capacity_file.read()
            if capacity is None:
                capacity = detected_capacity(self.name)
            check_tree(self.name, self.dir)
            self.ensure()
            params, next_start = self.rate.next_start()
            self._reap_waiting()
            holders = self.holders()
            waiting = self.waiting()
        except OSError as exc:
            raise self.damaged(exc) from None
        rate = params.text if params.interval else None
        if capacity is None and rate is None and not holders:
            return None
        used = float(sum(h.amount for h in holders))
        if capacity is None and rate is None:
            capacity = 0.0  # removed while held: shown as over a capacity of 0, as before rates
        return LimitStatus(self.name, capacity, used, holders, waiting, rate, params.burst, next_start)

    def _reap_stale(self) -> bool:
        """As head: remove slot files whose holder died, visible ones and spares (True if any), and the
        half-written ``.tmp-`` files of waiters killed while queueing."""
        self._reap_waiting()
        return sum(reap(f"{self.slots_dir}/{entry}") for entry in entries(self.slots_dir)) > 0

    def _reap_waiting(self) -> None:
        """Remove the ``.tmp-`` files of waiters killed while queueing. An empty one may be a live waiter's
        between its creation and its lock (it writes only once locked): it is left alone until it is old."""
        young = time.time() - UNLOCKED_GRACE
        for entry in entries(self.waiting_dir):
            if entry[0] == ".":
                path = f"{self.waiting_dir}/{entry}"
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if st.st_size or st.st_mtime < young:
                    reap(path)

    # --- acquisition ----------------------------------------------------------------------------

    def acquire(self, amount: float, task: str, budget: Budget) -> Holding:
        """A slot (when there is a capacity) and then the rate's tokens (when there is a rate), waiting for both."""
        try:
            with shielded:  # a stopped task's exception would lose a share taken and not yet returned
                holding = self._acquire(amount, task, budget)
                try:
                    taken = self._reserve(holding, amount, budget)
                    if taken is not None:
                        self._sleep(taken, budget)
                except BaseException:
                    holding.release()
                    raise
                return holding
        except Expired:
            raise self._timeout_error(amount, budget) from None
        except OSError as exc:
            raise self.damaged(exc) from None

    def _reserve(self, holding: Holding, amount: float, budget: Budget) -> Reservation | None:
        """Take the rate's tokens for ``holding`` (None: no rate; then a ``Token`` means the limit is gone)."""
        if not self.capacity_file.rated and not isinstance(holding, Token):
            return None
        taken = self.rate.reserve(amount, budget.token_deadline())
        if taken is None and isinstance(holding, Token):
            raise self._no_such()
        return taken

    def _sleep(self, taken: Reservation, budget: Budget) -> None:
        """Sleep until the tokens are due; given back if the wait ends early and nobody reserved after them."""
        try:
            budget.sleep_until(taken.due)
        except BaseException:
            self.rate.give_back(taken)
            raise

    def slot(self, amount: float, task: str, budget: Budget) -> Holding:
        """The slot alone (a ``Token`` for a rate-only limit): ``acquire_async`` then waits for the tokens itself."""
        try:
            with shielded:
                return self._acquire(amount, task, budget)
        except Expired:
            raise self._timeout_error(amount, budget) from None
        except OSError as exc:
            raise self.damaged(exc) from None

    def try_slot(self, amount: float, task: str) -> Holding | None:
        """``slot`` granted at once if the gate is free and the amount fits, else None (no waiting)."""
        try:
            with shielded:
                return self._acquire(amount, task, Budget(0.0))
        except Expired:
            return None
        except OSError as exc:
            raise self.damaged(exc) from None

    def reserve(self, holding: Holding, amount: float, budget: Budget) -> Reservation | None:
        """The rate's tokens for ``holding`` taken without sleeping (None: no rate): ``LimitTimeout`` at once,
        nothing taken, when they would be due after the budget's deadline."""
        try:
            return self._reserve(holding, amount, budget)
        except Expired:
            raise self._timeout_error(amount, budget) from None
        except OSError as exc:
            raise self.damaged(exc) from None

    def _acquire(self, amount: float, task: str, budget: Budget) -> Holding:
        if not self._ready:  # first use here: refuse an unknown limit or impossible amount before creating files
            self.check(amount)
            self.ensure()
        if self._last is None and self.capacity_file.read() is None and detected_capacity(self.name) is None:
            return Token(self.name, amount, task, time.time())  # rate only (checked when its tokens are taken)
        try:
            return self._take_slot(amount, task, budget)
        except _RateOnly:  # the capacity was removed while this waited: only the rate is left
            return Token(self.name, amount, task, time.time())

    def _take_slot(self, amount: float, task: str, budget: Budget) -> Holding:
        gate = gates.take(self.gate_path)  # one open file description per acquisition in flight
        if gate is None:
            gate = self._open_gate()
        marker: tuple[str, int] | None = None
        locked = waited = False
        try:
            locked = lock_nb(gate)
            if not locked:
                waited = True
                self._slot_capacity(amount)  # refuse what can never be granted before queueing
                check_tree(self.name, self.dir)
                marker = self._mark_waiting(amount, task, budget)
                locked = True  # before the wait: an exception raised as it returns (a stopped task's) still unlocks
                self._wait_gate(gate, budget)
            fifo = -1
            capacity = self._last if waited is False and self._last is not None else self._slot_capacity(amount)
            while True:
                names = self._slots()
                if not fits(used_of(names), amount, capacity):
                    capacity = self._slot_capacity(amount)  # in force now: the one seen before may be stale
                    if not fits(used_of(names), amount, capacity) and self._reap_stale():
                        names = self._slots()
                if fits(used_of(names), amount, capacity):
                    holding = self._grant(amount, task, capacity, names)
                    now = self._recheck(holding, capacity)
                    if now >= capacity:
                        return holding
                    capacity = now  # lowered since it was read: the slot was taken back, decide again
                    continue
                if fifo < 0:  # drain old wake-ups, then look again before sleeping so none is missed
                    fifo = fifo_fd(self.wake_path)
                    drain(fifo)
                    continue
                if marker is None:
                    marker = self._mark_waiting(amount, task, budget)
                sleep_until_change(fifo, names, budget)
                drain(fifo)
                capacity = self._slot_capacity(amount)
        finally:
            if marker is not None:
                try:
                    os.unlink(marker[0])
                except FileNotFoundError:
                    pass
                finally:
                    close_tracked(marker[1])
            if locked:
                filelock.unlock_descriptor(gate)
            if not gates.give(self.gate_path, gate):
                close_tracked(gate)

    def _open_gate(self) -> int:
        """A new descriptor of the gate (pooled ones are reused): the limit's directory is checked first."""
        check_tree(self.name, self.dir)
        fd = open_tracked(self.gate_path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK)
        try:
            check_regular(fd, self.gate_path)
        except BaseException:
            close_tracked(fd)
            raise
        return fd

    def _recheck(self, holding: Holding, capacity: float) -> float:
        """The capacity read again under the gate now that the grant is visible; below ``capacity`` (the
        one the grant was decided with: ``limit()`` lowered it meanwhile) the slot is taken back."""
        try:
            now = self.capacity()
            if now is None:
                raise _RateOnly
        except BaseException:
            holding.release()
            raise
        if now < capacity:
            holding.release()
        return now

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
        return publish(self.waiting_dir, record(task, amount, time.time(), ()))

    def _grant(self, amount: float, task: str, capacity: float, names: list[str]) -> Holding:
        """As head: publish a slot file (a reused spare when this process has one) under its final name."""
        slots = pick_devices(names, amount, capacity)
        since = time.time()
        holding = Holding(self.name, amount, slots, task, since, self.slots_dir, self.wake_path)
        data = record(task, amount, since, slots)
        path = f"{self.slots_dir}/{slot_name(amount, slots)}"
        spare = spares.take(self.slots_dir)
        while True:
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
                break
            except FileNotFoundError:
                if spare is None:
                    keep_spare(self.slots_dir, fd, spare_path, size)
                    raise
                close_tracked(fd)  # a pooled spare deleted with slots/ (recreated by hand): use a new file
                spare = None
            except BaseException:
                keep_spare(self.slots_dir, fd, spare_path, size)
                raise
        holding._path, holding._spare, holding._size, holding._fd = path, spare_path, max(size, len(data)), fd
        return holding

    def _timeout_error(self, amount: float, budget: Budget) -> LimitTimeout:
        from ..render import format_holder

        holders = self.holders()
        who = ", ".join(format_holder(h, self.name, exact=True) for h in holders)
        try:
            capacity = self.capacity()
        except NoSuchLimit:
            capacity = None
        params, next_start = self.rate.next_start()
        rate = f"rate {params.text}, next start in {next_start:.3g} s, " if params.interval else ""
        return LimitTimeout(
            f"limit {self.name!r}: {amount:g} not granted within {budget.timeout:g} s ({rate}"
            f"capacity {'none' if capacity is None else f'{capacity:g}'}, "
            f"in use {sum(h.amount for h in holders):g}{': ' + who if who else ''})"
        )


_limits: dict[tuple[str, str], Limit] = {}


def get_limit(name: str) -> Limit:
    """The ``Limit`` for a checked name in the current limits directory (cached per directory)."""
    root = limits_dir()
    lim = _limits.get((root, name))
    if lim is None:
        lim = _limits.setdefault((root, name), Limit(root, name))
    return lim
