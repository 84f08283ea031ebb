"""Limits in one process: set/list/remove, holders and waiters, slots, detection, threads, timeouts, async."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import pytest
from limits_helpers import assert_nothing_held, locked, wait_for

import nbflow
from nbflow.errors import LimitTimeout, NoSuchLimit, Unsatisfiable
from nbflow.machine_limits import Holding, acquire, acquire_all, concurrency, limit, limits, remove_limit


def status(name: str):
    return next(s for s in limits() if s.name == name)


def test_set_list_remove_and_persist(limits_dir):
    assert limits() == []
    nbflow.limit("GPU", 2)
    limit("gpu:host-1", 0.5)
    assert [(s.name, s.capacity, s.used, s.holders, s.waiting) for s in nbflow.limits()] == [
        ("GPU", 2.0, 0.0, [], 0),
        ("gpu:host-1", 0.5, 0.0, [], 0),
    ]
    assert (limits_dir / "GPU" / "capacity").read_text().strip() == "2.0"
    limit("GPU", 3)  # changing it replaces the file atomically
    assert status("GPU").capacity == 3
    assert [f for f in os.listdir(limits_dir / "GPU") if f.startswith(".")] == []  # no temporary file left
    remove_limit("gpu:host-1")
    assert [s.name for s in limits()] == ["GPU"]
    with pytest.raises(NoSuchLimit, match="nothing to remove"):
        remove_limit("gpu:host-1")


def test_holders_introspection_and_waiting_count(limits_dir):
    limit("L", 2)
    before = time.time()
    with acquire("L", 1.5, task="infer") as held:
        assert isinstance(held, Holding) and held.name == "L" and held.amount == 1.5 and held.slots == (0, 1)
        [holder] = status("L").holders
        assert (holder.pid, holder.host, holder.task, holder.amount) == (os.getpid(), os.uname().nodename, "infer", 1.5)
        assert before <= holder.since <= time.time()
        waiters = [threading.Thread(target=lambda: acquire("L", 1, task="w").release()) for _ in range(2)]
        for t in waiters:
            t.start()
        assert wait_for(lambda: status("L").waiting == 2, what="two waiters")
        assert status("L").used == 1.5
    for t in waiters:
        t.join(timeout=30)
    assert status("L").waiting == 0 and status("L").used == 0
    assert_nothing_held(str(limits_dir))


def test_release_is_idempotent_and_context_managers(limits_dir):
    limit("R", 1)
    held = acquire("R")
    held.release()
    held.release()
    assert held.released and status("R").used == 0
    with concurrency("R", occupy=1) as h:
        assert h.amount == 1 and status("R").used == 1
    assert status("R").used == 0


def test_device_slots_are_lowest_free_indices(limits_dir):
    limit("GPU", 3)
    a = acquire("GPU", 1)
    b = acquire("GPU", 2)
    assert (a.slots, b.slots) == ((0,), (1, 2))
    a.release()
    c = acquire("GPU", 1)
    assert c.slots == (0,)
    b.release()
    c.release()


def test_fractions_share_a_device_and_pack_before_whole_amounts_take_theirs(limits_dir):
    limit("GPU", 3)
    halves = [acquire("GPU", 0.5) for _ in range(3)]
    assert [h.slots for h in halves] == [(0,), (0,), (1,)]  # two halves fill device 0, the third starts device 1
    whole = acquire("GPU", 1, timeout=5)
    assert whole.slots == (2,)  # the one device no fraction uses
    quarter = acquire("GPU", 0.25, timeout=5)
    assert quarter.slots == (1,)  # packs beside the half on device 1
    for held in [*halves, whole, quarter]:
        held.release()
    big = acquire("GPU", 1.5, timeout=5)
    assert big.slots == (0, 1)  # more than one, not whole: devices of its own
    big.release()


def test_float_amounts_use_an_epsilon(limits_dir):
    limit("E", 0.3)
    with acquire("E", 0.1), acquire("E", 0.2, timeout=5):  # 0.1 + 0.2 = 0.30000000000000004
        assert status("E").used == pytest.approx(0.3)


def test_detected_capacities(limits_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with acquire("CPU", 1), acquire("MEMORY", 1e6), acquire("GPU", 2) as gpu:
        assert gpu.slots == (0, 1)
        caps = {s.name: s.capacity for s in limits()}
    assert caps["CPU"] == os.cpu_count()
    assert caps["MEMORY"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert caps["GPU"] == 2
    assert not (limits_dir / "CPU" / "capacity").exists()  # detected capacities are not written
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(NoSuchLimit):
        acquire("GPU", 1)
    limit("GPU", 1)  # a set capacity wins over detection
    assert acquire("GPU", 1, timeout=5).slots == (0,)


def test_unknown_limit_says_how_to_set_it(limits_dir):
    with pytest.raises(NoSuchLimit, match=r'nbflow\.limit\("unknown", n\).*nbflow limits set unknown n'):
        acquire("unknown")
    assert_nothing_held(str(limits_dir))


def test_threads_never_exceed_capacity(limits_dir):
    limit("TH", 3)
    lock = threading.Lock()
    use = [0.0, 0.0]  # current, peak
    errors = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(150):
                amount = rng.choice([1, 2, 3])
                with acquire("TH", amount):
                    with lock:
                        use[0] += amount
                        use[1] = max(use[1], use[0])
                    time.sleep(rng.random() * 0.0005)
                    with lock:
                        use[0] -= amount
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert use[1] == 3
    assert_nothing_held(str(limits_dir))


def test_timeout_raises_and_leaves_nothing(limits_dir):
    limit("TO", 2)
    with acquire("TO", 2, task="hog"):
        with pytest.raises(LimitTimeout, match=r"limit 'TO': 1 not granted within 0.2 s .*task 'hog' holds 2"):
            acquire("TO", 1, timeout=0.2)
        with pytest.raises(TimeoutError):  # LimitTimeout is a TimeoutError
            acquire("TO", 1, timeout=0)
        assert status("TO").waiting == 0 and len(status("TO").holders) == 1
        assert not locked(str(limits_dir / "TO" / "gate"))
    assert_nothing_held(str(limits_dir))


def test_timeout_while_another_waiter_is_head(limits_dir):
    limit("TQ", 1)
    hog = acquire("TQ")
    head = threading.Thread(target=lambda: acquire("TQ").release())
    head.start()
    wait_for(lambda: status("TQ").waiting == 1, what="the head")
    with pytest.raises(LimitTimeout):
        acquire("TQ", timeout=0.1)  # queued behind the head on the gate
    assert status("TQ").waiting == 1
    hog.release()
    head.join(timeout=30)
    assert_nothing_held(str(limits_dir))


def test_lowering_capacity_below_use(limits_dir):
    limit("LO", 3)
    held = [acquire("LO") for _ in range(3)]
    limit("LO", 1)
    assert status("LO").used == 3  # holders finish
    held.pop().release()
    held.pop().release()
    with pytest.raises(LimitTimeout):
        acquire("LO", timeout=0.2)  # use 1 is not under capacity 1: nobody is admitted
    granted = threading.Event()
    waiter = threading.Thread(target=lambda: (acquire("LO").release(), granted.set()))
    waiter.start()
    wait_for(lambda: status("LO").waiting == 1, what="the waiter")
    assert not granted.is_set()
    held.pop().release()
    waiter.join(timeout=30)
    assert granted.is_set()
    with pytest.raises(Unsatisfiable):
        acquire("LO", 2)
    assert_nothing_held(str(limits_dir))


def test_capacity_dropping_below_a_waiting_request_raises(limits_dir):
    limit("DR", 2)
    hog = acquire("DR", 2)
    errors = []
    waiter = threading.Thread(target=lambda: errors.append(pytest.raises(Unsatisfiable, acquire, "DR", 2)))
    waiter.start()
    wait_for(lambda: status("DR").waiting == 1, what="the waiter")
    limit("DR", 1)  # wakes the head, which re-checks and gives up rather than wait forever
    waiter.join(timeout=30)
    assert len(errors) == 1 and "capacity 1" in str(errors[0].value)
    hog.release()
    assert_nothing_held(str(limits_dir))


def test_removed_limit_fails_waiters(limits_dir):
    limit("RM", 1)
    hog = acquire("RM")
    errors = []
    waiter = threading.Thread(target=lambda: errors.append(pytest.raises(NoSuchLimit, acquire, "RM")))
    waiter.start()
    wait_for(lambda: status("RM").waiting == 1, what="the waiter")
    remove_limit("RM")  # allowed while held: the holder keeps its share
    waiter.join(timeout=30)
    assert len(errors) == 1
    assert not hog.released
    hog.release()
    assert_nothing_held(str(limits_dir))


def test_acquire_all_is_all_or_nothing(limits_dir):
    limit("A", 1)
    limit("B", 1)
    held = acquire_all({"B": 1, "A": 1}, task="both")
    assert [h.name for h in held] == ["A", "B"]  # sorted order
    for h in held:
        h.release()
    with pytest.raises(Unsatisfiable):
        acquire_all({"A": 1, "B": 5})
    with pytest.raises(NoSuchLimit):
        acquire_all({"A": 1, "nope": 1})
    b = acquire("B")
    with pytest.raises(LimitTimeout):
        acquire_all({"A": 1, "B": 1}, timeout=0.2)
    assert status("A").used == 0  # A was taken, then given back
    b.release()
    assert_nothing_held(str(limits_dir))


def test_async_with_does_not_block_the_loop(limits_dir):
    limit("AS", 1)

    async def main() -> list[str]:
        events = []
        hog = acquire("AS")

        async def user() -> None:
            async with concurrency("AS", occupy=1) as held:
                events.append(f"granted {held.amount:g}")

        task = asyncio.create_task(user())
        for _ in range(20):  # the loop keeps running while the user waits
            await asyncio.sleep(0.01)
        events.append("loop ticked")
        hog.release()
        await asyncio.wait_for(task, 30)
        return events

    assert asyncio.run(main()) == ["loop ticked", "granted 1"]
    assert_nothing_held(str(limits_dir))


@pytest.mark.parametrize("release_first", [False, True], ids=["cancel-while-waiting", "cancel-at-grant"])
def test_async_cancellation_does_not_leak(limits_dir, release_first):
    limit("AC", 1)

    async def main() -> None:
        hog = acquire("AC")

        async def user() -> None:
            async with concurrency("AC"):
                await asyncio.sleep(3600)

        task = asyncio.create_task(user())
        await asyncio.sleep(0)
        while status("AC").waiting == 0:
            await asyncio.sleep(0.005)
        if release_first:
            hog.release()  # the helper thread may be granted before it sees the cancellation
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hog.release()

    asyncio.run(main())
    wait_for(lambda: status("AC").used == 0 and status("AC").waiting == 0, what="the cancelled wait to end")
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("nbflow-acquire")], what="threads")
    with acquire("AC", timeout=5):
        pass
    assert_nothing_held(str(limits_dir))


def test_async_timeout(limits_dir):
    limit("AT", 1)

    async def main() -> None:
        with acquire("AT"):
            async with concurrency("AT", timeout=0.2):
                raise AssertionError("granted while held")

    with pytest.raises(LimitTimeout):
        asyncio.run(main())
    assert_nothing_held(str(limits_dir))


def test_forked_child_does_not_release_the_parents_share(limits_dir):
    limit("FK", 1)
    held = acquire("FK")
    pid = os.fork()
    if pid == 0:
        held.release()  # in the child the holding is forgotten: this must not free the parent's share
        os._exit(0 if held.released else 1)
    _, code = os.waitpid(pid, 0)
    assert code == 0
    assert status("FK").used == 1 and [h.pid for h in status("FK").holders] == [os.getpid()]
    held.release()
    assert_nothing_held(str(limits_dir))


def test_shared_concurrency_object_releases_each_users_own_holding(limits_dir):
    limit("SH", 2)
    gpu = concurrency("SH", task="shared")

    async def main() -> None:
        got: dict[str, Holding] = {}
        b_inside, a_left = asyncio.Event(), asyncio.Event()

        async def a() -> None:
            async with gpu as held:
                got["a"] = held
                await b_inside.wait()  # B entered after A: A now leaves first
            a_left.set()

        async def b() -> None:
            while "a" not in got:
                await asyncio.sleep(0.001)
            async with gpu as held:
                got["b"] = held
                b_inside.set()
                await a_left.wait()
                assert got["a"].released and not held.released
                assert [h.task for h in status("SH").holders] == ["shared"] and status("SH").used == 1

        await asyncio.wait_for(asyncio.gather(a(), b()), 30)
        assert got["b"].released and got["a"].slots != got["b"].slots

    asyncio.run(main())
    assert_nothing_held(str(limits_dir))
