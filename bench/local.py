"""Benchmark of the local engine, with its peers measured in the same run.

1. The seed pipeline (download 0.1 s → infer 0.3 s holding 1 of GPU=2 → save 0.05 s), 20 images in one process:
   makespan ÷ ideal, ideal = 0.1 + n·0.3/2 + 0.05.
2. The same 20 images as 5 separate processes × 4 images sharing the machine limit GPU=2; the processes start
   together (they are spawned, import nbflow, then wait on one event); makespan from the event to the last save.
3. No-op tasks per second through the local engine next to ``ThreadPoolExecutor`` with as many workers.
4. ``import nbflow`` in a fresh interpreter (best of several), and whether it imported ``distributed``.

All limits live in a private temporary directory.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

import nbflow
from nbflow.demo import DOWNLOAD, GPUS, INFER, SAVE, ideal

WORKERS = 8  # the local engine's default
NOOPS = 20_000


@nbflow.task
def download(i):
    time.sleep(DOWNLOAD)
    return i


@nbflow.task(resources={"GPU": 1})
def infer(i):
    time.sleep(INFER)
    return i


@nbflow.task
def save(i):
    time.sleep(SAVE)
    return i


@nbflow.task
def noop():
    return None


def pipeline(first: int, images: int) -> None:
    outs = [save.submit(infer.submit(download.submit(i))) for i in range(first, first + images)]
    nbflow.gather(outs)


def one_process(images: int) -> float:
    nbflow.use("local", workers=WORKERS)
    pipeline(0, 2)  # warm-up: threads and slot files exist, as in a notebook that already ran a cell
    t0 = time.monotonic()
    pipeline(0, images)
    return time.monotonic() - t0


def _member(index: int, images: int, ready, go, out) -> None:
    """One of the separate processes: set up, tell the parent, wait for the common start, run, report the end."""
    nbflow.use("local", workers=WORKERS)
    noop.submit().result()  # the pool's first thread is up
    ready.put(index)
    go.wait()
    pipeline(index * images, images)
    out.put(time.monotonic())  # CLOCK_MONOTONIC is one clock for every process on Linux


def separate_processes(procs: int, images: int) -> float:
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    members = [ctx.Process(target=_member, args=(i, images, ready, go, out)) for i in range(procs)]
    for p in members:
        p.start()
    for _ in members:
        ready.get(timeout=120)
    t0 = time.monotonic()
    go.set()
    last = max(out.get(timeout=120) for _ in members)
    for p in members:
        p.join()
    return last - t0


def tasks_per_second(submit_all, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        submit_all()
        best = min(best, time.perf_counter() - t0)
    return NOOPS / best


def nbflow_noops() -> None:
    nbflow.wait([noop.submit() for _ in range(NOOPS)])


def import_time(repeats: int = 7) -> tuple[float, bool]:
    code = "import sys, time; t = time.perf_counter(); import nbflow; "
    code += "print(time.perf_counter() - t, 'distributed' in sys.modules)"
    best, leaked = float("inf"), False
    for _ in range(repeats):
        seconds, dist = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        best, leaked = min(best, float(seconds)), leaked or dist == "True"
    return best, leaked


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    root = tempfile.mkdtemp(prefix="nbflow-bench-")
    os.environ["NBFLOW_LIMITS_DIR"] = root  # inherited by the spawned processes
    nbflow.limit("GPU", GPUS)

    span = one_process(20)
    ratio = span / ideal(20)
    print(
        f"seed pipeline, 20 images, 1 process: makespan {span:.3f} s, ideal {ideal(20):.3f} s, "
        f"ratio {ratio:.3f}; target <= 1.03: {verdict(ratio <= 1.03)}"
    )

    span = separate_processes(5, 4)
    ratio = span / ideal(20)
    print(
        f"seed pipeline, 5 processes x 4 images, one GPU=2 limit: makespan {span:.3f} s, ideal {ideal(20):.3f} s, "
        f"ratio {ratio:.3f}; target <= 1.05: {verdict(ratio <= 1.05)}"
    )

    nbflow.use("local", workers=WORKERS)
    ours = tasks_per_second(nbflow_noops)
    with cf.ThreadPoolExecutor(WORKERS) as pool:
        peer = tasks_per_second(lambda: cf.wait([pool.submit(noop.fn) for _ in range(NOOPS)]))
    print(
        f"no-op tasks, {WORKERS} workers: nbflow {ours / 1000:.1f} k/s, ThreadPoolExecutor {peer / 1000:.1f} k/s, "
        f"ratio {ours / peer:.2f}; target >= 0.2 (and >= 20 k/s): {verdict(ours >= 0.2 * peer and ours >= 20_000)}"
    )
    nbflow.use("local")

    seconds, leaked = import_time()
    print(
        f"import nbflow: {seconds * 1000:.1f} ms (best of 7, fresh interpreter), distributed imported: {leaked}; "
        f"target <= 100 ms without distributed: {verdict(seconds <= 0.1 and not leaked)}"
    )
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
