"""Machine-wide rate limits (GCRA on a record shared through the limits directory): parsing and refusals,
bursts, amounts, capacity with rate, timeouts, async waits and their cancellation, reboots, damaged records."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time

import pytest
from limits_helpers import assert_nothing_held

import nbflow
from nbflow import LimitsDirError, LimitTimeout, NoSuchLimit, ResourceSpecError, Unsatisfiable
from nbflow.machine_limits import acquire, acquire_async, limits
from nbflow.machine_limits.api import acquire_all, acquire_all_unless, check_demands

SLACK = 0.5  # seconds a loaded 2-core machine may add to a wake-up


def status(name: str):
    (found,) = [s for s in limits() if s.name == name]
    return found


def takes(name: str, n: int, **kwargs) -> list[float]:
    """Monotonic times at which ``n`` acquisitions of ``name`` returned (each released at once)."""
    out = []
    for _ in range(n):
        acquire(name, **kwargs).release()
        out.append(time.monotonic())
    return out


@pytest.mark.parametrize(
    "rate",
    [
        "fast",
        "0/s",
        "-1/s",
        "inf/s",
        "nan/s",
        "1e400/s",
        "1e-300/s",
        "1e-5/h",
        "1e10/s",
        "10/fortnight",
        "10",
        "/s",
        True,
        10,
    ],
)
def test_bad_rates_are_one_line_resource_spec_errors(rate):
    with pytest.raises(ResourceSpecError) as info:
        nbflow.limit("api", rate=rate)
    assert "\n" not in str(info.value) and "rate must be" in str(info.value)
    assert limits() == []


@pytest.mark.parametrize("burst", [0, -1, 1.5, True, "2", None, 10**7])
def test_bad_bursts_are_refused(burst):
    with pytest.raises(ResourceSpecError, match="burst must be a whole number"):
        nbflow.limit("api", rate="10/s", burst=burst)
    assert limits() == []


def test_a_limit_needs_a_capacity_or_a_rate():
    with pytest.raises(ResourceSpecError, match="needs a capacity, a rate or both"):
        nbflow.limit("api")


def test_rate_forms_are_shown_canonically():
    for given, shown in [("10/s", "10/s"), ("60 / min", "60/min"), ("5000/hours", "5000/h"), ("0.5/sec", "0.5/s")]:
        nbflow.limit("api", rate=given, burst=2)
        assert (status("api").rate, status("api").burst, status("api").capacity) == (shown, 2, None)


def test_uncontended_takes_within_the_burst_start_at_once_then_are_spaced():
    nbflow.limit("api", rate="5/s", burst=3)
    t0 = time.monotonic()
    times = takes("api", 5)
    assert times[2] - t0 < 0.15  # the burst: three at once
    assert times[3] - t0 >= 0.2 - 1e-3  # then one every 0.2 s (the fourth is due 0.2 s after the first)
    assert times[4] - t0 >= 0.4 - 1e-3
    assert times[4] - t0 < 0.4 + SLACK
    assert status("api").holders == []  # a rate-only limit holds nothing: no slot files at all
    assert [f for f in os.listdir(os.path.join(os.environ["NBFLOW_LIMITS_DIR"], "api", "slots"))] == []


def test_amounts_take_that_many_tokens_and_above_the_burst_is_unsatisfiable():
    nbflow.limit("api", rate="4/s", burst=2)
    with pytest.raises(Unsatisfiable, match="burst 2"):
        acquire("api", 3)
    with pytest.raises(Unsatisfiable, match="burst 2"):
        check_demands({"api": 2.5})
    check_demands({"api": 2})  # a rate-only limit is a known limit
    t0 = time.monotonic()
    acquire("api", 2).release()
    assert time.monotonic() - t0 < 0.15
    assert status("api").next_start == pytest.approx(0.25, abs=0.1)  # two tokens spent: the next is 1 T away
    acquire("api", 2, timeout=5).release()  # two more: due when both fit the burst again (0.5 s after the first)
    assert time.monotonic() - t0 >= 0.5 - 1e-3


def test_capacity_and_rate_together():
    nbflow.limit("api", 2, rate="10/s", burst=2)
    assert (status("api").capacity, status("api").rate) == (2, "10/s")
    first = [acquire("api"), acquire("api")]
    with pytest.raises(LimitTimeout, match="capacity 2, in use 2"):
        acquire("api", timeout=0.3)  # no slot: a timeout, and no token taken for it
    assert status("api").next_start == pytest.approx(0.1, abs=0.1)
    for h in first:
        h.release()
    t0 = time.monotonic()
    acquire("api").release()  # a slot is free; its token is due 0.1 s after the second
    assert time.monotonic() - t0 < 0.1 + SLACK
    assert_nothing_held(os.environ["NBFLOW_LIMITS_DIR"])


def test_a_timeout_before_the_due_time_fails_at_once_and_takes_nothing():
    nbflow.limit("api", 1, rate="1/s")
    acquire("api").release()
    before = status("api").next_start
    t0 = time.monotonic()
    with pytest.raises(LimitTimeout, match=r"rate 1/s, next start in"):
        acquire("api", timeout=0.5)
    assert time.monotonic() - t0 < 0.25  # not slept through
    assert status("api").used == 0  # the slot taken for it was released
    assert status("api").next_start <= before  # and no token was reserved
    with pytest.raises(LimitTimeout):
        acquire_all({"api": 1}, timeout=0)
    t0 = time.monotonic()
    acquire("api", timeout=2.0).release()  # due about 1 s after the first take
    assert time.monotonic() - t0 < 1.0 + SLACK


def test_removing_forgets_capacity_and_rate_and_resetting_keeps_the_spacing():
    nbflow.limit("api", 3, rate="2/s")
    acquire("api").release()
    nbflow.limit("api", rate="1000/s")  # a raise: the reservation already made still spaces the next start
    assert status("api").capacity is None
    assert status("api").next_start <= 0.01  # the one start reserved is re-spaced at the new rate
    nbflow.remove_limit("api")
    nbflow.limit("slow", rate="1/min")
    acquire("slow").release()
    with pytest.raises(LimitTimeout):
        acquire("slow", timeout=1)
    nbflow.remove_limit("slow")
    assert limits() == []
    with pytest.raises(NoSuchLimit):
        acquire("slow")
    with pytest.raises(NoSuchLimit, match="nothing to remove"):
        nbflow.remove_limit("slow")
    nbflow.limit("slow", rate="1/min")  # set again: removing forgot the start reserved above, it starts afresh
    assert status("slow").next_start == 0
    acquire("slow", timeout=0).release()
    assert status("slow").next_start > 50
    nbflow.limit("slow", rate="2/min")  # a raise re-spaces the start reserved at the new interval
    assert 25 < status("slow").next_start <= 30


def test_a_rate_on_a_detected_limit_keeps_its_capacity():
    nbflow.limit("CPU", rate="1000/s")
    cpu = status("CPU")
    assert cpu.capacity == os.cpu_count() and cpu.rate == "1000/s"
    acquire("CPU").release()


def test_async_takes_sleep_on_the_loop_and_a_cancelled_waiter_gives_its_slot_and_token_back():
    nbflow.limit("api", 1, rate="2/s")

    async def main():
        t0 = time.monotonic()
        (await acquire_async("api")).release()
        threads = threading.active_count()
        waiter = asyncio.ensure_future(acquire_async("api"))
        await asyncio.sleep(0.1)
        assert threading.active_count() == threads  # the token's wait is an asyncio.sleep, not a thread
        assert status("api").used == 1  # it holds its slot while it sleeps for its token
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert status("api").used == 0
        assert status("api").next_start < 0.45  # its token was given back (the last reservation)
        async with nbflow.concurrency("api", timeout=5):
            took = time.monotonic() - t0
        assert 0.5 - 1e-3 <= took < 0.5 + SLACK
        with pytest.raises(LimitTimeout):
            await acquire_async("api", timeout=0.1)
        assert status("api").used == 0

    asyncio.run(main())
    assert_nothing_held(os.environ["NBFLOW_LIMITS_DIR"])


def test_a_give_up_during_a_token_wait_is_noticed_within_a_poll_turn():
    nbflow.limit("api", 1, rate="1/min")
    acquire("api").release()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert acquire_all_unless({"api": 1}, stop.is_set) is None
    assert time.monotonic() - t0 < 0.3 + 0.5 + SLACK
    assert status("api").used == 0
    assert status("api").next_start < 60  # given back: the next start is the one after the first, not a second


def test_a_record_from_another_boot_reads_as_empty(limits_dir):
    nbflow.limit("api", rate="1/h")
    path = limits_dir / "api" / "rate"
    data = bytearray(path.read_bytes())
    struct.pack_into("<d", data, 24, time.monotonic() + 3000)  # a start reserved far ahead...
    data[8:24] = b"another boot id!"  # ...on another boot: its clock meant something else
    path.write_bytes(bytes(data))
    t0 = time.monotonic()
    acquire("api", timeout=1).release()
    assert time.monotonic() - t0 < 0.2
    assert status("api").next_start > 3000 - 10  # the next start is spaced from this one


@pytest.mark.parametrize("damage", ["garbage", "short", "empty", "nan", "fifo", "directory"])
def test_a_damaged_rate_record_is_a_limits_dir_error(limits_dir, damage):
    nbflow.limit("api", 1, rate="1/s")
    path = limits_dir / "api" / "rate"
    good = path.read_bytes()
    path.unlink()
    if damage == "garbage":
        path.write_bytes(b"x" * len(good))
    elif damage == "short":
        path.write_bytes(good[:20])
    elif damage == "empty":  # (never a record not written yet: a new one is linked into place whole)
        path.write_bytes(b"")
    elif damage == "nan":
        path.write_bytes(good[:24] + struct.pack("<d", float("nan")) + good[32:])
    elif damage == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    for action in (lambda: acquire("api", timeout=1), limits):
        with pytest.raises(LimitsDirError, match="rate") as info:
            action()
        assert "\n" not in str(info.value)
    assert_nothing_held(str(limits_dir))
    if damage in ("fifo", "directory"):  # not a file: only deleting it repairs it, as the message says
        with pytest.raises(LimitsDirError, match="or delete it"):
            nbflow.limit("api", rate="2/s")
        return
    nbflow.limit("api", 1, rate="1/s")  # setting the rate again writes a whole record over the damaged one
    acquire("api", timeout=1).release()
    assert status("api").rate == "1/s" and status("api").next_start > 0.5
    path.write_bytes(b"x")
    nbflow.remove_limit("api")  # so does removing it
    assert limits() == []


def test_concurrent_threads_never_exceed_the_rate():
    nbflow.limit("api", rate="40/s", burst=2)
    times: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + 1.5

    def hammer():
        while time.monotonic() < end:
            acquire("api").release()
            with lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times.sort()
    worst = max(sum(1 for u in times if t <= u < t + 0.95) for t in times)  # 0.95: as busiest_window (procs)
    assert worst <= 40 + 2
    assert len(times) >= 40  # and it admits at about the rate (1.5 s: 2 + 60, less on a loaded box)


def test_summaries_show_the_rate_a_missing_capacity_and_the_next_start():
    from nbflow.render import render_html, render_text
    from nbflow.snapshot import limits_snapshot

    nbflow.limit("api", rate="1/min", burst=2)
    nbflow.limit("gpu", 2)
    for _ in range(2):
        acquire("api").release()
    snap = {"engine": "local", "time": time.time(), "limits": limits_snapshot()}
    snap["limits"].append({**snap["limits"][0], "name": "shared", "scope": "cluster", "next_start": 0.0})
    lines = render_text(snap).splitlines()
    assert lines[3].startswith("  api 0/-, rate 1/min (burst 2), next start in ")  # about 1 min 00 s
    assert lines[4:] == [
        "  gpu 0/2, 0 waiting",
        "  shared (cluster) 0/-, rate 1/min (burst 2), next start now, 0 waiting",
    ]
    assert "<td>api</td><td>0/-</td><td>rate 1/min (burst 2), next start in " in render_html(snap)
