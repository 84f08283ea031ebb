"""Machine-wide limits: counting semaphores over file locks (SPEC §4).

CONTRACT (being implemented): the names below are the public surface other modules use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    task: str
    amount: float
    since: float


@dataclasses.dataclass(frozen=True)
class LimitStatus:
    name: str
    capacity: float
    used: float
    holders: list[Holder]
    waiting: int


class Holding:
    """A granted share of a limit; ``release()`` (idempotent) or use as a context manager."""

    name: str
    amount: float
    slots: tuple[int, ...]  # device indices for whole amounts (GPU slot k), else ()

    def release(self) -> None: ...


def limit(name: str, capacity: float) -> None:
    """Set this machine's capacity for ``name`` (persisted)."""
    raise NotImplementedError


def limits() -> list[LimitStatus]:
    raise NotImplementedError


def acquire(name: str, amount: float = 1.0, *, timeout: float | None = None, task: str = "") -> Holding:
    raise NotImplementedError


def acquire_all(demands: Mapping[str, float], *, timeout: float | None = None, task: str = "") -> list[Holding]:
    raise NotImplementedError


def concurrency(name: str, occupy: float = 1, timeout: float | None = None):
    raise NotImplementedError
