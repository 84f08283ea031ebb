"""Machine-wide limits across real processes: stress with an independent log, SIGKILL, fairness."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from limits_helpers import assert_nothing_held, expect_line, start, wait_for

from nbflow.machine_limits import acquire, limit, limits


def run_logged(tmp_path, name: str, procs: int, n: int, amounts: str = "1,2") -> list[tuple[int, int, int, float]]:
    """Run ``procs`` worker processes of ``n`` acquisitions each; return every logged acquisition."""
    outs = [tmp_path / f"log{i}.txt" for i in range(procs)]
    workers = [start("log", name, n, i, out, amounts) for i, out in enumerate(outs)]
    for w in workers:
        assert w.wait(timeout=240) == 0, "a worker failed (or deadlocked)"
    records = []
    for out in outs:
        for line in out.read_text().splitlines():
            t0, t1, t2, amount = line.split()
            records.append((int(t0), int(t1), int(t2), float(amount)))
    return records


def peak_use(records) -> float:
    """The largest total amount held at any instant (releases sort before grants at equal times)."""
    events = sorted(
        [(t1, 1, amount) for _, t1, _, amount in records] + [(t2, 0, -amount) for _, _, t2, amount in records]
    )
    use = peak = 0.0
    for _, _, delta in events:
        use += delta
        peak = max(peak, use)
    return peak


def test_stress_8_processes_x_500(tmp_path, limits_dir):
    limit("S", 2)
    records = run_logged(tmp_path, "S", procs=8, n=500)
    assert len(records) == 8 * 500  # every acquisition served
    assert peak_use(records) <= 2  # capacity never exceeded at any instant
    assert peak_use(records) == 2  # and the log really saw concurrent holders
    max_wait = max(t1 - t0 for t0, t1, _, _ in records) / 1e9
    assert max_wait < 30, f"an acquisition waited {max_wait:.1f} s"
    assert limits()[0].used == 0
    assert_nothing_held(str(limits_dir))


def test_two_processes_wanting_2_of_3_never_deadlock(tmp_path, limits_dir):
    limit("T", 3)
    records = run_logged(tmp_path, "T", procs=2, n=200, amounts="2")
    assert len(records) == 400
    assert peak_use(records) == 2  # all-or-nothing: never 2 + a partial share of the other
    assert_nothing_held(str(limits_dir))


@pytest.mark.parametrize("fork", ["", "fork"], ids=["plain", "forked-child-lives-on"])
def test_sigkill_of_holder_frees_share_within_1s(limits_dir, fork):
    limit("K", 1)
    holder = start("hold", "K", 1, fork)
    child = int(expect_line(holder, "child")) if fork else None
    expect_line(holder, "ready")
    waiter = start("wait", "K", 1, stdin=subprocess.PIPE)
    try:
        expect_line(waiter, "waiting")
        wait_for(lambda: limits()[0].waiting == 1, what="the waiter to queue")
        assert [h.pid for h in limits()[0].holders] == [holder.pid]
        killed = time.monotonic_ns()
        os.kill(holder.pid, signal.SIGKILL)
        granted = int(expect_line(waiter, "granted"))
        assert (granted - killed) / 1e9 <= 1.0
        if child is not None:
            os.kill(child, 0)  # the forked child is still alive: it did not keep the share
        assert [h.pid for h in limits()[0].holders] == [waiter.pid]
        waiter.stdin.write("\n")
        waiter.stdin.flush()
        assert waiter.wait(timeout=30) == 0
    finally:
        for proc in (holder, waiter):
            proc.kill()
            proc.wait()
        if child is not None:
            os.kill(child, signal.SIGKILL)
    assert limits()[0].used == 0
    assert_nothing_held(str(limits_dir))


def test_large_request_is_not_starved_by_small_ones(tmp_path, limits_dir):
    limit("B", 2)
    small = [start("log", "B", 100_000, i, tmp_path / f"small{i}.txt", "1") for i in range(3)]
    try:
        wait_for(lambda: limits()[0].used >= 1, what="small holders")
        with acquire("B", 2, timeout=60, task="large") as big:  # LimitTimeout here would mean starvation
            assert big.slots == (0, 1)
            assert limits()[0].used == 2
        assert all(p.poll() is None for p in small), "the small stream must still be running"
    finally:
        for p in small:
            p.kill()
            p.wait()
    wait_for(lambda: limits()[0].used == 0, what="killed holders to be reaped")


def test_sigkill_of_the_waiting_head_passes_the_queue_on(limits_dir):
    limit("Q", 1)
    hog = acquire("Q", task="hog")
    head = start("wait", "Q", 1, stdin=subprocess.PIPE)
    expect_line(head, "waiting")
    wait_for(lambda: limits()[0].waiting == 1, what="the head")
    second = start("wait", "Q", 1, stdin=subprocess.PIPE)
    try:
        expect_line(second, "waiting")
        wait_for(lambda: limits()[0].waiting == 2, what="the second waiter")
        os.kill(head.pid, signal.SIGKILL)  # it held the gate: the kernel lets the next waiter in
        head.wait()
        wait_for(lambda: limits()[0].waiting == 1, what="the dead head's waiting file to be ignored")
        hog.release()
        expect_line(second, "granted")
        assert [h.pid for h in limits()[0].holders] == [second.pid]
        second.communicate("\n", timeout=30)
        assert second.returncode == 0
    finally:
        for proc in (head, second):
            proc.kill()
            proc.wait()
    assert_nothing_held(str(limits_dir))
