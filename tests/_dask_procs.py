"""Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 for the Dask engine tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import distributed
from limits_helpers import wait_for

DASK = str(Path(sys.executable).with_name("dask"))
START_TIMEOUT = 90.0  # seconds; generous, the machine is shared


def wait_until(predicate, timeout: float = START_TIMEOUT, what: str = "condition"):
    """``wait_for`` at a gentler pace, for process start-up and cluster membership."""
    return wait_for(predicate, timeout, what, interval=0.05)


class DaskProcs:
    """A scheduler (``scheduler_args`` added to its command line) and workers as subprocesses; ``close()`` kills
    whatever is left."""

    def __init__(
        self, directory: Path, env: dict[str, str] | None = None, scheduler_args: list[str] | None = None
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        # The scheduler and workers import this test's module-level functions by name, as with any Dask code.
        path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        self.procs: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}
        scheduler_file = self.dir / "scheduler.json"
        self._start(
            "scheduler",
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
                *(scheduler_args or []),
            ],
        )
        self.address = wait_until(lambda: _address_in(scheduler_file), what="the scheduler to start")
        self.client = distributed.Client(self.address, timeout=START_TIMEOUT, set_as_default=False)

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**self.env, **(env or {})}
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def worker(
        self, name: str, resources: str | None = None, nthreads: int = 2, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start ``dask worker --no-nanny`` (so SIGKILL hits the worker itself), with ``env`` added to its
        environment, and wait until it joined."""
        argv = [
            DASK,
            "worker",
            self.address,
            "--name",
            name,
            "--nthreads",
            str(nthreads),
            "--no-dashboard",
            "--host",
            "127.0.0.1",
            "--no-nanny",
        ]
        if resources:
            argv += ["--resources", resources]
        proc = self._start(name, argv, env)
        self.workers[name] = proc
        wait_until(lambda: name in self.worker_names(), what=f"worker {name} to join")
        return proc

    def worker_names(self) -> set[str]:
        return {str(w["name"]) for w in self.client.scheduler_info(n_workers=-1)["workers"].values()}

    def stop_worker(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=START_TIMEOUT)
        wait_until(lambda: name not in self.worker_names(), what=f"worker {name} to leave")

    def close(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=START_TIMEOUT)


def _address_in(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["address"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_client(address: str, code: str, *args: object) -> subprocess.Popen:
    """``code`` in a new Python process (a second Dask client, as another kernel would be), with ``sys.argv[1:]`` the
    scheduler's address and ``args``; the tests' modules importable, its output piped."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", code, address, *map(str, args)],
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
