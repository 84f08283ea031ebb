"""The occupancy snapshot: plain, JSON-able dicts, the same shape on every engine."""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

from .futures import STATUSES


class ResourceUse(TypedDict):
    total: float
    used: float


class GpuUse(TypedDict):
    task: str  # its name
    ids: str  # the GPUs it holds, as CUDA_VISIBLE_DEVICES names them ("3,5")


class WorkerOccupancy(TypedDict):
    name: str
    host: str
    resources: dict[str, ResourceUse]
    running: int  # tasks executing now
    waiting: int  # tasks assigned here that wait for a resource
    queued: int  # tasks assigned here, ready, waiting for a thread
    gpus: list[GpuUse]  # the running tasks that hold GPUs here


class LimitInfo(TypedDict):
    name: str
    capacity: float | None  # None: a rate limit without a capacity
    used: float
    waiting: int
    holders: list[dict[str, Any]]  # each a ``machine_limits.Holder`` as a dict (``Holder.from_dict`` reads it back)
    rate: str | None  # "10/s", None: no rate
    burst: int
    next_start: float  # seconds until a start is allowed (0.0: now)
    scope: str  # "machine" | "cluster"


class Occupancy(TypedDict):
    engine: str  # "local" | "dask"
    time: float  # epoch seconds when taken
    workers: list[WorkerOccupancy]
    tasks: dict[str, int]  # count per status in futures.STATUSES
    limits: list[LimitInfo]


def empty_task_counts() -> dict[str, int]:
    """A count of 0 for every status, so consumers never miss a key."""
    return dict.fromkeys(STATUSES, 0)


def limits_snapshot() -> list[LimitInfo]:
    """This machine's limits with their holders, as plain dicts."""
    from .machine_limits import limits

    return [dataclasses.asdict(status) for status in limits()]  # type: ignore[misc]
