"""A Hypothesis state machine of one limit across real processes, checked against a simple model.

Each acquisition runs in its own ``worker.py serve`` process; rules acquire, release, change the capacity
(raise or lower) and SIGKILL a holder or a waiter. The disk state read through ``limits()`` must never show
use above the capacity in force when its newest holder was granted: holders granted before a change may stay
above a lowered capacity, but nobody is admitted beside them while they are. After the run every waiter is
served or refused and nothing stays held or queued.

Rate steps set, change or remove the limit's rate and start or SIGKILL "takers": processes that take the limit
in a loop for a few seconds and log each admission's monotonic time. In any window of ``WINDOW`` s (1 s less a
wake-up's delay) while a rate was in force, the takers were admitted at most ``burst + rate`` times (``2 * burst +
rate`` across a change of rate).
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import time

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from limits_helpers import Worker, assert_nothing_held, wait_for
from test_limits_rate_procs import WINDOW, start_taker

from nbflow.limit_scopes import limit
from nbflow.machine_limits import limits
from nbflow.machine_limits.paths import limits_dir

DEADLINE = 30.0  # seconds for anything the machine must do (loaded 2-core CI box)
EPS = 1e-9
MAX_ACTIVE = 5  # worker processes alive at once
MAX_TAKERS = 2  # taker processes alive at once
TAKE_FOR = 3.0  # seconds a taker takes the limit in a loop
BURST = 2  # the rate's burst (so that the amounts 1 and 2 stay grantable)
_names = itertools.count()


class Acquirer:
    """One ``serve`` worker process: waiting, then holding, then done (released, refused or killed)."""

    def __init__(self, name: str, amount: int, capacity: float) -> None:
        self.amount = amount
        self.worker = Worker("serve", name, amount)
        self.state = "waiting"
        self.lowest_capacity = capacity  # the lowest capacity in force while it waited
        self.since = 0.0  # epoch seconds of the grant, read under the gate before the slot file appears
        self.end: float | None = None  # epoch seconds when its release was asked for, or it was killed
        assert self.worker.line(DEADLINE) == "waiting"

    @property
    def pid(self) -> int:
        return self.worker.proc.pid

    def outcome(self, line: str) -> None:
        """Apply a line the worker printed while it waited."""
        if line.startswith("granted"):
            self.state = "holding"
            self.since = float(line.split()[1])
            return
        assert line.startswith("error Unsatisfiable"), line
        assert self.amount > self.lowest_capacity, f"{self.amount} refused, though capacity stayed >= {line}"
        self.state = "done"
        self.worker.proc.wait(timeout=DEADLINE)


class LimitMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.name = f"M{next(_names)}"  # each example its own limit: nothing carries over
        self.tmp = self.tmp_factory.mktemp(self.name)  # the takers' logs
        self.capacity = 2.0
        limit(self.name, self.capacity)
        self.acquirers: list[Acquirer] = []
        self.changes: list[tuple[float, float, float]] = [(0.0, 0.0, self.capacity)]  # (called, returned, new)
        self.grandfathered: set[tuple[int, float]] = set()  # holders (pid, since) present at the last change
        self.rate: float | None = None  # starts a second
        self.rates: list[tuple[float, float, float | None]] = [(0.0, 0.0, None)]  # (called, returned, new), monotonic
        self.takers: list[subprocess.Popen] = []
        self.logs = 0  # taker log files written so far

    # --- helpers ---------------------------------------------------------------------------------------------

    def active(self, state: str | None = None) -> list[Acquirer]:
        return [a for a in self.acquirers if a.state != "done" and (state is None or a.state == state)]

    def collect(self) -> None:
        """Take in every outcome the waiting workers have printed so far, and check each new grant."""
        granted = []
        for a in self.active("waiting"):
            line = a.worker.poll()
            if line is not None:
                a.outcome(line)
                if a.state == "holding":
                    granted.append(a)
        for a in granted:
            self.check_grant(a)

    def check_grant(self, grant: Acquirer) -> None:
        """At its grant, the known holders (``grant`` too) fit the capacity in force then: set by the last
        ``limit()`` that returned before (a ``limit()`` still running then allows the larger of the two)."""
        t = grant.since
        allowed = 0.0
        for called, returned, capacity in self.changes:
            if returned < t:
                allowed = capacity
            elif called <= t:
                allowed = max(allowed, capacity)
        held = [a for a in self.acquirers if a.state != "waiting" and 0 < a.since <= t and (a.end is None or a.end > t)]
        assert sum(a.amount for a in held) <= allowed + EPS, (
            f"granted {grant.amount:g} at {t:.6f} while {[(a.amount, a.since) for a in held]} held: "
            f"capacity in force {allowed:g}"
        )

    def status(self):
        return next(s for s in limits() if s.name == self.name)

    # --- rules ------------------------------------------------------------------------------------------------

    # Rules have no preconditions and draw the same kinds of values whatever the processes did: which
    # waiters are granted when depends on timing, and Hypothesis must replay a run's draws exactly.

    @initialize(holders=st.integers(0, 2))
    def start_in_use(self, holders: int) -> None:
        """Start with some of the capacity held, so that queues form within a few steps."""
        for _ in range(holders):
            self.acquire(1)

    @rule(amount=st.sampled_from([1, 2]))
    def acquire(self, amount: int) -> None:
        self.collect()
        if len(self.active()) >= MAX_ACTIVE:
            return
        queue_empty = not self.active("waiting")
        used = sum(a.amount for a in self.active("holding"))
        acquirer = Acquirer(self.name, amount, self.capacity)
        self.acquirers.append(acquirer)
        if amount > self.capacity or (queue_empty and used + amount <= self.capacity + EPS):
            acquirer.outcome(acquirer.worker.line(DEADLINE))  # refused at once, or granted: nobody is ahead
            assert acquirer.state == ("done" if amount > self.capacity else "holding")
            if acquirer.state == "holding":
                self.check_grant(acquirer)

    @rule(index=st.integers(0, MAX_ACTIVE - 1))
    def release(self, index: int) -> None:
        self.collect()
        holding = self.active("holding")
        if holding:
            acquirer = holding[index % len(holding)]
            acquirer.end = time.time()
            acquirer.worker.send()
            assert acquirer.worker.line(DEADLINE) == "released"
            acquirer.state = "done"
            acquirer.worker.proc.wait(timeout=DEADLINE)

    @rule(capacity=st.sampled_from([1.0, 2.0, 3.0]))
    def set_capacity(self, capacity: float) -> None:
        called = time.time()
        limit(self.name, capacity, rate=None if self.rate is None else f"{self.rate:g}/s", burst=BURST)
        self.changes.append((called, time.time(), capacity))
        self.capacity = capacity
        for a in self.active("waiting"):
            a.lowest_capacity = min(a.lowest_capacity, capacity)
        self.grandfathered = {(h.pid, h.since) for h in self.status().holders}

    @rule()
    def lower_capacity(self) -> None:
        """Lower the capacity by one (to at least 1): the change that must not admit queued waiters."""
        self.set_capacity(max(self.capacity - 1, 1.0))

    @rule(index=st.integers(0, MAX_ACTIVE - 1))
    def kill(self, index: int) -> None:
        """SIGKILL a holder or a waiter (its share and its place in the queue are freed)."""
        active = self.active()
        if active:
            acquirer = active[index % len(active)]
            acquirer.end = time.time()
            acquirer.worker.kill()
            acquirer.state = "done"

    @rule(rate=st.sampled_from([None, 5.0, 10.0, 20.0]))
    def set_rate(self, rate: float | None) -> None:
        called = time.monotonic()
        limit(self.name, self.capacity, rate=None if rate is None else f"{rate:g}/s", burst=BURST)
        self.rates.append((called, time.monotonic(), rate))
        self.rate = rate

    @rule()
    def add_taker(self) -> None:
        self.takers = [p for p in self.takers if p.poll() is None]
        if len(self.takers) < MAX_TAKERS:
            now = time.monotonic()
            self.takers.append(start_taker(self.tmp, self.logs, self.name, now, now + TAKE_FOR))
            self.logs += 1

    @rule(index=st.integers(0, MAX_TAKERS - 1))
    def kill_taker(self, index: int) -> None:
        """SIGKILL a taker: holding its slot, sleeping until its token is due, or between two takes."""
        if self.takers:
            victim = self.takers.pop(index % len(self.takers))
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=DEADLINE)

    # --- invariants -------------------------------------------------------------------------------------------

    @invariant()
    def takers_within_the_rate(self) -> None:
        times = []
        for path in self.tmp.glob("taker-*.txt"):
            times += [float(line) for line in path.read_text().split() if line != "ready"]
        times.sort()
        for i, t in enumerate(times):
            rates = self.rates_in_force(t, t + 1.0)
            if None not in rates:
                allowed = (BURST if len(rates) == 1 else 2 * BURST) + max(rates)
                count = sum(1 for u in times[i:] if u < t + WINDOW)
                assert count <= allowed, f"{count} starts in [{t:.3f}, {t + WINDOW:.3f}) at rates {rates}"

    def rates_in_force(self, start: float, end: float) -> set[float | None]:
        """The rates in force at some time of ``[start, end)``: the last set before it, and any set during it."""
        before = [rate for _, returned, rate in self.rates if returned <= start]
        during = {rate for called, returned, rate in self.rates if called < end and returned > start}
        return {before[-1], *during} if before else {None, *during}

    @invariant()
    def use_within_the_capacity_at_grant_time(self) -> None:
        self.collect()
        alive = {a.pid for a in self.active()} | {p.pid for p in self.takers if p.poll() is None}
        # A dead holder's slot can be listed for an instant while another process reaps it (the reaper holds
        # its flock then): wait for a listing without one, and check the use in that same listing.
        status = wait_for(
            lambda: (s := self.status()) and {h.pid for h in s.holders} <= alive and s,
            DEADLINE,
            "released and killed workers to hold nothing",
        )
        assert status.capacity == self.capacity
        old = sum(h.amount for h in status.holders if (h.pid, h.since) in self.grandfathered)
        new = [h.amount for h in status.holders if (h.pid, h.since) not in self.grandfathered]
        if new:
            assert sum(new) + old <= self.capacity + EPS, (
                f"use {sum(new) + old:g} > capacity {self.capacity:g}: {status.holders}"
            )

    def teardown(self) -> None:
        """Serve the queue to the end: every waiter is granted (then released) or refused."""
        for p in self.takers:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=DEADLINE)
        try:
            while self.active():
                for a in self.active("holding"):
                    a.end = time.time()
                    a.worker.send()
                    assert a.worker.line(DEADLINE) == "released"
                    a.state = "done"
                waiting = self.active("waiting")
                if waiting:
                    wait_for(lambda w=waiting: self.served(w), DEADLINE, "a waiter to be served or refused")
            status = self.status()
            assert (status.used, status.waiting) == (0, 0)
        finally:
            for a in self.acquirers:
                a.worker.kill()
        assert_nothing_held(limits_dir())

    def served(self, waiting: list[Acquirer]) -> bool:
        self.collect()
        return any(a.state != "waiting" for a in waiting)


def test_limit_against_the_model(limits_dir, tmp_path_factory):
    LimitMachine.tmp_factory = tmp_path_factory
    run_state_machine_as_test(
        LimitMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,  # ~15 s here; under 60 s on a loaded 2-core box
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
