"""Limits test worker, run as a separate process: ``worker.py MODE ...``.

log NAME N SEED OUT [AMOUNTS]  acquire NAME N times (random amount from AMOUNTS, default 1,2), hold 0-2 ms;
                               append "t_request t_granted t_released amount" (monotonic ns) lines to OUT
hold NAME AMOUNT [fork]        acquire, optionally fork a child that lives on (prints "child PID"), print
                               "ready", then sleep until killed
wait NAME AMOUNT               acquire, print "granted <monotonic ns>", wait for a line on stdin, release
serve NAME AMOUNT [TIMEOUT]    print "waiting", acquire: print "granted <since>" (the holding's epoch seconds, taken
                               under the gate before its slot file appears) or "error <class> <message>";
                               once granted, release on a line on stdin and print "released"
cpu NAME AMOUNT TIMEOUT        print "waiting", acquire; print "<outcome class> <CPU seconds of the acquisition>"
stall-publish NAME AMOUNT      acquire, but stop inside the waiting-file publication, before its rename:
                               print "tmp <path of the .tmp- file>" and sleep until killed
"""

from __future__ import annotations

import os
import random
import sys
import time

from nbflow.errors import NbflowError
from nbflow.machine_limits import acquire


def log(name: str, n: str, seed: str, out: str, amounts: str = "1,2") -> None:
    rng = random.Random(int(seed))
    choices = [float(a) for a in amounts.split(",")]
    lines = []
    for _ in range(int(n)):
        amount = rng.choice(choices)
        hold = rng.random() * 0.002
        t0 = time.monotonic_ns()
        holding = acquire(name, amount, task=f"log-{seed}")
        t1 = time.monotonic_ns()  # after the grant: the logged interval lies inside the real holding
        time.sleep(hold)
        t2 = time.monotonic_ns()
        holding.release()
        lines.append(f"{t0} {t1} {t2} {amount}\n")
    with open(out, "w") as f:
        f.writelines(lines)


def hold(name: str, amount: str, fork: str = "") -> None:
    acquire(name, float(amount), task="victim")
    if fork:
        child = os.fork()
        if child == 0:  # a DataLoader-style worker: forked without exec, outlives the parent
            time.sleep(120)
            os._exit(0)
        print(f"child {child}", flush=True)
    print("ready", flush=True)
    time.sleep(600)


def wait(name: str, amount: str) -> None:
    print("waiting", flush=True)
    holding = acquire(name, float(amount), task="waiter")
    print(f"granted {time.monotonic_ns()}", flush=True)
    sys.stdin.readline()
    holding.release()


def serve(name: str, amount: str, timeout: str = "") -> None:
    print("waiting", flush=True)
    try:
        holding = acquire(name, float(amount), timeout=float(timeout) if timeout else None, task="serve")
    except NbflowError as exc:
        print(f"error {type(exc).__name__} {exc}", flush=True)
        return
    print(f"granted {holding.since!r}", flush=True)
    sys.stdin.readline()
    holding.release()
    print("released", flush=True)


def cpu(name: str, amount: str, timeout: str) -> None:
    print("waiting", flush=True)
    before = time.process_time()
    try:
        acquire(name, float(amount), timeout=float(timeout), task="cpu").release()
        outcome = "granted"
    except NbflowError as exc:
        outcome = type(exc).__name__
    print(f"{outcome} {time.process_time() - before:.3f}", flush=True)


def stall_publish(name: str, amount: str) -> None:
    rename = os.rename

    def stalling(src, dst, *args, **kwargs):
        if "/waiting/.tmp-" in str(src):
            print(f"tmp {src}", flush=True)
            time.sleep(600)
        return rename(src, dst, *args, **kwargs)

    os.rename = stalling
    acquire(name, float(amount), task="stalled")


if __name__ == "__main__":
    modes = {"log": log, "hold": hold, "wait": wait, "serve": serve, "cpu": cpu, "stall-publish": stall_publish}
    modes[sys.argv[1]](*sys.argv[2:])
