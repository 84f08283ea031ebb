"""On a Dask worker: which of the worker's GPUs each attempt holds through its ``GPU`` resource."""

from __future__ import annotations

import os
import weakref
from typing import Any

from .. import devices


class WorkerGpus:
    """The GPUs a task on this worker holds through its ``GPU`` resource, given back by ``release``."""

    def __init__(self, table: devices.Table, amount: float, key: str, name: str) -> None:
        self.table, self.amount, self.key, self.name = table, amount, key, name
        self.ordinals = table.take(amount)
        holders[key] = self

    def release(self) -> None:
        if holders.pop(self.key, None) is self:
            self.table.give(self.ordinals, self.amount)


tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # worker -> devices.Table
holders: dict[str, WorkerGpus] = {}  # Dask key -> the devices its attempt holds (for the panel)


def gpu_table(worker: Any) -> devices.Table:
    """This worker's GPUs: its ``CUDA_VISIBLE_DEVICES`` (read once), else as many as its ``GPU`` resource,
    which may not exceed the devices listed."""
    table = tables.get(worker)
    if table is None:
        value = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = devices.listed(value)
        resource = worker.state.total_resources.get("GPU", 0)
        devices.check_capacity(resource, value, f"worker {worker.name!r}'s GPU resource", "start it with GPU={n}")
        table = tables.setdefault(worker, devices.Table(len(ids) if ids is not None else int(resource), value))
    return table
