"""On a Dask worker: the engine its tasks submit to, a Dask engine on the worker's client."""

from __future__ import annotations

import threading
from typing import Any

from distributed import get_client

from .core import Engine


class WorkerEngine:
    """The engine tasks see on a worker: a Dask engine on the worker's client, created on first use."""

    kind = "dask"

    def __init__(self, on_unsatisfiable: str) -> None:
        self.on_unsatisfiable = on_unsatisfiable
        self._real: Engine | None = None
        self._lock = threading.Lock()

    def _engine(self) -> Engine:
        with self._lock:
            if self._real is None:
                from . import create

                self._real = create(get_client(), on_unsatisfiable=self.on_unsatisfiable)
            return self._real

    def __getattr__(self, name: str) -> Any:  # submit, map, call, occupancy, .client: the real engine's
        return getattr(self._engine(), name)


_engines: dict[tuple[str, str], WorkerEngine] = {}


def worker_engine(worker: Any, on_unsatisfiable: str) -> WorkerEngine:
    """One engine per cluster and option in this process (thread workers of several clusters may share it)."""
    where = (worker.scheduler.address, on_unsatisfiable)
    found = _engines.get(where)
    if found is None:
        found = _engines.setdefault(where, WorkerEngine(on_unsatisfiable))
    return found
