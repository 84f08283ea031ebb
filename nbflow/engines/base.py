"""The interface every engine implements; ``Task`` and the magics talk only to this."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..futures import Future
    from ..occupancy import Occupancy
    from ..task import Task


class Engine:
    """Runs tasks. Subclasses: ``LocalEngine`` (threads/processes + machine limits), ``DaskEngine``."""

    kind: str = ""

    def submit(self, task: Task, args: tuple, kwargs: dict) -> Future:
        """Schedule ``task(*args, **kwargs)``; futures in the arguments are dependencies. Never blocks."""
        raise NotImplementedError

    def call(self, task: Task, args: tuple, kwargs: dict) -> Any:
        """Run ``task`` now in the calling thread, holding its resources and limits."""
        raise NotImplementedError

    def occupancy(self) -> Occupancy:
        """A JSON-able snapshot of workers, resources, task counts and limits (SPEC §5)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine started (pools, an embedded cluster)."""
