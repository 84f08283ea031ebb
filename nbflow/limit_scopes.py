"""``nbflow.limit`` and ``nbflow.remove_limit``: a limit of this machine (``machine_limits``, shared by every process
through the limits directory) or of a Dask cluster (kept by its scheduler: ``engines.dask_cluster_limits``)."""

from __future__ import annotations

from typing import Any

from .errors import NbflowError, ResourceSpecError
from .specs import check_amount, check_burst, check_name, parse_rate

SCOPES = ("machine", "cluster")


def limit(
    name: str, capacity: float | None = None, *, rate: str | None = None, burst: int = 1, scope: str = "machine"
) -> None:
    """Set limit ``name``: at most ``capacity`` held at once and/or at most ``rate`` starts (``"10/s"``,
    ``"60/min"``, ``"5000/h"``; ``burst`` of them at once after a pause). Each call states the whole limit: what it
    leaves out is not set. ``scope="cluster"`` sets it on the current Dask engine's scheduler, for every client and
    worker of that cluster; ``"machine"`` (default) for every process of this machine (persisted)."""
    name = check_name(name)
    if scope not in SCOPES:
        raise ResourceSpecError(f"scope must be 'machine' or 'cluster', got {scope!r}")
    amount = None if capacity is None else check_amount(name, capacity)
    parsed = None if rate is None else parse_rate(rate)
    burst = check_burst(burst)
    if amount is None and parsed is None:
        raise ResourceSpecError(
            f"limit {name!r} needs a capacity, a rate or both: nbflow.limit({name!r}, 4) or"
            f" nbflow.limit({name!r}, rate='10/s')"
        )
    if scope == "cluster":
        from .engines.dask_cluster_limits import set_cluster_limit

        set_cluster_limit(_dask_engine(name), name, amount, parsed, burst)
    else:
        from .machine_limits.api import set_limit

        set_limit(name, amount, parsed, burst)


def remove_limit(name: str, *, scope: str = "machine") -> None:
    """Forget limit ``name`` (its capacity and its rate). Holders keep their share until they release it."""
    name = check_name(name)
    if scope not in SCOPES:
        raise ResourceSpecError(f"scope must be 'machine' or 'cluster', got {scope!r}")
    if scope == "cluster":
        from .engines.dask_cluster_limits import remove_cluster_limit

        remove_cluster_limit(_dask_engine(name), name)
    else:
        from .machine_limits.api import remove_limit as remove

        remove(name)


def _dask_engine(name: str) -> Any:
    from .engines import engine

    current = engine()
    if current.kind != "dask":
        raise NbflowError(
            f"limit {name!r} with scope='cluster' is kept by a Dask scheduler, and the engine is {current.kind!r}:"
            " select one first with nbflow.use('dask', ...)"
        )
    return current
