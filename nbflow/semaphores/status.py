"""What ``nbflow.limits()`` reports: plain frozen records, JSON-able with ``dataclasses.asdict``."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Holder:
    """One live holding of a limit."""

    pid: int
    host: str
    task: str
    amount: float
    since: float  # epoch seconds
    slots: tuple[int, ...] = ()  # device indices of the share (GPU slot k)


@dataclasses.dataclass(frozen=True)
class LimitStatus:
    """A limit of this machine: its capacity, the amount held now, who holds it and how many wait."""

    name: str
    capacity: float
    used: float
    holders: list[Holder]
    waiting: int
