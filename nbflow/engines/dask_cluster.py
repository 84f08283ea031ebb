"""Getting a ``distributed.Client``: to a scheduler address, from the caller, or to an embedded LocalCluster."""

from __future__ import annotations

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
    try:
        return distributed.Client(address, timeout=timeout)
    except OSError as exc:  # distributed raises OSError (TimeoutError, ConnectionRefusedError) after the timeout
        raise SchedulerUnreachable(
            f"no Dask scheduler answered at {address} within {timeout:g} s: check that `dask scheduler` runs"
            f" there and the address/port are reachable ({type(exc).__name__})"
        ) from None


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
