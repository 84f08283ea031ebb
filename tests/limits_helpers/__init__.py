"""Helpers for the limits tests: a worker script run in real processes, and state checks."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

WORKER = os.path.join(os.path.dirname(__file__), "worker.py")


def start(*args: object, **kwargs) -> subprocess.Popen:
    """Run ``worker.py args...`` in a new Python process (inheriting ``NBFLOW_LIMITS_DIR``)."""
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], stdout=subprocess.PIPE, text=True, **kwargs)


def expect_line(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """The rest of the worker's next output line, which must start with ``prefix`` (within ``timeout``)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)  # a thread, not select(): the text buffer may already hold the line
    assert lines, f"no {prefix!r} line from the worker within {timeout} s"
    line = lines[0].strip()
    assert line.startswith(prefix), f"expected {prefix!r} from the worker, got {line!r}"
    return line[len(prefix) :].strip()


class Worker:
    """A ``worker.py`` process whose output lines are collected by a thread, so they can be polled."""

    def __init__(self, *args: object) -> None:
        self.proc = start(*args, stdin=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.strip())
        self.lines.put("")  # end of output

    def line(self, timeout: float = 60.0) -> str:
        """The next line (``""`` once the process closed its output)."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from worker {self.proc.args[2:]} within {timeout} s") from None

    def poll(self) -> str | None:
        """The next line if one came, else None."""
        try:
            return self.lines.get_nowait()
        except queue.Empty:
            return None

    def send(self, text: str = "") -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)
        try:
            self.proc.stdin.close()
        except OSError:  # a pipe the dead process no longer reads
            pass


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.005):
    """Poll ``predicate`` until it returns something truthy (generous timeout: the machine is loaded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def gpu_used() -> float:
    """How much of the ``GPU`` limit is held right now, by anyone."""
    import nbflow

    return sum(lim.used for lim in nbflow.limits() if lim.name == "GPU")


def locked(path: str) -> bool:
    """Whether some open file description holds a flock on ``path`` (tested without taking it for long)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def assert_nothing_held(root: str) -> None:
    """No limit in ``root`` has a visible slot or waiting file, and no gate is locked."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        base = os.path.join(root, name)
        if not os.path.isdir(base):
            continue
        for sub in ("slots", "waiting"):
            visible = [f for f in os.listdir(os.path.join(base, sub)) if not f.startswith(".")]
            assert visible == [], f"{name}/{sub} still has {visible}"
        gate = os.path.join(base, "gate")
        assert not os.path.exists(gate) or not locked(gate), f"the gate of {name} is still locked"


def context_fields(ctx) -> dict:
    """What a task's ``nbflow.current()`` says, as plain data a task can return from any process."""
    return {
        "key": ctx.key,
        "name": ctx.name,
        "attempt": ctx.attempt,
        "worker": ctx.worker,
        "resources": dict(ctx.resources),
        "gpus": ctx.gpus,
        "ids": ctx.cuda_visible_devices,
        "env": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
