"""On a Dask worker: the calls of the nbflow attempts running here, so that a client can stop one by its key."""

from __future__ import annotations

import collections
import threading
from typing import Any

from ..machine_limits.wake import nudge
from ..thread_stop import StoppableCall

_lock = threading.Lock()
_running: dict[str, Any] = {}  # Dask key -> the call of the attempt running under it
_asked: collections.OrderedDict[str, None] = collections.OrderedDict()  # stopped before they began here
_ASKED_KEPT = 10_000  # keys of attempts that never began here (cancelled on the cluster) are forgotten after these


def begin(key: str, call: Any = None) -> Any:
    """The call of the attempt starting under ``key`` (a ``StoppableCall``, or ``call``: anything with ``stop()``):
    already stopped if a stop for it came first."""
    call = call or StoppableCall()
    with _lock:
        _running[key] = call
        if _asked.pop(key, 0) is None:
            call.stop()
    return call


def end(key: str) -> None:
    with _lock:
        _running.pop(key, None)


async def stop_attempt(key: str) -> None:
    """Run by the client on every worker (``client.run``): stop the attempt running under ``key`` here, or the
    one that starts under it next."""
    with _lock:
        call = _running.get(key)
        if call is None:
            _asked[key] = None
            while len(_asked) > _ASKED_KEPT:
                _asked.popitem(last=False)
    if call is not None:
        call.stop()
        nudge()  # if it sleeps for a rate's token holding its slot, it gives both back now
