"""Benchmark of the result cache, with its peer measured in the same run.

1. The seed pipeline (download 0.1 s → infer 0.3 s holding 1 of GPU=2 → save 0.05 s) over 20 images, every
   step ``cache=True``: run once in a fresh process, then re-run in another fresh process. Target: re-run
   makespan ÷ first makespan <= 0.02.
2. The cost of one hit: a cached call of a small function whose result is stored, through nbflow
   (``task(x)``, a direct call) and through ``joblib.Memory`` on the same function and store directory kind.
   Target: nbflow no slower than joblib (ratio <= 1).

The cache and the limits live in a private temporary directory.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

IMAGES = 20
HITS = 2000

PIPELINE = """
import sys, time
import nbflow
from nbflow.demo import DOWNLOAD, INFER, SAVE


@nbflow.task(cache=True)
def download(i):
    time.sleep(DOWNLOAD)
    return f"img{i}"


@nbflow.task(cache=True, resources={"GPU": 1})
def infer(image):
    time.sleep(INFER)
    return image + ":label"


@nbflow.task(cache=True)
def save(label):
    time.sleep(SAVE)
    return label


if __name__ == "__main__":
    nbflow.limit("GPU", 2)
    start = time.perf_counter()
    out = nbflow.gather([save.submit(infer.submit(download.submit(i))) for i in range(int(sys.argv[1]))])
    print(time.perf_counter() - start)
"""


def small(x: int) -> list[int]:
    return [x] * 10


def makespan(script: str, env: dict[str, str]) -> float:
    done = subprocess.run([sys.executable, script, str(IMAGES)], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def per_hit(call, args: list[int]) -> float:
    for x in args:  # store them all
        call(x)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for x in args:
            call(x)
        times.append((time.perf_counter() - start) / len(args))
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nbflow-bench-cache-") as tmp:
        env = {**os.environ, "NBFLOW_CACHE_DIR": f"{tmp}/cache", "NBFLOW_LIMITS_DIR": f"{tmp}/limits"}
        script = f"{tmp}/pipeline.py"
        with open(script, "w") as file:
            file.write(PIPELINE)
        first, again = makespan(script, env), makespan(script, env)
        ratio = again / first
        verdict = "PASS" if ratio <= 0.02 else "MISS"
        print(
            f"seed pipeline re-run from the cache, {IMAGES} images, fresh process: ratio {ratio:.4f} (target <= 0.02) "
            f"{verdict}  [first {first:.3f} s, re-run {again:.4f} s]"
        )

        os.environ["NBFLOW_CACHE_DIR"] = f"{tmp}/hits"
        import joblib

        import nbflow

        ours = per_hit(nbflow.task(small, cache=True), list(range(HITS)))
        theirs = per_hit(joblib.Memory(f"{tmp}/joblib", verbose=0).cache(small), list(range(HITS)))
        ratio = ours / theirs
        verdict = "PASS" if ratio <= 1 else "MISS"
        print(
            f"per-hit overhead vs joblib.Memory, {HITS} stored calls: ratio {ratio:.3f} (target <= 1) {verdict}  "
            f"[nbflow {ours * 1e6:.0f} us, joblib {theirs * 1e6:.0f} us per hit]"
        )


if __name__ == "__main__":
    main()
