"""Connecting to an existing scheduler address is bounded by ``connect_timeout`` whatever listens there.

Real processes on 127.0.0.1: a ``dask scheduler`` frozen with SIGSTOP, a listener that accepts and never
answers, ``python -m http.server``, a listener sending random bytes, and a port nobody listens on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from _dask_procs import DASK, _address_in, free_port, wait_until

import nbflow
from nbflow.engines.dask_cluster import _client_for
from nbflow.errors import NbflowError, SchedulerUnreachable

TIMEOUT = 3.0
SLACK = 30.0  # the error must come within TIMEOUT + SLACK seconds: generous for a loaded machine, short of a hang


def connections_to(port: int) -> list:
    """This process's TCP connections to ``port`` that are still established."""
    return [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


def probe_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("nbflow-probe-scheduler", "IO loop")]


def expect_unreachable(address: str, port: int) -> SchedulerUnreachable:
    """``_client_for`` fails with a one-line ``SchedulerUnreachable`` in time and leaves nothing behind."""
    started = time.monotonic()
    with pytest.raises(SchedulerUnreachable) as info:
        _client_for(address, TIMEOUT)
    took = time.monotonic() - started
    assert took <= TIMEOUT + SLACK, f"took {took:.1f} s"
    message = str(info.value)
    assert isinstance(info.value, NbflowError) and "\n" not in message and address in message
    assert "check" in message
    wait_until(lambda: connections_to(port) == [], timeout=30, what="the probe's connection to be closed")
    assert probe_threads() == []
    return info.value


class Listener:
    """A TCP listener in a thread: ``send`` is what it writes to each connection (None: never answers).

    ``closed`` is set when a client connection it accepted was closed by the client.
    """

    def __init__(self, send: bytes | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.send = send
        self.accepted = threading.Event()
        self.closed = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        try:
            while True:
                if self.send is not None:
                    conn.sendall(self.send)
                    conn.settimeout(0.05)
                try:
                    if conn.recv(65536) == b"":
                        break
                except TimeoutError:
                    continue
        except OSError:
            pass
        self.closed.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def listener() -> Iterator[type[Listener]]:
    made: list[Listener] = []

    def make(send: bytes | None = None) -> Listener:
        made.append(Listener(send))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_listener_that_never_answers(listener):
    silent = listener(None)
    address = f"tcp://127.0.0.1:{silent.port}"
    error = expect_unreachable(address, silent.port)
    assert f"no Dask scheduler answered at {address} within {TIMEOUT:g} s" in str(error)
    assert "accepted the connection but never answered" in str(error)
    assert silent.accepted.is_set()
    assert silent.closed.wait(30), "the probe left its connection open"


def test_listener_sending_random_bytes(listener):
    noisy = listener(os.urandom(65536))
    error = expect_unreachable(f"tcp://127.0.0.1:{noisy.port}", noisy.port)
    assert "did not answer as a Dask scheduler" in str(error)
    assert noisy.closed.wait(30), "the probe left its connection open"


def test_http_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _accepts(port), what="http.server to listen")
        error = expect_unreachable(f"tcp://127.0.0.1:{port}", port)
        assert "accepted the connection" in str(error)  # it waits for a request line: never answers
    finally:
        server.kill()
        server.wait()


def test_nobody_listening_is_retried_until_the_timeout():
    port = free_port()
    started = time.monotonic()
    error = expect_unreachable(f"tcp://127.0.0.1:{port}", port)
    assert time.monotonic() - started >= TIMEOUT - 0.5  # a scheduler still starting up gets the whole timeout
    assert "ConnectionRefusedError" in str(error)


def test_frozen_scheduler_through_the_public_path(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "scheduler.log", "wb")  # noqa: SIM115 - closed right after the start
    proc = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", scheduler_file],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        address = wait_until(lambda: _address_in(Path(scheduler_file)), what="the scheduler to start")
        port = int(address.rsplit(":", 1)[1])
        client = _client_for(address, 60)  # while it runs, the probe lets the client through
        assert client.scheduler_info()["type"] == "Scheduler"
        client.close()
        wait_until(lambda: connections_to(port) == [], timeout=30, what="the healthy client to disconnect")
        os.kill(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(SchedulerUnreachable) as info:
            nbflow.use("dask", address=address, connect_timeout=TIMEOUT)
        assert time.monotonic() - started <= TIMEOUT + SLACK
        assert "no Dask scheduler answered" in str(info.value) and "\n" not in str(info.value)
        wait_until(lambda: connections_to(port) == [], timeout=30, what="the probe's connection to be closed")
        assert "nbflow-probe-scheduler" not in probe_threads()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=60)


def test_malformed_address():
    with pytest.raises(SchedulerUnreachable, match="not a usable Dask scheduler address"):
        _client_for("tcp://127.0.0.1:notaport", TIMEOUT)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
