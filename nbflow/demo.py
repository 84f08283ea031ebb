"""``make demo``: the seed image pipeline on the local engine, and a table of what ran where and when.

download (0.1 s) → infer (0.3 s, holds 1 of the machine's 2 ``GPU``) → save (0.05 s), for 12 images.
Downloads and saves overlap freely; at most 2 inferences run at once, so the ideal makespan is
0.1 + 12 · 0.3 / 2 + 0.05 = 1.95 s. Run it with ``python -m nbflow.demo``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

import nbflow

IMAGES = 12
DOWNLOAD, INFER, SAVE, GPUS = 0.1, 0.3, 0.05, 2  # the seed pipeline, also used by bench/


def ideal(images: int) -> float:
    """The seed pipeline's best possible makespan: one download, the inferences two at a time, one save."""
    return DOWNLOAD + images * INFER / GPUS + SAVE


runs: list[tuple[str, str, float, float]] = []  # (task, where, start, end), appended by the tasks
gpu_now = gpu_peak = 0
lock = threading.Lock()


def record(name: str, seconds: float) -> None:
    """Sleep like real work would, and note which thread of which process did it, and when."""
    start = time.perf_counter()
    time.sleep(seconds)
    where = f"{threading.current_thread().name} / pid {os.getpid()}"
    with lock:
        runs.append((name, where, start, time.perf_counter()))


@nbflow.task
def download(i: int) -> str:
    record(f"download {i}", DOWNLOAD)
    return f"image{i}.jpg"


@nbflow.task(resources={"GPU": 1})
def infer(image: str) -> str:
    global gpu_now, gpu_peak
    with lock:  # the occupancy is measured here, inside the tasks, not inferred from the timings
        gpu_now += 1
        gpu_peak = max(gpu_peak, gpu_now)
    try:
        record(f"infer {image[5:-4]}", INFER)
    finally:
        with lock:
            gpu_now -= 1
    return image.replace(".jpg", ".pred")


@nbflow.task
def save(pred: str) -> str:
    record(f"save {pred[5:-5]}", SAVE)
    return pred


def run() -> None:
    nbflow.use("local", workers=8)
    nbflow.limit("GPU", GPUS)

    t0 = time.perf_counter()
    outs = [save.submit(infer.submit(download.submit(i))) for i in range(IMAGES)]
    nbflow.wait(outs)
    makespan = time.perf_counter() - t0
    assert [f.result() for f in outs] == [f"image{i}.pred" for i in range(IMAGES)]
    nbflow.use("local")  # closes the engine's threads

    print(f"{'task':<12} {'worker / process':<26} {'start':>6} {'end':>6}")
    for name, where, start, end in sorted(runs, key=lambda r: r[2]):
        print(f"{name:<12} {where:<26} {start - t0:6.2f} {end - t0:6.2f}")
    best = ideal(IMAGES)
    print(f"\npeak GPU occupancy: {gpu_peak} of {GPUS} (measured inside the infer tasks)")
    print(f"makespan: {makespan:.2f} s; ideal: {best:.2f} s; ratio {makespan / best:.3f}")


def main() -> None:
    """Run in a private limits directory (unless ``NBFLOW_LIMITS_DIR`` is set): other runs are not disturbed."""
    if os.environ.get("NBFLOW_LIMITS_DIR"):
        run()
        return
    with tempfile.TemporaryDirectory(prefix="nbflow-demo-") as tmp:
        os.environ["NBFLOW_LIMITS_DIR"] = tmp
        run()


if __name__ == "__main__":
    main()
