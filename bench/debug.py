"""Benchmark of ``nbflow.debug`` on a failed task whose raising frame holds a 100 MiB local.

1. Time to the pdb prompt: from calling ``nbflow.debug(fut, commands=["p len(blob)"])`` until it returns (its output
   goes to a buffer), on local threads (the real frames), local ``processes=True`` (the snapshot of the frames came
   back with the error) and Dask, a LocalCluster with one worker process (the locals wait on the worker and are
   fetched when debugged). Targets: <= 1 s on the local engine, <= 5 s on Dask. Debugging the same failure again is
   shown beside it (on Dask: nothing left to fetch).
2. What failing costs the attempt: submit -> error of the task raising with the 100 MiB local, next to the peer
   measured in the same run, the same task that drops the local before raising (it builds the same bytes): the ratio
   and the difference are what taking the snapshot costs.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

# A script in bench/ has bench/ on its path, where dask.py is a benchmark: drop it so ``import dask`` finds Dask.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import nbflow  # noqa: E402

SIZE = 100 * 2**20
ROUNDS = 7
TARGETS = {"threads": 1.0, "processes=True": 1.0, "Dask, 1 worker": 5.0}


def fails_holding(size: int, keep: bool) -> None:
    """The task: build ``size`` bytes, keep them as the local ``blob`` (or drop them, the peer), then raise."""
    blob = b"\x01" * size
    if not keep:
        blob = b""
    raise ValueError(f"failed holding {len(blob)} bytes")


def quiet_worker_log() -> None:
    """(On the Dask worker) leave out its log of each failed task: the failures here are on purpose."""
    import logging

    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)


def submit_to_error(task: nbflow.Task, keep: bool) -> tuple[float, nbflow.Future]:
    t0 = time.perf_counter()
    fut = task.submit(SIZE, keep)
    nbflow.wait([fut], timeout=300)
    seconds = time.perf_counter() - t0
    assert isinstance(fut.exception(), ValueError), fut.status
    return seconds, fut


def to_prompt(fut: nbflow.Future) -> float:
    """Seconds for ``nbflow.debug`` to reach its prompt and answer ``p len(blob)``."""
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        nbflow.debug(fut, commands=["p len(blob)"])
    seconds = time.perf_counter() - t0
    assert f"(Pdb) p len(blob)\n{SIZE}\n" in out.getvalue(), out.getvalue()[-2000:]
    return seconds


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def measure(label: str) -> None:
    task = nbflow.task(fails_holding, name="fails_holding")
    for keep in (True, False):  # warm-up: a child started, the function unpickled on the worker, the pages touched
        to_prompt(submit_to_error(task, keep)[1]) if keep else submit_to_error(task, keep)
    holding, dropping, first, again = [], [], [], []
    for _ in range(ROUNDS):
        seconds, fut = submit_to_error(task, True)
        holding.append(seconds)
        first.append(to_prompt(fut))
        again.append(to_prompt(fut))
        del fut
        gc.collect()
        dropping.append(submit_to_error(task, False)[0])
    p50, worst, again50 = statistics.median(first), max(first), statistics.median(again)
    target, ms = TARGETS[label], 1000
    print(
        f"debug prompt, {label}, {SIZE // 2**20} MiB local: p50 {p50 * ms:.1f} ms, max {worst * ms:.1f} ms "
        f"({ROUNDS} failures; the same failure again: p50 {again50 * ms:.1f} ms); target <= {target:g} s: "
        f"{verdict(worst <= target)}",
        flush=True,
    )
    ours, peer = statistics.median(holding), statistics.median(dropping)
    print(
        f"failing with a {SIZE // 2**20} MiB local, {label}: submit -> error p50 {ours * ms:.0f} ms, the same task "
        f"dropping it before raising {peer * ms:.0f} ms, ratio {ours / peer:.2f} ({(ours - peer) * ms:+.0f} ms)",
        flush=True,
    )


def main() -> int:
    root = tempfile.mkdtemp(prefix="nbflow-bench-")
    os.environ["NBFLOW_LIMITS_DIR"] = os.path.join(root, "limits")  # inherited by the children and the workers
    try:
        nbflow.use("local", workers=1)
        measure("threads")
        nbflow.use("local", workers=1, processes=True)
        measure("processes=True")
        nbflow.use("dask", n_workers=1, threads_per_worker=2).client.run(quiet_worker_log)
        measure("Dask, 1 worker")
        nbflow.use("local")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
