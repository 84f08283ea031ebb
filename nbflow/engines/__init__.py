"""Choosing the engine: ``nbflow.use(...)`` and ``nbflow.engine()``.

Engine modules are imported only when used, so ``import nbflow`` never imports ``distributed``.
"""

from __future__ import annotations

import threading
from typing import Any

from .base import Engine

__all__ = ["Engine", "engine", "use"]

_lock = threading.Lock()
_current: Engine | None = None
_override = threading.local()  # an engine bound to this thread, e.g. inside a Dask task


def use(kind: Any = "local", **options: Any) -> Engine:
    """Select the engine: ``"local"`` (default), ``"dask"``, or an existing ``distributed.Client``.

    The previous engine is closed (an embedded cluster it started is shut down).
    """
    global _current
    if isinstance(kind, str) and kind == "local":
        from .local import LocalEngine

        new: Engine = LocalEngine(**options)
    elif isinstance(kind, str) and kind == "dask":
        from .dask import DaskEngine

        new = DaskEngine(**options)
    elif type(kind).__module__.startswith("distributed") and hasattr(kind, "submit"):
        from .dask import DaskEngine

        new = DaskEngine(client=kind, **options)
    else:
        from ..errors import ResourceSpecError

        raise ResourceSpecError(f"unknown engine {kind!r}: use 'local', 'dask', or pass a distributed.Client")
    with _lock:
        old, _current = _current, new
    if old is not None:
        old.close()
    return new


def engine() -> Engine:
    """The engine in use: the one bound to this thread (inside a task), else the last ``use``d, else local."""
    global _current
    bound = getattr(_override, "engine", None)
    if bound is not None:
        return bound
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                from .local import LocalEngine

                _current = LocalEngine()
            current = _current
    return current


def bind(eng: Engine | None) -> Engine | None:
    """Bind ``eng`` to the calling thread (``None`` unbinds); returns what was bound before."""
    previous = getattr(_override, "engine", None)
    _override.engine = eng
    return previous
