"""Benchmark of machine-wide limits, with filelock measured as the peer in the same run.

1. Uncontended ``acquire`` + ``release``: median of many, next to ``filelock.FileLock`` acquire + release.
   A rate-limited take (a rate-only limit, rate high enough that no take waits) is measured next to a bare
   ``flock`` round-trip (lock + unlock of one open descriptor): the floor of any take of the shared record.
2. Cross-process hand-off: process A releases, process B (already waiting) returns from ``acquire``;
   ``time.monotonic_ns()`` is one clock for all processes on Linux. The peer is ``FileLock`` (50 ms poll).
3. Cluster limits (kept by the Dask scheduler), on a ``LocalCluster`` of worker processes, with
   ``distributed.Semaphore`` as the peer: the acquire + release round trip from a task on a worker, capacity 1
   (median of many); and a killed holder: a worker holding the limit is SIGKILLed while a task on another worker
   waits, seconds until the waiter has it (the peer frees a dead holder's lease only once it times out, tens of
   seconds: bounded here).
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid

# bench/ holds a dask.py: drop this folder from the path so ``import dask`` finds the real package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

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


ROUNDS = 300
PEER_BOUND = 60.0  # seconds the peer's recovery is waited for at most


def _nbflow_round_trips(name: str, n: int) -> list[float]:
    """On a worker: ``n`` acquire + release of cluster limit ``name``, microseconds each, by the path tasks take."""
    from distributed import get_worker

    from nbflow.engines.dask_worker_cluster_limits import acquire_blocking

    worker, samples = get_worker(), []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        leases, _ = acquire_blocking(worker, {name: 1.0}, f"bench-{uuid.uuid4().hex}", "bench", lambda: False)
        leases[0].release()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def _peer_round_trips(name: str, n: int) -> list[float]:
    from distributed import Semaphore

    sem, samples = Semaphore(max_leases=1, name=name), []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        sem.acquire()
        sem.release()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def round_trip_us(client, n: int = ROUNDS) -> tuple[float, float]:
    """Median acquire + release (µs) of nbflow's cluster limit and of ``distributed.Semaphore``, warm."""
    import nbflow

    nbflow.limit("bench-rt", 1, scope="cluster")
    nbflow_us = statistics.median(client.submit(_nbflow_round_trips, "bench-rt", n, pure=False).result()[n // 10 :])
    peer_us = statistics.median(client.submit(_peer_round_trips, "bench-rt-peer", n, pure=False).result()[n // 10 :])
    return nbflow_us, peer_us


def _nbflow_hold(name: str) -> None:
    from distributed import get_worker

    from nbflow.engines.dask_worker_cluster_limits import acquire_blocking

    acquire_blocking(get_worker(), {name: 1.0}, f"hold-{uuid.uuid4().hex}", "holder", lambda: False)
    time.sleep(3600)


def _nbflow_wait(name: str) -> float:
    from distributed import get_worker

    from nbflow.engines.dask_worker_cluster_limits import acquire_blocking

    leases, _ = acquire_blocking(get_worker(), {name: 1.0}, f"wait-{uuid.uuid4().hex}", "waiter", lambda: False)
    leases[0].release()
    return time.time()


def _peer_hold(name: str) -> None:
    from distributed import Semaphore

    Semaphore(max_leases=1, name=name).acquire()
    time.sleep(3600)


def _peer_wait(name: str) -> float | None:
    from distributed import Semaphore

    sem = Semaphore(max_leases=1, name=name)
    if not sem.acquire(timeout=PEER_BOUND + 30):
        return None
    sem.release()
    return time.time()


def _holds(client, kind: str, name: str) -> bool:
    """Whether the limit (or the peer's semaphore) ``name`` is taken, read on the scheduler."""
    if kind == "nbflow":
        found = client.sync(client.scheduler.nbflow_limits_status, names=[name])
        return bool(found) and found[0]["used"] == 1
    return bool(client.run_on_scheduler(_peer_leases, name))


def _peer_leases(name: str, dask_scheduler=None) -> int:
    return len(dask_scheduler.extensions["semaphores"].leases[name])


def recovery_s(client, kind: str) -> float | None:
    """Seconds from SIGKILL of a worker holding the limit to a waiting task on another worker having it (``None``:
    not within ``PEER_BOUND``)."""
    import nbflow

    name = f"bench-kill-{kind}-{uuid.uuid4().hex[:6]}"
    if kind == "nbflow":
        nbflow.limit(name, 1, scope="cluster")
    hold, wait = (_nbflow_hold, _nbflow_wait) if kind == "nbflow" else (_peer_hold, _peer_wait)
    victim, other = sorted(client.scheduler_info()["workers"])[:2]
    client.submit(hold, name, workers=[victim], pure=False)
    deadline = time.monotonic() + 60
    while not _holds(client, kind, name):
        assert time.monotonic() < deadline, "the holder never took the limit"
        time.sleep(0.02)
    waiter = client.submit(wait, name, workers=[other], pure=False)
    time.sleep(0.5)  # (the waiter's request reaches the scheduler)
    pid = client.run(os.getpid, workers=[victim])[victim]
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    try:
        got = waiter.result(timeout=PEER_BOUND)
    except TimeoutError:
        return None
    return None if got is None else got - killed


def cluster_rows() -> None:
    """Rows 3 and 4: cluster limits against ``distributed.Semaphore``."""
    import distributed

    import nbflow

    with distributed.LocalCluster(n_workers=3, threads_per_worker=2, processes=True, dashboard_address=None) as lc:
        with distributed.Client(lc) as client:
            nbflow.use("dask", client=client)
            nbflow_us, peer_us = round_trip_us(client)
            print(
                f"cluster limit acquire+release p50: nbflow {nbflow_us:.0f} us, distributed.Semaphore {peer_us:.0f} us,"
                f" ratio {nbflow_us / peer_us:.2f} (target <= 1.0): {verdict(nbflow_us <= peer_us)}"
            )
            ours = recovery_s(client, "nbflow")
            client.wait_for_workers(3, timeout=60)  # (the nanny restarts the killed worker)
            peer = recovery_s(client, "peer")
            mine = f"{ours:.2f} s" if ours is not None else f"not within {PEER_BOUND:.0f} s"
            shown = f"{peer:.1f} s" if peer is not None else f"not within {PEER_BOUND:.0f} s"
            print(
                f"killed holder recovery: nbflow {mine}, distributed.Semaphore {shown};"
                f" target <= 2 s: {verdict(ours is not None and ours <= 2)}"
            )
            nbflow.use("local")


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
    cluster_rows()
    return 0


if __name__ == "__main__":
    sys.exit(main())
