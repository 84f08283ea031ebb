"""Which GPUs a task holds: device ordinals handed out by amount, and their ids as CUDA names them.

A holder of a whole amount ``k`` gets ``k`` devices of its own; a fractional amount shares one device with
other fractions (best fit: the fullest device it still fits on, so halves pack in pairs); a non-whole
amount above 1 gets ``ceil(amount)`` devices of its own. If no device is free enough (fractions that do
not pack, or a timed-out task still running), the least loaded ones are shared rather than none given.

An ordinal indexes the devices this process sees: ``CUDA_VISIBLE_DEVICES`` in its order when it is set
(ids may be numbers, UUIDs or MIG ids, kept as given), else ``0..n-1``.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence

EPS = 1e-9


def choose(load: Sequence[float], amount: float) -> tuple[int, ...]:
    """The device ordinals for ``amount``, given each device's current load (1 = fully taken)."""
    if not load or amount <= 0:
        return ()
    order = sorted(range(len(load)), key=lambda i: (load[i], i))
    if amount < 1:
        fitting = [i for i in order if load[i] + amount <= 1 + EPS]
        return (max(fitting, key=lambda i: (load[i], -i)),) if fitting else (order[0],)
    return tuple(sorted(order[: math.ceil(amount - EPS)]))


def held(holdings: Sequence) -> tuple[int, ...]:
    """The GPU ordinals among a task's limit holdings (the slots of its ``GPU`` share), ``()`` if none."""
    return next((h.slots for h in holdings if h.name == "GPU"), ())


def weight(amount: float, count: int) -> float:
    """How much of each of its ``count`` devices a holding of ``amount`` takes."""
    return amount if amount < 1 and count == 1 else 1.0


def visible(env: Mapping[str, str] = os.environ) -> list[str] | None:
    """The device ids ``CUDA_VISIBLE_DEVICES`` lists, in order; None when it is not set."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def physical(ordinals: Sequence[int], env: Mapping[str, str] = os.environ) -> str:
    """The ids of ``ordinals`` for a process started from this one: ``"5"`` for ordinal 1 of ``3,5``."""
    ids = visible(env)
    return ",".join(ids[i] if ids is not None and i < len(ids) else str(i) for i in ordinals)


class Table:
    """The GPUs of one Dask worker process, handed to the tasks running on it (Dask counts the amounts;
    this says which devices)."""

    def __init__(self, count: int) -> None:
        self.load = [0.0] * count
        self._lock = threading.Lock()

    def take(self, amount: float) -> tuple[int, ...]:
        with self._lock:
            ordinals = choose(self.load, amount)
            for i in ordinals:
                self.load[i] += weight(amount, len(ordinals))
            return ordinals

    def give(self, ordinals: tuple[int, ...], amount: float) -> None:
        with self._lock:
            for i in ordinals:
                self.load[i] = max(self.load[i] - weight(amount, len(ordinals)), 0.0)
