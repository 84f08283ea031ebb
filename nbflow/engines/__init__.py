"""Engines: the engine factories by name (``register``), ``nbflow.use(...)`` and ``nbflow.engine()``.

An engine is found by name (``use("local")``, ``use("dask")``) or by an object it accepts (``use(client)``
for a ``distributed.Client``). Engine modules are named as strings and imported on first use, so
``import nbflow`` never imports ``distributed``. A new engine is one module with an ``Engine`` subclass
(see ``core``), one ``register`` call, and a pass of the conformance suite (``tests/test_conformance.py``).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from ..errors import EngineConfigError
from .core import Engine, bind, bound

__all__ = ["Engine", "bind", "create", "engine", "register", "use"]

_factories: dict[str, str | Callable[..., Engine]] = {}
_adapters: list[tuple[Callable[[Any], bool], str, str]] = []  # (accepts, engine name, option name)
_lock = threading.Lock()
_current: Engine | None = None


def register(
    name: str,
    factory: str | Callable[..., Engine],
    accepts: Callable[[Any], bool] | None = None,
    as_option: str = "client",
) -> None:
    """Make ``use(name, **options)`` call ``factory(**options)``; ``factory`` may be ``"module:Class"``,
    imported on first use. With ``accepts``, ``use(obj)`` for which ``accepts(obj)`` is true calls
    ``factory(**{as_option: obj}, **options)``."""
    _factories[name] = factory
    if accepts is not None:
        _adapters.append((accepts, name, as_option))


def create(kind: Any = "local", **options: Any) -> Engine:
    """A new engine of ``kind`` (a registered name, or an object a registered engine accepts)."""
    if not isinstance(kind, str):
        for accepts, name, option in _adapters:
            if accepts(kind):
                return _factory(name)(**{option: kind}, **options)
    elif kind in _factories:
        return _factory(kind)(**options)
    names = ", ".join(repr(name) for name in _factories)
    raise EngineConfigError(f"unknown engine {kind!r}: use one of {names}, or pass a distributed.Client")


def _factory(name: str) -> Callable[..., Engine]:
    factory = _factories[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = _factories[name] = getattr(importlib.import_module(module), attr)
    return factory


def use(kind: Any = "local", **options: Any) -> Engine:
    """Select the engine: ``"local"`` (default), ``"dask"``, or an existing ``distributed.Client``.

    The previous engine is closed: tasks it had not started are cancelled, and it returns without waiting
    for running ones.
    """
    global _current
    new = create(kind, **options)
    with _lock:
        old, _current = _current, new
    if old is not None:
        old.close()
    return new


def engine() -> Engine:
    """The engine in use: the one bound to this thread (inside a task), else the last set by ``use``, else local."""
    global _current
    here = bound()
    if here is not None:
        return here
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                _current = create("local")
            current = _current
    return current


def _is_dask_client(obj: Any) -> bool:
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "submit")


register("local", "nbflow.engines.local:LocalEngine")
register("dask", "nbflow.engines.dask:DaskEngine", accepts=_is_dask_client)
