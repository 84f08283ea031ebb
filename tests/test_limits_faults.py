"""Limits under faults, with real processes: a lowered capacity, special files and damaged limit directories,
waiters killed half-way through queueing. Every failure is a one-line ``LimitsDirError`` naming the path and
the fix, never a hang, a busy loop or an over-admission."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from limits_helpers import Worker, assert_nothing_held, expect_line, locked, start, wait_for

from nbflow.errors import LimitsDirError
from nbflow.machine_limits import acquire, concurrency, limit, limits

HANG = 30.0  # seconds after which a call counts as hanging (the machine is loaded: be generous)


def status(name: str):
    return next(s for s in limits() if s.name == name)


def has_reader(fifo) -> bool:
    """Whether some process has the FIFO open for reading (a head opens it before it sleeps)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader
        return False
    return True


# --- lowering a capacity ------------------------------------------------------------------------------------


def test_lowering_capacity_admits_nobody_while_use_is_at_the_new_capacity(limits_dir):
    limit("GPU", 2)
    a = acquire("GPU", 1, task="A")
    big = Worker("serve", "GPU", 2)  # C: queued for 2, the head
    small = None
    try:
        assert big.line() == "waiting"
        wait_for(lambda: status("GPU").waiting == 1, what="C to queue")
        small = Worker("serve", "GPU", 1)  # B: queued for 1 behind C
        assert small.line() == "waiting"
        wait_for(lambda: status("GPU").waiting == 2, what="B to queue")
        limit("GPU", 1)
        assert big.line().startswith("error Unsatisfiable limit 'GPU' has capacity 1, so 2 can never be granted")
        assert big.proc.wait(timeout=HANG) == 0  # its descriptor of the wake FIFO is closed
        # B is now the head: it either sleeps (it opened the wake FIFO: decided not to grant) or was granted.
        wait_for(lambda: has_reader(limits_dir / "GPU" / "wake") or not small.lines.empty(), what="B to decide")
        assert small.poll() is None, "B was granted while A held 1 of the new capacity 1"
        assert status("GPU").used == 1 and status("GPU").waiting == 1
        released = time.time()
        a.release()
        granted = float(small.line().split()[1])  # the holding's since: taken under the gate
        assert granted > released
        assert [h.pid for h in status("GPU").holders] == [small.proc.pid]
        small.send()
        assert small.line() == "released"
    finally:
        a.release()
        big.kill()
        if small is not None:
            small.kill()
    assert_nothing_held(str(limits_dir))


def test_holders_above_a_lowered_capacity_finish_normally(limits_dir):
    limit("GPU", 3)
    held = [acquire("GPU", 1) for _ in range(3)]
    limit("GPU", 1)
    assert status("GPU").used == 3 and status("GPU").capacity == 1
    for h in held:
        h.release()
    with acquire("GPU", 1, timeout=HANG):
        assert status("GPU").used == 1


# --- special files ---------------------------------------------------------------------------------------------

PROBE = """
import sys, time
from nbflow.errors import NbflowError
from nbflow.machine_limits import concurrency, limits
for call in (limits, lambda: concurrency("GPU", timeout=2).__enter__()):
    started = time.monotonic()
    try:
        call()
        print("ok", flush=True)
    except NbflowError as exc:
        print(type(exc).__name__, f"{time.monotonic() - started:.2f}", exc, flush=True)
"""


