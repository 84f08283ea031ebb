"""What printing costs in a task cell next to an ordinary cell, in a real kernel: target <= 1.5x.

A real ipykernel (started with jupyter_client) runs 1,200,000 one-character ``print(".", end="")`` as an
ordinary cell, then as a task cell on the default local engine (submitted, then ``%nbflow wait``), timed by
this client from sending the cell to the kernel going idle with everything shown. The ordinary cells run
first, before nbflow has wrapped ``sys.stdout``, so the peer is what the kernel costs without nbflow; one more
ordinary cell afterwards shows what that wrapper adds. Alongside, in this process: the task cell's capture of
2,000,000 such prints next to ``contextlib.redirect_stdout`` into a ``StringIO``.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time

from jupyter_client.manager import start_new_kernel

from nbflow.magics.capture import capture

KERNEL_DOTS = 1_200_000
RAW_DOTS = 2_000_000
ROUNDS = 3
TARGET = 1.5
DOTS = f"for _ in range({KERNEL_DOTS}):\n    print('.', end='')\n"


def run(client, code: str) -> float:
    """Execute ``code``; seconds until the kernel is idle again (all its output sent)."""
    start = time.perf_counter()
    reply = client.execute_interactive(code, output_hook=lambda msg: None, timeout=600)
    assert reply["content"]["status"] == "ok", reply["content"]
    return time.perf_counter() - start


def task_cell(client) -> float:
    start = time.perf_counter()
    run(client, "%%nbflow task --name dots\n" + DOTS)
    run(client, "%nbflow wait")  # returns once the cell's output is drawn under it
    return time.perf_counter() - start


def dots(n: int) -> None:
    for _ in range(n):
        print(".", end="")


def raw() -> tuple[float, float]:
    """Seconds for ``RAW_DOTS`` prints into a task cell's capture, and into a ``StringIO``."""
    start = time.perf_counter()
    with capture() as (out, _, _):
        dots(RAW_DOTS)
    captured = time.perf_counter() - start
    assert len(out.text()) == RAW_DOTS
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        dots(RAW_DOTS)
    return captured, time.perf_counter() - start


def main() -> None:
    captured, plain = raw()
    print(
        f"capture of {RAW_DOTS} one-character prints vs a StringIO: ratio {captured / plain:.2f}  "
        f"[capture {captured:.3f} s, StringIO {plain:.3f} s; in this process, no kernel]"
    )
    limits_dir = tempfile.TemporaryDirectory(prefix="nbflow-bench-limits-")  # leave the machine's limits alone
    manager, client = start_new_kernel(kernel_name="python3", env={**os.environ, "NBFLOW_LIMITS_DIR": limits_dir.name})
    try:
        run(client, "%load_ext nbflow")
        ordinary = [run(client, DOTS) for _ in range(ROUNDS)]
        task = [task_cell(client) for _ in range(ROUNDS)]
        wrapped = run(client, DOTS)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        limits_dir.cleanup()
    ratio = statistics.median(task) / statistics.median(ordinary)
    print(
        f"task cell vs ordinary cell, {KERNEL_DOTS} one-character prints in a kernel: ratio {ratio:.3f} "
        f"(target <= {TARGET}) {'PASS' if ratio <= TARGET else 'MISS'}  [median of {ROUNDS}: task cell "
        f"{statistics.median(task):.3f} s, ordinary cell {statistics.median(ordinary):.3f} s; an ordinary cell "
        f"once nbflow wraps sys.stdout: {wrapped:.3f} s]"
    )


if __name__ == "__main__":
    main()
