"""The panel's cost per tick in a real kernel: ≤ 5 ms kernel CPU, one comm message per tick.

A real ipykernel (started with jupyter_client) runs the panel's tick — take the snapshot, compare it with the
last one, send it — against a 64-worker × 3-resource snapshot source, and times it with ``time.thread_time``
(CPU of the ticking thread, what a tick takes from the kernel; the kernel's IOPub thread then only writes the
bytes). This client counts the ``comm_msg`` messages that reach it on IOPub: one per changed tick, none when
only the snapshot's time moved. The real local engine's ``occupancy()`` (with limits held) is timed alongside.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import textwrap

from jupyter_client.manager import start_new_kernel

TICKS = 200
TARGET_MS = 5.0
WORKERS = 64

KERNEL_CODE = textwrap.dedent(
    """
    import json, statistics, time
    import nbflow
    from nbflow.panel import Monitor, _Poller

    def synthetic(tick):
        now = time.time()
        return {
            "engine": "dask", "time": now,
            "workers": [
                {"name": f"tcp://10.0.{i // 250}.{i % 250}:40000", "host": f"10.0.{i // 250}.{i % 250}",
                 "resources": {"GPU": {"total": 2.0, "used": float((i + tick) % 3)},
                               "CPU": {"total": 32.0, "used": float((i * tick) % 33)},
                               "MEMORY": {"total": 256e9, "used": 1e9 * ((i + tick) % 256)}},
                 "running": (i + tick) % 4, "waiting": i % 2, "queued": tick % 5}
                for i in range(WORKERS)
            ],
            "tasks": {"pending": 10, "waiting": 64, "running": 128, "finished": tick, "error": 0, "cancelled": 0},
            "limits": [],
        }

    class Source:
        def __init__(self, changing):
            self.tick, self.changing = 0, changing
        def __call__(self):
            self.tick += self.changing
            return synthetic(self.tick)

    def bench(changing):
        panel = Monitor(interval=3600, source=Source(changing))  # the poller stays idle: ticks run here
        times = []
        for _ in range(TICKS):
            start = time.thread_time()
            _Poller._tick([panel])
            times.append((time.thread_time() - start) * 1000)
        panel.close()
        return times
    """
)

LOCAL_CODE = textwrap.dedent(
    """
    nbflow.use("local", workers=4)
    for name, capacity in (("GPU", 2), ("db", 4), ("MEMORY", 64e9)):
        nbflow.limit(name, capacity)
    held = [nbflow.concurrency("GPU", 1), nbflow.concurrency("GPU", 1), nbflow.concurrency("db", 3)]
    for h in held:
        h.__enter__()
    local = []
    for _ in range(TICKS):
        start = time.thread_time()
        nbflow.occupancy()
        local.append((time.thread_time() - start) * 1000)
    for h in held:
        h.__exit__(None, None, None)
    """
)


def run(client, code: str) -> tuple[str, int]:
    """Execute ``code`` in the kernel; return its stdout and the number of widget updates sent meanwhile."""
    out, updates = [], 0

    def on_iopub(msg):
        nonlocal updates
        if msg["msg_type"] == "comm_msg" and msg["content"]["data"].get("method") == "update":
            updates += 1
        elif msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise RuntimeError("\n".join(msg["content"]["traceback"]))

    reply = client.execute_interactive(code, output_hook=on_iopub, timeout=300)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out), updates


def line(what: str, value: float, unit: str, target: float, detail: str) -> None:
    ratio = value / target
    verdict = "PASS" if ratio <= 1 else "MISS"
    print(f"{what}: {value:.3f} {unit} (target <= {target:g} {unit}) ratio {ratio:.3f} {verdict}  [{detail}]")


def main() -> None:
    limits_dir = tempfile.TemporaryDirectory(prefix="nbflow-bench-limits-")  # leave the machine's limits alone
    env = {**os.environ, "NBFLOW_LIMITS_DIR": limits_dir.name}
    manager, client = start_new_kernel(kernel_name="python3", env=env)
    try:
        run(client, f"WORKERS, TICKS = {WORKERS}, {TICKS}\n" + KERNEL_CODE)
        out, changed = run(client, "print(json.dumps(bench(changing=1)))")
        times = json.loads(out)
        out, unchanged = run(client, "print(json.dumps(bench(changing=0)))")
        still = json.loads(out)
        out, _ = run(client, LOCAL_CODE + "\nprint(json.dumps(local))")
        local = json.loads(out)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        limits_dir.cleanup()

    size = f"{WORKERS} workers x 3 resources"
    median, p95 = statistics.median(times), sorted(times)[int(0.95 * len(times))]
    line(
        "panel tick, changed snapshot",
        median,
        "ms",
        TARGET_MS,
        f"{size}; kernel CPU median of {TICKS}, p95 {p95:.3f} ms",
    )
    line("panel tick, only the time moved", statistics.median(still), "ms", TARGET_MS, f"{size}; compare, no send")
    line(
        "comm messages per changed tick",
        changed / TICKS,
        "msg",
        1,
        f"{changed} updates seen on IOPub for {TICKS} ticks",
    )
    print(
        f"comm messages per unchanged tick: {unchanged / TICKS:.3f} (expected 0) "
        f"{'PASS' if unchanged == 0 else 'MISS'}  [{unchanged} updates for {TICKS} ticks]"
    )
    line(
        "local engine occupancy()",
        statistics.median(local),
        "ms",
        TARGET_MS,
        f"3 limits, 3 holders; kernel CPU median of {len(local)}; a tick = this + the panel tick",
    )
    total = statistics.median(local) + median
    line("snapshot + tick, local engine", total, "ms", TARGET_MS, "occupancy() median + changed-tick median")


if __name__ == "__main__":
    main()
