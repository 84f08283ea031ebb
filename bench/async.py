"""Benchmark of async tasks (``@nbflow.task`` on an ``async def``), each figure next to its peer from the same run.

1. 10,000 async tasks of ``await asyncio.sleep(0.5)`` through the local engine (``task.map``, then
   ``nbflow.gather``), wall time ÷ that of ``asyncio.gather`` of the same 10,000 coroutines on one event loop.
   Target: <= 1.5.
2. Per-task overhead of async no-op tasks ÷ that of sync no-op tasks on the same local engine (threads): submit
   each, then wait for all, best of several rounds. Target: <= 1.5.
3. Dask (LocalCluster, 2 workers × 2 threads): 1,000 async tasks of ``await asyncio.sleep(1)``, wall time ÷ the
   ideal (1 s: they all wait at once, holding no thread). Target: under 5 s.

All limits live in a private temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time

# bench/ holds a dask.py: drop this folder from the path so ``import dask`` finds the real package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import nbflow  # noqa: E402

WORKERS = 8  # the local engine's default
SLEEPERS, NAP = 10_000, 0.5
NOOPS, ROUNDS = 20_000, 3
DASK_SLEEPERS, DASK_NAP = 1_000, 1.0


@nbflow.task
async def nap(seconds: float) -> None:
    await asyncio.sleep(seconds)


@nbflow.task
async def async_noop() -> None:
    return None


@nbflow.task
def sync_noop() -> None:
    return None


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def engine_sleepers() -> float:
    start = time.perf_counter()
    nbflow.gather(nap.map([NAP] * SLEEPERS), timeout=300)
    return time.perf_counter() - start


def plain_gather() -> float:
    async def main() -> None:
        await asyncio.gather(*(nap.fn(NAP) for _ in range(SLEEPERS)))

    start = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - start


def per_task(task: nbflow.Task) -> float:
    """Seconds per task: submit ``NOOPS`` no-op tasks one by one and wait for all; the best of ``ROUNDS``."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        nbflow.wait([task.submit() for _ in range(NOOPS)], timeout=300)
        best = min(best, time.perf_counter() - start)
    return best / NOOPS


def dask_sleepers() -> float:
    nbflow.use("dask", n_workers=2, threads_per_worker=2)
    nbflow.gather(nap.map([0.01] * 8), timeout=300)  # warm-up: the workers are up and have the function
    start = time.perf_counter()
    nbflow.gather(nap.map([DASK_NAP] * DASK_SLEEPERS), timeout=300)
    return time.perf_counter() - start


def main() -> int:
    root = tempfile.mkdtemp(prefix="nbflow-bench-")
    os.environ["NBFLOW_LIMITS_DIR"] = root  # inherited by the Dask workers
    try:
        nbflow.use("local", workers=WORKERS)
        nbflow.gather(nap.map([0.01] * 100))  # warm-up: the engine's event loop runs
        ours, peer = engine_sleepers(), plain_gather()
        ratio = ours / peer
        print(
            f"{SLEEPERS:,} async tasks of asyncio.sleep({NAP:g}), local engine ({WORKERS} workers): {ours:.3f} s;"
            f" asyncio.gather of the same coroutines {peer:.3f} s; ratio {ratio:.2f}; target <= 1.5: "
            f"{verdict(ratio <= 1.5)}"
        )

        per_task(async_noop)  # warm-up
        per_async, per_sync = per_task(async_noop), per_task(sync_noop)
        ratio = per_async / per_sync
        print(
            f"no-op tasks, local threads ({WORKERS} workers), {NOOPS:,} submitted one by one, best of {ROUNDS}: async"
            f" {per_async * 1e6:.1f} us/task, sync {per_sync * 1e6:.1f} us/task; ratio {ratio:.2f}; target <= 1.5: "
            f"{verdict(ratio <= 1.5)}"
        )

        wall = dask_sleepers()
        print(
            f"Dask, 2 workers x 2 threads: {DASK_SLEEPERS:,} async tasks of asyncio.sleep({DASK_NAP:g}): {wall:.3f} s,"
            f" ideal {DASK_NAP:g} s, ratio {wall / DASK_NAP:.2f}; target under 5 s: {verdict(wall < 5.0)}"
        )
    finally:
        nbflow.use("local")  # the Dask engine closes, its cluster with it
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
