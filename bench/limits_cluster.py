"""Benchmark of cluster limits (kept by the Dask scheduler), with ``distributed.Semaphore`` measured as the peer in
the same run, on a ``LocalCluster`` of worker processes.

1. Acquire + release round trip, from a task on a worker, capacity 1: median of many (nbflow's release goes on the
   worker's stream, so the next acquire may wait for it to arrive: that is counted).
2. Killed holder: a worker holding the limit is SIGKILLed while a task on another worker waits; seconds until the
   waiter has it. The peer frees a dead holder's lease only once it times out (tens of seconds): bounded here.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
import uuid

# bench/dask.py would shadow the dask package (run as a script, or imported by bench/limits.py): drop this folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

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


def main() -> None:
    import distributed

    import nbflow

    with distributed.LocalCluster(n_workers=3, threads_per_worker=2, processes=True, dashboard_address=None) as lc:
        with distributed.Client(lc) as client:
            nbflow.use("dask", client=client)
            nbflow_us, peer_us = round_trip_us(client)
            print(
                f"cluster limit acquire+release p50: nbflow {nbflow_us:.0f} us, distributed.Semaphore {peer_us:.0f} us,"
                f" ratio {nbflow_us / peer_us:.2f} (target <= 1.0)"
            )
            ours = recovery_s(client, "nbflow")
            client.wait_for_workers(3, timeout=60)  # (the nanny restarts the killed worker)
            peer = recovery_s(client, "peer")
            shown = f"{peer:.1f} s" if peer is not None else f"not within {PEER_BOUND:.0f} s"
            print(f"killed holder recovery: nbflow {ours:.2f} s, distributed.Semaphore {shown}")
            nbflow.use("local")


if __name__ == "__main__":
    main()
