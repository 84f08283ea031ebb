"""Benchmark of ``Future.stop()`` on a running ``processes=True`` task holding ``GPU=1`` (machine limit capacity 1).

1. Its child ignores SIGTERM; ``stop(grace=0.5)``: time from ``stop()`` until this process's own
   ``acquire("GPU")`` returns (the limit is free once the child, killed after the grace, is gone). Target: p99 <= 1 s,
   grace included. The peer, measured in the same run: a bare process holding the limit, SIGTERM then SIGKILL
   0.5 s later by hand (the floor: the grace, the kernel's reaping and the limit's wake-up).
2. Its child exits on SIGTERM: the same figures; the grace must not be waited for (target: p99 < 0.5 s).

Each kind runs as many stops as fit in its time budget, at most ``STOPS``. All limits live in a private temporary
directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import nbflow
from nbflow.machine_limits import acquire

GRACE = 0.5
STOPS = 200
BUDGET = {True: 35.0, False: 10.0}  # seconds of stops: a child that ignores SIGTERM costs the grace each time
PEERS = 20

PEER = """
import signal, sys
from nbflow.machine_limits import acquire
if sys.argv[1] == "deaf":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
held = acquire("GPU")
print("held", flush=True)
while True:
    pass
"""


def hold_gpu(marker: str, deaf: bool) -> None:
    """The task: (in its child) ignore SIGTERM if ``deaf``, say it runs, then loop until stopped."""
    if deaf:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(marker, "w").close()
    while True:
        pass


def stop_to_free(task: nbflow.Task, marker: str, deaf: bool) -> float:
    """Seconds from ``stop()`` of a running task until the GPU limit is free for this process."""
    fut = task.submit(marker, deaf)
    while not os.path.exists(marker):  # the child has its SIGTERM handling in place
        time.sleep(0.001)
    os.unlink(marker)
    t0 = time.monotonic()
    fut.stop(grace=GRACE)
    held = acquire("GPU")  # waits until the stopped task's share is released
    seconds = time.monotonic() - t0
    held.release()
    nbflow.wait([fut], timeout=60)
    assert fut.cancelled(), fut.status
    return seconds


def peer_stop_to_free(deaf: bool) -> float:
    """The same hand-off with a bare process: SIGTERM, SIGKILL after the grace, the limit free."""
    proc = subprocess.Popen([sys.executable, "-c", PEER, "deaf" if deaf else "exits"], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"held\n"
    t0 = time.monotonic()
    proc.terminate()
    killer = threading.Timer(GRACE, proc.kill)
    killer.start()
    held = acquire("GPU")
    seconds = time.monotonic() - t0
    held.release()
    killer.cancel()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    return seconds


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    root = tempfile.mkdtemp(prefix="nbflow-bench-")
    os.environ["NBFLOW_LIMITS_DIR"] = os.path.join(root, "limits")  # inherited by the children and the peers
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # GPU slots without devices: no device list to check them against
    nbflow.limit("GPU", 1)
    nbflow.use("local", workers=1, processes=True)
    task = nbflow.task(hold_gpu, resources={"GPU": 1}, name="hold_gpu")
    marker = os.path.join(root, "running")
    for deaf in (True, False):
        ours: list[float] = []
        end = time.monotonic() + BUDGET[deaf]
        while len(ours) < STOPS and time.monotonic() < end:
            ours.append(stop_to_free(task, marker, deaf))
        peer = [peer_stop_to_free(deaf) for _ in range(PEERS)]
        p50, p99, peer50 = percentile(ours, 0.5), percentile(ours, 0.99), percentile(peer, 0.5)
        ms = 1000
        if deaf:
            what = f"stop, child ignores SIGTERM, grace {GRACE:g} s ({len(ours)} stops)"
            target = f"target p99 <= 1 s: {verdict(p99 <= 1.0)}"
            past = f" (minus the grace: p50 {(p50 - GRACE) * ms:.1f} ms, p99 {(p99 - GRACE) * ms:.1f} ms)"
        else:
            what = f"stop, child exits on SIGTERM ({len(ours)} stops)"
            target = f"target p99 < {GRACE:g} s (no grace wait): {verdict(p99 < GRACE)}"
            past = ""
        print(
            f"{what}: stop() -> GPU free p50 {p50 * ms:.1f} ms, p99 {p99 * ms:.1f} ms{past}; "
            f"bare process p50 {peer50 * ms:.1f} ms ({PEERS} runs), ratio {p50 / peer50:.3f}; {target}",
            flush=True,
        )
    nbflow.use("local")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
