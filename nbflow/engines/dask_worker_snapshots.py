"""On a Dask worker: the locals of failed attempts too big to travel with their error.

A task's error goes through the scheduler, which keeps it as long as the task is known: a snapshot's locals
(up to hundreds of MiB) stay here instead, and the client fetches them only if the user debugs that failure
(``fetch``). A worker keeps those of its ``KEPT`` most recent failures, at most ``KEPT_BYTES`` in all; older
ones are dropped (their locals then show as placeholders that say so).
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from ..debugging.worker_snapshot import Snapshot, Unavailable

INLINE = 64 * 1024  # pickled bytes of locals that travel with the error (the rest wait here)
KEPT = 16
KEPT_BYTES = 1 * 2**30

_lock = threading.Lock()
_kept: collections.OrderedDict[str, tuple[list[dict], int]] = collections.OrderedDict()  # Dask key -> locals


def keep_big_locals(snapshot: Snapshot, address: str, key: str) -> None:
    """Keep here the locals of ``snapshot`` that do not fit in ``INLINE`` bytes (innermost frame first: the
    values nearest the error travel with it); each stands in the snapshot as a placeholder until fetched, and the
    snapshot says where they are (``left``)."""
    room, kept, size = INLINE, [], 0
    for frame in reversed(snapshot.frames):
        here = {}
        for name, value in frame.locals.items():
            if isinstance(value, Unavailable) or len(value) <= room:
                room -= 0 if isinstance(value, Unavailable) else len(value)
                continue
            here[name], size = value, size + len(value)
            kind = frame.kinds.get(name, "?")
            frame.locals[name] = Unavailable(kind, f"({len(value)} bytes pickled)", f"kept on the worker {address}")
        kept.append(here)
    if not size:
        return
    kept.reverse()  # (outermost frame first, as the snapshot's frames)
    snapshot.left = (address, key)
    with _lock:
        _kept[key] = (kept, size)
        total = sum(kept for _, kept in _kept.values())
        while len(_kept) > KEPT or (total > KEPT_BYTES and len(_kept) > 1):
            total -= _kept.popitem(last=False)[1][1]


def take(key: str) -> list[dict] | None:
    """Run by the client on this worker (``client.run``): the locals kept for the failed attempt ``key``, once."""
    with _lock:
        kept = _kept.pop(key, None)
    return None if kept is None else kept[0]


FETCH_SECONDS = 30.0  # how long the kernel waits for a worker to hand over the locals it kept


def fetch(client: Any, left: tuple[str, str]) -> list[dict] | str:
    """(In the kernel) the locals a worker kept for a snapshot, or why they cannot be had (within
    ``FETCH_SECONDS``: a worker frozen, or busy in a call that holds the interpreter, does not answer)."""
    address, key = left
    if client.status not in ("running", "connecting"):
        return "lost: the Dask client is closed"
    try:
        if address not in client.scheduler_info()["workers"]:  # (asking a gone address waits out a 30 s connect)
            return f"lost: the worker {address} has left"
    except Exception as exc:
        return f"lost: the cluster could not be asked ({type(exc).__name__}: {exc})"
    answer: dict[str, Any] = {}

    def ask() -> None:  # (a thread of its own, left behind if the worker never answers)
        try:
            answer["got"] = client.run(take, key, workers=[address], on_error="return")
        except Exception as exc:
            answer["error"] = exc

    asking = threading.Thread(target=ask, name="nbflow-fetch-locals", daemon=True)
    asking.start()
    asking.join(FETCH_SECONDS)
    if "got" not in answer:
        error = answer.get("error")
        if error is None:
            return f"lost: the worker {address} did not answer within {FETCH_SECONDS:g} s"
        return f"lost: the worker {address} could not be asked ({type(error).__name__}: {error})"
    got = answer["got"]
    values = got.get(address)
    if isinstance(values, list):
        return values
    if isinstance(values, BaseException) or address not in got:
        return f"lost: the worker {address} has left"
    return (
        f"dropped: the worker {address} keeps the locals of its {KEPT} most recent failures, "
        f"{KEPT_BYTES // 2**30} GiB at most"
    )