def run_probe() -> list[str]:
    """``limits()`` and ``concurrency("GPU", timeout=2)`` in a fresh process (a hang cannot stall the test)."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=HANG * 2)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def cli_status() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbflow", "status"], capture_output=True, text=True, timeout=HANG)


@pytest.mark.parametrize("where", ["slots/junk", "slots/1.0_0_1_x", "slots/.spare-1_x", "waiting/junk", "gate"])
def test_fifo_in_a_limit_is_refused_not_opened(limits_dir, where):
    limit("GPU", 1)
    hog = start("hold", "GPU", 1)  # so that concurrency() has to wait, and looks at the entries
    try:
        expect_line(hog, "ready")
        path = limits_dir / "GPU" / where
        if path.exists():
            path.unlink()
        os.mkfifo(path)
        for line in run_probe():
            assert line.startswith("LimitsDirError"), line
            seconds, message = line.split(" ", 2)[1:]
            assert float(seconds) < HANG
            assert f"{path} is a FIFO" in message and "remove it" in message
        done = cli_status()
        assert done.returncode == 2 and f"{path} is a FIFO" in done.stderr and done.stderr.count("\n") == 1
    finally:
        hog.kill()
        hog.wait()
    path.unlink()  # the fix the message names
    with concurrency("GPU", timeout=HANG):
        assert status("GPU").used == 1
    assert_nothing_held(str(limits_dir))


def test_fifo_as_the_capacity_file(limits_dir):
    limit("GPU", 1)
    path = limits_dir / "GPU" / "capacity"
    path.unlink()
    os.mkfifo(path)
    for line in run_probe():
        assert line.startswith("LimitsDirError") and f"corrupted limits state file {path}" in line, line
        assert "a FIFO" in line


# --- damaged limit directories -----------------------------------------------------------------------------------


def test_deleting_slots_while_held_is_refused_not_over_admitted(limits_dir):
    limit("GPU", 1)
    holder = start("hold", "GPU", 1)
    try:
        expect_line(holder, "ready")
        slots = limits_dir / "GPU" / "slots"
        for entry in os.listdir(slots):
            os.unlink(slots / entry)
        slots.rmdir()
        for call in (lambda: acquire("GPU", timeout=2), limits):  # this process set the limit up before
            with pytest.raises(LimitsDirError, match=f"{slots} was deleted.*`mkdir -m 700 {slots}`") as info:
                call()
            assert "\n" not in str(info.value)
        lines = run_probe()  # a fresh process would otherwise recreate slots/ and be granted at once
        assert all(line.startswith("LimitsDirError") and f"{slots} was deleted" in line for line in lines), lines
        assert not slots.exists()
    finally:
        holder.kill()
        holder.wait()
    slots.mkdir(mode=0o700)  # the fix the message names, once nobody holds the limit
    with acquire("GPU", timeout=HANG) as held:
        assert held.slots == (0,) and status("GPU").used == 1
    assert_nothing_held(str(limits_dir))


def test_gate_or_slot_that_is_a_directory(limits_dir):
    limit("GPU", 1)
    gate = limits_dir / "GPU" / "gate"
    gate.mkdir()
    for call in (lambda: acquire("GPU", timeout=2), limits):
        with pytest.raises(LimitsDirError, match=f"limits state {gate} is a directory.*remove it"):
            call()
    gate.rmdir()
    slot = limits_dir / "GPU" / "slots" / "1.0_0_1_x"
    slot.mkdir()
    for call in (lambda: acquire("GPU", timeout=2), limits):
        with pytest.raises(LimitsDirError, match=f"limits state {slot} is a directory.*remove it"):
            call()
    slot.rmdir()
    with acquire("GPU", timeout=HANG):
        pass
    assert_nothing_held(str(limits_dir))


def chattr(flag: str, path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="root ignores chmod: an immutable directory needs chattr as root")
def test_immutable_slots_directory(limits_dir):
    limit("GPU", 2)
    slots = limits_dir / "GPU" / "slots"
    held = acquire("GPU", 1)
    chattr("+i", slots)
    try:
        with pytest.raises(LimitsDirError, match=f"cannot use {slots}/.*make {slots} writable again") as info:
            acquire("GPU", 1, timeout=2)
        assert "\n" not in str(info.value)
        with pytest.raises(LimitsDirError, match=f"make {slots} writable again"):
            held.release()
        assert held.released
        assert not any(locked(str(slots / f)) for f in os.listdir(slots))  # nothing is left held
    finally:
        chattr("-i", slots)
    with acquire("GPU", 2, timeout=HANG):  # the stale file of the failed release is reaped
        assert status("GPU").used == 2
    assert_nothing_held(str(limits_dir))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
@pytest.mark.parametrize("part", ["", "slots", "waiting"])
def test_foreign_owned_world_writable_parts_are_refused(limits_dir, part):
    limit("GPU", 1)
    path = limits_dir / "GPU" / part if part else limits_dir / "GPU"
    os.chown(path, 65534, 65534)
    path.chmod(0o777)
    lines = run_probe()
    message = f"limits directory {str(path).rstrip('/')} is owned by uid 65534 and writable by others"
    assert all(line.startswith("LimitsDirError") and message in line for line in lines), lines
    with pytest.raises(LimitsDirError, match=message):
        acquire("GPU", timeout=2)  # this process set the limit up before the change
    path.chmod(0o755)  # another user's but not writable by others: accepted
    with acquire("GPU", timeout=HANG):
        pass


def test_wake_turned_regular_file_does_not_spin(limits_dir):
    limit("GPU", 1)
    wake = limits_dir / "GPU" / "wake"
    with acquire("GPU"):
        wake.unlink()
        wake.write_bytes(b"")
        waiter = start("cpu", "GPU", 1, 3)
        try:
            expect_line(waiter, "waiting")
            outcome, cpu = expect_line(waiter, "").split()
        finally:
            waiter.kill()
            waiter.wait()
    assert outcome == "LimitTimeout"
    assert float(cpu) < 1.0, f"the 3 s wait used {cpu} s of CPU"  # it spun before: ~all of it
    assert stat.S_ISFIFO(os.lstat(wake).st_mode)  # the head made it a FIFO again
    assert_nothing_held(str(limits_dir))


def test_wake_fifo_repaired_still_wakes_the_head(limits_dir):
    limit("GPU", 1)
    wake = limits_dir / "GPU" / "wake"
    hog = acquire("GPU")
    wake.unlink()
    wake.write_bytes(b"")
    waiter = Worker("serve", "GPU", 1)
    try:
        assert waiter.line() == "waiting"
        wait_for(lambda: stat.S_ISFIFO(os.lstat(wake).st_mode) and has_reader(wake), what="the head to repair wake")
        hog.release()
        assert waiter.line().startswith("granted")
        waiter.send()
        assert waiter.line() == "released"
    finally:
        hog.release()
        waiter.kill()
    assert_nothing_held(str(limits_dir))


# --- waiters killed while queueing -------------------------------------------------------------------------------


def test_tmp_file_of_a_waiter_killed_while_queueing_is_reaped(limits_dir):
    limit("GPU", 1)
    hog = acquire("GPU")
    stalled = start("stall-publish", "GPU", 1)
    try:
        tmp = expect_line(stalled, "tmp")
        assert os.path.basename(tmp).startswith(".tmp-") and locked(tmp)
    finally:
        os.kill(stalled.pid, signal.SIGKILL)
        stalled.wait()
    waiting = limits_dir / "GPU" / "waiting"
    assert os.path.exists(tmp)
    assert status("GPU").waiting == 0
    assert os.listdir(waiting) == []  # limits() reaped it
    hog.release()
    # a waiter killed the same way is also reaped by the head of the queue, without limits()
    hog = acquire("GPU")
    stalled = start("stall-publish", "GPU", 1)
    try:
        tmp = expect_line(stalled, "tmp")
    finally:
        os.kill(stalled.pid, signal.SIGKILL)
        stalled.wait()
    waiter = Worker("serve", "GPU", 1, 0.5)
    try:
        assert waiter.line() == "waiting"
        assert waiter.line().startswith("error LimitTimeout")
    finally:
        waiter.kill()
    assert not os.path.exists(tmp)
    hog.release()
    assert_nothing_held(str(limits_dir))


def test_a_waiting_file_being_created_is_not_reaped_but_a_dead_or_old_one_is(limits_dir):
    """A waiter creates its ``.tmp-`` file, then locks it, then writes it: a reaper that deleted it in between
    made the waiter fail (``removed three times while being created``) on a busy machine."""
    limit("GPU", 1)
    status("GPU")  # creates the limit's directory
    waiting = limits_dir / "GPU" / "waiting"
    being_created = waiting / ".tmp-live"
    being_created.touch()  # created, not yet locked nor written
    dead = waiting / ".tmp-dead"
    dead.write_bytes(b'{"task": "killed after writing"}')  # written, so it was locked: its holder is gone
    abandoned = waiting / ".tmp-old"
    abandoned.touch()
    old = time.time() - 3600
    os.utime(abandoned, (old, old))
    assert status("GPU").waiting == 0
    assert sorted(os.listdir(waiting)) == [".tmp-live"]
