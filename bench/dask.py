"""Dask engine benchmarks, each a ratio against a peer measured in the same run on the same cluster.

1. nbflow vs raw ``client.submit`` for the same 2,000 no-op tasks (submit all, wait for all): time ratio.
2. ``task.map`` vs ``client.map`` of the same function, 10,000 and 100,000 no-op tasks: time ratio.
3. The seed pipeline (download 0.1 s -> infer 0.3 s with GPU=1 on a GPU=2 worker -> save 0.05 s) on Dask:
   makespan / ideal, ideal = 0.1 + n * 0.3 / 2 + 0.05, next to the same pipeline through raw ``client.submit``.
4. ``nbflow.gather`` of a ``task.map`` vs ``client.gather`` of a ``client.map``, 10,000 and 100,000 no-op tasks,
   on a cluster of 2 workers x 2 threads: time ratio (submit, wait, and fetch every value into this process).
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

# This file is named dask.py: drop its folder from the path so ``import dask`` finds the real package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import distributed  # noqa: E402

import nbflow  # noqa: E402
from nbflow.demo import DOWNLOAD, INFER, SAVE, ideal  # noqa: E402

N_NOOP = 2000
ROUNDS = 7
MAP_SIZES = {10_000: 3, 100_000: 2}  # tasks: rounds (a 100,000-task round takes over a minute on 2 cores)
GATHER_SIZES = {10_000: 3, 100_000: 2}  # the same for gather
N_IMAGES = 20


def noop(x):
    return x


def settle(client: distributed.Client) -> None:
    """Start each round on an idle cluster, so no round pays for releasing the previous round's keys.

    Keys still held after 30 s mean a leaked future: say so instead of waiting forever.
    """
    gc.collect()
    deadline = time.monotonic() + 30
    while held := client.run_on_scheduler(_scheduler_tasks):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scheduler still holds {held} keys 30 s after a round: a future leaked")
        time.sleep(0.01)


def _scheduler_tasks(dask_scheduler) -> int:
    return len(dask_scheduler.tasks)


def raw_round(client: distributed.Client) -> float:
    settle(client)
    start = time.perf_counter()
    futures = [client.submit(noop, i, pure=False) for i in range(N_NOOP)]
    distributed.wait(futures)
    elapsed = time.perf_counter() - start
    del futures
    return elapsed


def nbflow_round(noop_task: nbflow.Task) -> float:
    settle(nbflow.engine().client)
    start = time.perf_counter()
    futures = [noop_task.submit(i) for i in range(N_NOOP)]
    nbflow.wait(futures)
    elapsed = time.perf_counter() - start
    assert all(f.status == "finished" for f in futures)
    del futures
    return elapsed


def raw_map_round(client: distributed.Client, n: int, gather: bool = False) -> float:
    """``client.map`` of ``n`` no-op tasks, then ``distributed.wait`` (or ``client.gather`` of the values)."""
    settle(client)
    start = time.perf_counter()
    futures = client.map(noop, range(n), pure=False)
    values = client.gather(futures) if gather else distributed.wait(futures)
    elapsed = time.perf_counter() - start
    assert not gather or values == list(range(n))
    del futures
    return elapsed


def nbflow_map_round(noop_task: nbflow.Task, n: int, gather: bool = False) -> float:
    """``task.map`` of ``n`` no-op tasks, then ``nbflow.wait`` (or ``nbflow.gather`` of the values)."""
    settle(nbflow.engine().client)
    start = time.perf_counter()
    futures = noop_task.map(range(n))
    values = nbflow.gather(futures) if gather else nbflow.wait(futures)
    elapsed = time.perf_counter() - start
    assert values == list(range(n)) if gather else all(f.status == "finished" for f in futures)
    del futures
    return elapsed


def compare(what: str, ours, raw, rounds: int) -> None:
    """Median time of ``ours()`` vs ``raw()``, alternating which goes first so drift in load hits both alike."""
    raw_times, our_times = [], []
    for i in range(rounds):
        if i % 2:
            our_times.append(ours())
            raw_times.append(raw())
        else:
            raw_times.append(raw())
            our_times.append(ours())
    raw_s, ours_s = statistics.median(raw_times), statistics.median(our_times)
    peer = what.rsplit(" vs ", 1)[1].split(",")[0]
    report(what, ours_s / raw_s, 1.10, f"median of {rounds}: nbflow {ours_s:.3f} s, {peer} {raw_s:.3f} s")


def download(i):
    time.sleep(DOWNLOAD)
    return i


def infer(image):
    time.sleep(INFER)
    return image


def save(pred):
    time.sleep(SAVE)
    return pred


def seed_makespan(n: int) -> float:
    dl, inf, sv = nbflow.task(download), nbflow.task(infer, resources={"GPU": 1}), nbflow.task(save)
    start = time.perf_counter()
    futures = [sv.submit(inf.submit(dl.submit(i))) for i in range(n)]
    assert nbflow.gather(futures) == list(range(n))
    return time.perf_counter() - start


def raw_seed_makespan(client: distributed.Client, n: int) -> float:
    """The peer: the same pipeline with plain ``client.submit`` and Dask resources."""
    start = time.perf_counter()
    futures = []
    for i in range(n):
        image = client.submit(download, i, pure=False)
        pred = client.submit(infer, image, resources={"GPU": 1}, pure=False)
        futures.append(client.submit(save, pred, pure=False))
    assert client.gather(futures) == list(range(n))
    return time.perf_counter() - start


def report(what: str, ratio: float, target: float, detail: str) -> None:
    verdict = "PASS" if ratio <= target else "MISS"
    print(f"{what}: ratio {ratio:.3f} (target <= {target:.2f}) {verdict}  [{detail}]", flush=True)


def gather_rows(noop_task: nbflow.Task, sizes: dict[int, int]) -> None:
    """``nbflow.gather`` vs ``client.gather`` on a cluster of its own, 2 workers x 2 threads."""
    client = nbflow.use("dask", n_workers=2, threads_per_worker=2).client
    raw_map_round(client, 1000, True), nbflow_map_round(noop_task, 1000, True)  # warm up
    for n, rounds in sizes.items():
        compare(
            f"nbflow.gather on Dask vs client.gather, {n} no-op tasks",
            lambda n=n: nbflow_map_round(noop_task, n, gather=True),
            lambda n=n: raw_map_round(client, n, gather=True),
            rounds,
        )


def main() -> None:
    engine = nbflow.use("dask", n_workers=1, threads_per_worker=N_IMAGES + 4, resources={"GPU": 2})
    client = engine.client
    noop_task = nbflow.task(noop)
    raw_round(client), nbflow_round(noop_task)  # warm up: imports, pickling caches, connections
    compare(
        f"nbflow on Dask vs client.submit, {N_NOOP} no-op tasks",
        lambda: nbflow_round(noop_task),
        lambda: raw_round(client),
        ROUNDS,
    )
    for n, rounds in MAP_SIZES.items():
        compare(
            f"task.map on Dask vs client.map, {n} no-op tasks",
            lambda n=n: nbflow_map_round(noop_task, n),
            lambda n=n: raw_map_round(client, n),
            rounds,
        )

    seed_makespan(2), raw_seed_makespan(client, 2)  # warm up
    best_possible = ideal(N_IMAGES)
    spans, raw_spans = [], []
    for _ in range(3):
        spans.append(seed_makespan(N_IMAGES))
        raw_spans.append(raw_seed_makespan(client, N_IMAGES))
    best, raw_best = statistics.median(spans), statistics.median(raw_spans)
    report(
        f"seed pipeline on Dask, {N_IMAGES} images, GPU=2",
        best / best_possible,
        1.05,
        f"median makespan {best:.3f} s of {len(spans)}, ideal {best_possible:.3f} s; raw client.submit with resources: "
        f"{raw_best:.3f} s, ratio {raw_best / best_possible:.3f}",
    )
    gather_rows(noop_task, GATHER_SIZES)
    nbflow.engine().close()


if __name__ == "__main__":
    main()
