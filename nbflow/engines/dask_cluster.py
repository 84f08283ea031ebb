"""Getting a ``distributed.Client``: to a scheduler address, from the caller, or to an embedded LocalCluster."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import distributed

from ..errors import SchedulerUnreachable
from ..specs import parse_resources


def connect(
    address: str | None,
    client: distributed.Client | None,
    n_workers: int | None,
    threads_per_worker: int | None,
    processes: bool | None,
    resources: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    connect_timeout: float,
) -> tuple[distributed.Client, distributed.LocalCluster | None]:
    """The client to use and the cluster this engine started (``None`` when it started none)."""
    if client is not None or address is not None:
        cluster_options = {
            "n_workers": n_workers,
            "threads_per_worker": threads_per_worker,
            "processes": processes,
            "resources": resources,
        }
        given = sorted(k for k, v in cluster_options.items() if v is not None)
        if given:
            raise TypeError(f"{', '.join(given)} only apply to an embedded cluster, not to an existing scheduler")
    if client is not None:
        return client, None
    if address is not None:
        return _client_for(address, connect_timeout), None
    return _embedded(n_workers, threads_per_worker, processes, resources)


def _client_for(address: str, timeout: float) -> distributed.Client:
    """A client of the scheduler at ``address``, else ``SchedulerUnreachable`` within about ``timeout`` seconds.

    ``distributed.Client(timeout=)`` bounds only the TCP connect: a stopped scheduler or a listener that never
    answers hangs in the handshake for a minute, and a listener speaking another protocol fails with raw
    errors. So the address is probed first (connect, handshake, ``identity``) under one deadline.
    """
    deadline = time.monotonic() + timeout
    _probe(address, timeout)
    try:
        return distributed.Client(address, timeout=max(deadline - time.monotonic(), 1.0))
    except OSError as exc:  # it stopped answering between the probe and the client's own connect
        raise _unreachable(address, timeout, _reason(exc)) from None


def _unreachable(address: str, timeout: float, why: str) -> SchedulerUnreachable:
    return SchedulerUnreachable(
        f"no Dask scheduler answered at {address} within {timeout:g} s ({why}): check that `dask scheduler`"
        " runs there, is not stopped or overloaded, and that the address and port are right"
    )


def _reason(exc: BaseException) -> str:
    """The innermost exception's type: distributed wraps ``ConnectionRefusedError`` in ``CommClosedError``."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return type(exc).__name__


class _NotAScheduler(Exception):
    """Something accepted the connection but did not answer a Dask handshake and ``identity``."""


class _Progress:
    """How far the probe got, for the message when the deadline cuts it short."""

    why = "nothing accepted the connection"


def _probe(address: str, timeout: float) -> None:
    """Connect, handshake and ask ``identity`` in a private event loop and thread (the caller may be inside a
    running loop, as in a Jupyter kernel), all under ``timeout``; the comm is aborted whatever happens."""
    outcome: list[BaseException | None] = []
    progress = _Progress()

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(_identity(address, progress), timeout))
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="nbflow-probe-scheduler", daemon=True)
    thread.start()
    thread.join(timeout + 5)  # wait_for ends the probe at the timeout; this bound is only a safety net
    error = outcome[0] if outcome else TimeoutError()
    if error is None:
        return
    if isinstance(error, _NotAScheduler):
        raise SchedulerUnreachable(
            f"something at {address} accepted the connection but did not answer as a Dask scheduler ({error}):"
            " check the address and port of `dask scheduler`"
        ) from None
    if isinstance(error, (TimeoutError, asyncio.TimeoutError, OSError)):
        raise _unreachable(address, timeout, progress.why) from None
    raise SchedulerUnreachable(
        f"{address} is not a usable Dask scheduler address ({type(error).__name__}: {error}):"
        " give one like tcp://HOST:PORT"
    ) from None


async def _identity(address: str, progress: _Progress) -> None:
    from distributed.comm import parse_address, registry

    scheme, location = parse_address(address)
    connector = registry.get_backend(scheme).get_connector()
    connection_args = distributed.Security().get_connection_args("client")
    delay = 0.01
    while True:  # as distributed.comm.connect: a scheduler still starting up is retried until the deadline
        try:
            comm = await connector.connect(location, deserialize=False, **connection_args)
            break
        except OSError as exc:
            progress.why = _reason(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
    progress.why = "it accepted the connection but never answered"
    try:
        await comm.write(comm.handshake_info())
        await comm.read()
        await comm.write({"op": "identity", "reply": True})
        info = await comm.read()
    except Exception as exc:  # closed, garbled, huge or undecodable frames (CancelledError is not caught)
        raise _NotAScheduler(_reason(exc)) from None
    finally:
        comm.abort()
    if not isinstance(info, dict) or info.get("type") != "Scheduler":
        raise _NotAScheduler(f"its identity was {str(info)[:60]!r}")


def _embedded(
    n_workers: int | None,
    threads_per_worker: int | None,
    processes: bool | None,
    resources: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
) -> tuple[distributed.Client, distributed.LocalCluster]:
    """A LocalCluster on 127.0.0.1 with the dashboard off; a list of resources gives each worker its own.

    TCP on 127.0.0.1 even for thread workers (``processes=False``): in-memory comms would leave the workers'
    HTTP servers listening on every interface. The scheduler's HTTP server (health, metrics) gets a free port.
    """
    options: dict[str, Any] = {
        "threads_per_worker": threads_per_worker,
        "host": "127.0.0.1",
        "protocol": "tcp://",
        "dashboard_address": None,
        "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0", "dashboard": False},
    }
    if processes is not None:
        options["processes"] = processes
    per_worker = None
    if resources is None or isinstance(resources, (Mapping, str)):
        if resources is not None:
            options["resources"] = parse_resources(resources)
        options["n_workers"] = n_workers
    else:
        per_worker = [parse_resources(spec) for spec in resources]
        if n_workers is not None and n_workers != len(per_worker):
            raise TypeError(f"n_workers={n_workers} but resources lists {len(per_worker)} workers: give one each")
        options["n_workers"] = 0
    cluster = distributed.LocalCluster(**options)
    try:
        if per_worker is not None:  # LocalCluster has one worker spec: add one spec per worker, as SpecCluster does
            template = cluster.new_spec
            for i, res in enumerate(per_worker):
                cluster.worker_spec[i] = {"cls": template["cls"], "options": {**template["options"], "resources": res}}
            cluster.scale(len(per_worker))
        client = distributed.Client(cluster)
        if per_worker is not None:
            client.wait_for_workers(len(per_worker))
    except BaseException:
        cluster.close()
        raise
    return client, cluster
