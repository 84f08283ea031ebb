"""Which GPUs a task holds: device ordinals handed out by amount, and their ids as CUDA names them.

A holder of a whole amount ``k`` gets ``k`` devices of its own; a fractional amount shares one device with
other fractions (best fit: the fullest device it still fits on, so halves pack in pairs); a non-whole
amount above 1 gets ``ceil(amount)`` devices of its own. If no device is free enough (fractions that do
not pack, or a timed-out task still running), the least loaded ones are shared rather than none given.

An ordinal indexes the devices this process sees: ``CUDA_VISIBLE_DEVICES`` in its order when it is set
(ids may be numbers, UUIDs or MIG ids, kept as given), else ``0..n-1``. Each engine reads that list once, when
it starts: a task that sets ``os.environ["CUDA_VISIBLE_DEVICES"]`` changes no other task's devices. No id is
ever made up: an ordinal past the list, or a ``GPU`` capacity above it, is refused.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

from .errors import ResourceSpecError, Unsatisfiable

EPS = 1e-9  # the one tolerance amounts compare with (GPU packing here, grants in ``machine_limits.slotfiles.fits``)


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


def listed(value: str | None) -> list[str] | None:
    """The device ids a ``CUDA_VISIBLE_DEVICES`` value lists, in order; None when it is not set. As CUDA does,
    the list ends at the first empty or negative entry (``"0,-1,2"`` is device 0 only). A device listed twice
    is refused: two tasks would be handed the same device as two."""
    if value is None:
        return None
    ids: list[str] = []
    seen: set[str] = set()
    for part in value.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        same = str(int(part)) if part.isdigit() else part  # CUDA reads "01" as device 1
        if same in seen:
            raise ResourceSpecError(
                f"CUDA_VISIBLE_DEVICES={value!r} lists device {part!r} twice: list each device once"
            )
        seen.add(same)
        ids.append(part)
    return ids


def visible() -> list[str] | None:
    """The device ids ``CUDA_VISIBLE_DEVICES`` lists now (see ``listed``)."""
    return listed(os.environ.get("CUDA_VISIBLE_DEVICES"))


def physical(ordinals: Sequence[int], value: str | None, strict: bool = True) -> str:
    """The ids of ``ordinals`` among the devices ``value`` lists (the ``CUDA_VISIBLE_DEVICES`` an engine
    started with): ``"5"`` for ordinal 1 of ``"3,5"``; ordinal *k* is device *k* when it is None.
    An ordinal past the list is refused rather than named by a made-up id (shown as ``slot 2?`` when not
    ``strict``, for the panel)."""
    ids = listed(value)
    if ids is None:
        return ",".join(map(str, ordinals))
    past = [i for i in ordinals if i >= len(ids)]
    if past and strict:
        raise Unsatisfiable(f"GPU slot {past[0]} has no device: {_fewer(value, ids, _LIMIT)}")
    return ",".join(ids[i] if i < len(ids) else f"slot {i}?" for i in ordinals)


_LIMIT = 'set nbflow.limit("GPU", {n})'


def check_capacity(
    capacity: float, value: str | None, what: str = "the machine's GPU limit", fix: str = _LIMIT
) -> None:
    """Refuse handing out ``capacity`` GPUs (slot *k* is the *k*-th listed device) when ``value``, a
    ``CUDA_VISIBLE_DEVICES``, lists fewer devices; ``fix`` says how to lower it (``{n}``: the device count)."""
    ids = listed(value)
    if ids is not None and capacity > len(ids) + EPS:
        raise Unsatisfiable(f"{what} has capacity {capacity:g} but {_fewer(value, ids, fix)}")


def _fewer(value: str | None, ids: list[str], fix: str) -> str:
    n = len(ids)
    return f"CUDA_VISIBLE_DEVICES lists {n} devices ({value!r}): {fix.format(n=n)} or list more devices"


class Table:
    """The GPUs of one Dask worker process, handed to the tasks running on it (Dask counts the amounts;
    this says which devices)."""

    def __init__(self, count: int, value: str | None = None) -> None:
        self.load = [0.0] * count
        self.value = value  # the worker's CUDA_VISIBLE_DEVICES, read once: what the ordinals name
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
