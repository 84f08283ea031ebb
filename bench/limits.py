"""Benchmark of machine-wide limits, with filelock measured as the peer in the same run.

1. Uncontended ``acquire`` + ``release``: median of many, next to ``filelock.FileLock`` acquire + release.
   A rate-limited take (a rate-only limit, rate high enough that no take waits) is measured next to a bare
   ``flock`` round-trip (lock + unlock of one open descriptor): the floor of any take of the shared record.
2. Cross-process hand-off: process A releases, process B (already waiting) returns from ``acquire``;
   ``time.monotonic_ns()`` is one clock for all processes on Linux. The peer is ``FileLock`` (50 ms poll).
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time

HOLD = 0.002  # seconds A keeps the limit after B asked for it, so that B is really waiting


def per_op_us(op, n: int) -> float:
    """Median microseconds of ``op()`` over ``n`` timed calls (after a warm-up)."""
    for _ in range(200):
        op()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        op()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def nbflow_lock(name: str):
    """(acquire, release) of ``name`` (capacity 1) through nbflow's limits."""
    from nbflow.machine_limits import acquire

    held = []
    return (lambda: held.append(acquire(name))), (lambda: held.pop().release())


def filelock_lock(path: str):
    from filelock import FileLock

    lock = FileLock(path)
    return lock.acquire, lock.release


def _holder(kind: str, arg: str, n: int, to_waiter, from_waiter, out) -> None:
    take, give = make(kind, arg)
    releases = []
    for _ in range(n):
        take()
        to_waiter.send(1)
        from_waiter.recv()  # B is about to call acquire
        time.sleep(HOLD)
        releases.append(time.monotonic_ns())
        give()
        from_waiter.recv()  # B got it and gave it back
    out.send(releases)


def _waiter(kind: str, arg: str, n: int, from_holder, to_holder, out) -> None:
    take, give = make(kind, arg)
    grants = []
    for _ in range(n):
        from_holder.recv()
        to_holder.send(1)
        take()
        grants.append(time.monotonic_ns())
        give()
        to_holder.send(1)
    out.send(grants)


def make(kind: str, arg: str):
    return nbflow_lock(arg) if kind == "nbflow" else filelock_lock(arg)


def handoff_ms(kind: str, arg: str, n: int) -> list[float]:
    """Latencies (ms) from A's release to B's return from acquire, in two separate processes."""
    ctx = mp.get_context("spawn")  # fresh interpreters, as two notebooks would be
    a_to_b, b_from_a = ctx.Pipe()
    b_to_a, a_from_b = ctx.Pipe()
    out_a, res_a = ctx.Pipe()
    out_b, res_b = ctx.Pipe()
    procs = [
        ctx.Process(target=_holder, args=(kind, arg, n, a_to_b, a_from_b, out_a)),
        ctx.Process(target=_waiter, args=(kind, arg, n, b_from_a, b_to_a, out_b)),
    ]
    for p in procs:
        p.start()
    releases, grants = res_a.recv(), res_b.recv()
    for p in procs:
        p.join()
    return [(g - r) / 1e6 for r, g in zip(releases, grants, strict=True)]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    root = tempfile.mkdtemp(prefix="nbflow-bench-")  # on the same filesystem as the default directory
    os.environ["NBFLOW_LIMITS_DIR"] = os.path.join(root, "limits")
    from nbflow.machine_limits import acquire, limit

    limit("bench", 1)
    ours = per_op_us(lambda: acquire("bench").release(), 5000)
    take, give = filelock_lock(os.path.join(root, "peer.lock"))
    peer = per_op_us(lambda: (take(), give()), 5000)
    print(
        f"uncontended acquire+release: nbflow {ours:.1f} us, filelock.FileLock {peer:.1f} us "
        f"(ratio {ours / peer:.2f}); target <= 100 us: {verdict(ours <= 100)}"
    )

    from nbflow.limit_scopes import limit as set_limit

    set_limit("rated", rate="1e9/s")  # never waits: the cost of a take itself
    rated = per_op_us(lambda: acquire("rated").release(), 5000)
    fd = os.open(os.path.join(root, "flock.peer"), os.O_RDWR | os.O_CREAT, 0o600)
    bare = per_op_us(lambda: (fcntl.flock(fd, fcntl.LOCK_EX), fcntl.flock(fd, fcntl.LOCK_UN)), 5000)
    os.close(fd)
    print(
        f"uncontended rate-limited take: p50 {rated:.1f} us (target <= 20 us): {verdict(rated <= 20)}; "
        f"bare flock round-trip {bare:.1f} us (ratio {rated / bare:.1f}), capacity acquire+release {ours:.1f} us "
        f"(ratio {rated / ours:.2f})"
    )

    lat = sorted(handoff_ms("nbflow", "bench", 300))
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    peer_lat = sorted(handoff_ms("filelock", os.path.join(root, "peer.lock"), 60))
    peer50 = peer_lat[len(peer_lat) // 2]
    print(
        f"cross-process hand-off ({len(lat)} samples): p50 {p50:.3f} ms, p99 {p99:.3f} ms "
        f"(filelock.FileLock p50 {peer50:.1f} ms, ratio {p50 / peer50:.3f}); "
        f"targets p50 <= 2 ms: {verdict(p50 <= 2)}, p99 <= 20 ms: {verdict(p99 <= 20)}"
    )
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
