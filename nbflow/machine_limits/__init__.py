"""Machine-wide limits: counting semaphores over file locks.

State lives in ``$NBFLOW_LIMITS_DIR`` (else ``$XDG_STATE_HOME/nbflow/limits`` or
``~/.local/state/nbflow/limits``); see ``limit_on_disk`` for the on-disk design.
"""

from __future__ import annotations

from .api import Concurrency, acquire, acquire_all, acquire_async, concurrency, limit, limits, remove_limit
from .holding import Holding
from .status import Holder, LimitStatus

__all__ = [
    "Concurrency",
    "Holder",
    "Holding",
    "LimitStatus",
    "acquire",
    "acquire_all",
    "acquire_async",
    "concurrency",
    "limit",
    "limits",
    "remove_limit",
]
