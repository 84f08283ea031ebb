"""pyplot's registry of open figures, made per thread while task cells run.

pyplot keeps one registry of open figures per process, which the notebook's inline backend shows and closes
after every ordinary cell. A task cell runs in a thread beside them, so the registry is made per thread: a
task cell's thread sees, shows and closes only its own figures, every other thread only the others'.
Installed once, the moment matplotlib loads (or at once if it is loaded already).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .capture import current_figures


class _PerThread(OrderedDict):
    """Stands in for pyplot's registry of open figures (``Gcf.figs``): each method acts on the calling task
    cell's own figures, or on the shared ones in any other thread."""

    def __init__(self, shared: OrderedDict) -> None:
        super().__init__()
        self.shared = shared

    def _mine(self) -> OrderedDict:
        own = current_figures()
        return self.shared if own is None else own

    def __getitem__(self, num: Any) -> Any:
        return self._mine()[num]

    def __setitem__(self, num: Any, manager: Any) -> None:
        self._mine()[num] = manager

    def __delitem__(self, num: Any) -> None:
        del self._mine()[num]

    def __contains__(self, num: object) -> bool:
        return num in self._mine()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mine())

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self._mine())

    def __len__(self) -> int:
        return len(self._mine())

    def __repr__(self) -> str:
        return repr(self._mine())

    def get(self, num: Any, default: Any = None) -> Any:
        return self._mine().get(num, default)

    def pop(self, num: Any, *default: Any) -> Any:
        return self._mine().pop(num, *default)

    def keys(self) -> Any:
        return self._mine().keys()

    def values(self) -> Any:
        return self._mine().values()

    def items(self) -> Any:
        return self._mine().items()

    def clear(self) -> None:
        self._mine().clear()

    def move_to_end(self, num: Any, last: bool = True) -> None:
        self._mine().move_to_end(num, last)


def _per_thread(helpers: Any) -> None:
    if not isinstance(helpers.Gcf.figs, _PerThread):
        helpers.Gcf.figs = _PerThread(helpers.Gcf.figs)


class _OnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes pyplot's registry per thread the moment matplotlib loads it, if no task cell had it loaded yet."""

    NAME = "matplotlib._pylab_helpers"

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _per_thread(module)
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


def per_thread() -> None:
    """From now on, each task cell's thread has its own pyplot figures (see the module's docstring)."""
    helpers = sys.modules.get(_OnImport.NAME)
    if helpers is None:
        if not any(isinstance(finder, _OnImport) for finder in sys.meta_path):
            sys.meta_path.insert(0, _OnImport())
    elif getattr(helpers, "Gcf", None) is not None:  # also while another thread still imports it: Gcf is whole
        _per_thread(helpers)
    # else another thread is importing it and has not made Gcf yet: the next task cell makes it per thread
