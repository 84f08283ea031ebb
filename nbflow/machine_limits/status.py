"""What ``nbflow.limits()`` reports: plain frozen records, JSON-able with ``dataclasses.asdict`` (the occupancy
snapshot carries them so), and read back from such a dict with ``Holder.from_dict``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Holder:
    """One live holding of a limit."""

    pid: int
    host: str
    task: str
    amount: float
    since: float  # epoch seconds
    slots: tuple[int, ...] = ()  # device indices of the share (GPU slot k)
    worker: str = ""  # a cluster limit's holder: the Dask worker's address

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Holder:
        """The holder a snapshot's dict describes (a hand-made one may leave out ``task`` and ``slots``)."""
        return cls(
            pid=fields["pid"],
            host=fields["host"],
            task=fields.get("task") or "",
            amount=fields["amount"],
            since=fields["since"],
            slots=tuple(fields.get("slots") or ()),
            worker=fields.get("worker") or "",
        )


@dataclasses.dataclass(frozen=True)
class LimitStatus:
    """A limit: its capacity (``None``: none, only a rate), the amount held now, who holds it, how many wait, its
    rate (``"10/s"``, ``None``: none), burst and the seconds until a start is allowed (0.0: now), and whether it is
    this machine's or a Dask cluster's."""

    name: str
    capacity: float | None
    used: float
    holders: list[Holder]
    waiting: int
    rate: str | None = None
    burst: int = 1
    next_start: float = 0.0
    scope: str = "machine"  # | "cluster"
