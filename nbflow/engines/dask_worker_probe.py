"""On a Dask worker: what it holds and runs right now, for the occupancy snapshot (run by ``client.run``)."""

from __future__ import annotations

from typing import Any

from distributed.comm.addressing import get_address_host

from .. import devices
from .dask_worker_gpus import holders, tables


def probe(dask_worker: Any) -> dict[str, Any]:
    """Run by ``client.run`` on every worker: what this worker itself holds and runs right now."""
    state = dask_worker.state
    return {
        "name": str(dask_worker.name),
        "host": get_address_host(dask_worker.address),
        "total": dict(state.total_resources),
        "available": dict(state.available_resources),
        "running": [ts.key for ts in state.executing] + [ts.key for ts in state.long_running],
        "waiting": [ts.key for ts in state.constrained],
        "queued": len(state.ready),
        "gpus": [  # the devices each running task holds through this worker's GPU resource
            {"task": held.name, "ids": devices.physical(held.ordinals, held.table.value)}
            for held in list(holders.values())
            if held.table is tables.get(dask_worker)
        ],
    }
