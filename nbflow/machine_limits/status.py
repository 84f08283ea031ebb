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
        )


@dataclasses.dataclass(frozen=True)
class LimitStatus:
    """A limit of this machine: its capacity, the amount held now, who holds it and how many wait."""

    name: str
    capacity: float
    used: float
    holders: list[Holder]
    waiting: int
