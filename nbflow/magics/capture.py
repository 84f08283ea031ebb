"""Per-thread capture of what a task cell shows: ``sys.stdout``/``sys.stderr``, ``display()`` and its figures.

A task cell may run in a thread of the kernel next to the notebook's own code, so swapping
``sys.stdout`` (``contextlib.redirect_stdout``) would steal every other thread's output. Instead the
process-wide streams, the shell's display publisher and the way it shows a traceback (an object whose
``_repr_html_`` raises) are wrapped once by routers that send what the calling thread shows to that thread's
collectors if it is capturing, and on as before otherwise. Text enters the collectors as UTF-8 can carry it
(``terminal.printable``), so nothing a cell shows can break what sends it on.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .terminal import Screen, printable

_local = threading.local()
_install_lock = threading.Lock()


class Displays:
    """The rich outputs a cell made (mimebundles), in order; one updated by its display id changes in place."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._where: dict[str, int] = {}
        self.version = 0  # bumps at every change, so a viewer redraws only when something changed

    def add(self, data: dict[str, Any], display_id: str | None = None, update: bool = False) -> None:
        data = printable_data(data)
        if update:
            if display_id not in self._where:
                return
            self.items[self._where[display_id]] = data
        else:
            if display_id:
                self._where[display_id] = len(self.items)
            self.items.append(data)
        self.version += 1

    def clear(self) -> None:
        self.items, self._where = [], {}
        self.version += 1


def printable_data(data: Any) -> Any:
    """A mimebundle (or any JSON-like data) with every text in it ``printable``."""
    if isinstance(data, str):
        return printable(data)
    if isinstance(data, dict):
        return {printable_data(key): printable_data(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [printable_data(item) for item in data]
    return data


class _Router:
    """Stands in for ``sys.stdout``/``sys.stderr``: capturing threads write to their buffer."""

    def __init__(self, inner: Any, slot: str) -> None:
        self._inner = inner
        self._slot = slot

    def write(self, text: str) -> int:
        buffer = getattr(_local, self._slot, None)
        if buffer is None:
            return self._inner.write(text)
        return buffer.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if getattr(_local, self._slot, None) is None:
            self._inner.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, set_parent (ipykernel), ...
        return getattr(self._inner, name)


class _Publisher:
    """Stands in for the shell's display publisher: a capturing thread's ``display()`` goes to its list
    (it would otherwise land under whichever cell runs at that moment)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def publish(self, data: dict[str, Any], metadata: Any = None, **kwargs: Any) -> None:
        displays = current_displays()
        if displays is None:
            self._inner.publish(data, metadata, **kwargs)
        else:
            displays.add(data, (kwargs.get("transient") or {}).get("display_id"), bool(kwargs.get("update")))

    def clear_output(self, wait: bool = False) -> None:
        if not clear():
            self._inner.clear_output(wait)

    def __getattr__(self, name: str) -> Any:  # set_parent, session, ...
        return getattr(self._inner, name)


class _Tracebacks:
    """Stands in for the shell's ``_showtraceback``, which IPython calls when formatting a display fails: a
    capturing thread's traceback goes to its stderr, above the object's plain repr, as under an ordinary cell
    (the kernel would send it under whichever cell runs at that moment)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, etype: type, evalue: BaseException, stb: list[str]) -> None:
        screen = getattr(_local, "stderr", None)
        if screen is None:
            self._inner(etype, evalue, stb)
        else:
            screen.write("\n".join(stb) + "\n")


def _installed(shell: Any) -> bool:
    return (
        isinstance(sys.stdout, _Router)
        and isinstance(sys.stderr, _Router)
        and (
            shell is None
            or (isinstance(shell.display_pub, _Publisher) and isinstance(shell._showtraceback, _Tracebacks))
        )
    )


def _install(shell: Any) -> None:
    with _install_lock:
        for slot in ("stdout", "stderr"):
            stream = getattr(sys, slot)
            if not isinstance(stream, _Router):
                setattr(sys, slot, _Router(stream, slot))
        if shell is not None and not isinstance(shell.display_pub, _Publisher):
            shell.display_pub = _Publisher(shell.display_pub)
        if shell is not None and not isinstance(shell._showtraceback, _Tracebacks):
            shell._showtraceback = _Tracebacks(shell._showtraceback)


def running_shell() -> Any:
    """The running IPython shell, if this process has one (not on a worker without IPython)."""
    shell_class = getattr(sys.modules.get("IPython.core.interactiveshell"), "InteractiveShell", None)
    if shell_class is None or not shell_class.initialized():  # (None also while another thread imports it)
        return None
    return shell_class.instance()


def clear() -> bool:
    """``clear_output()`` in a capturing thread: its cell's output starts over (``wait`` makes no difference:
    the cell is redrawn a few times a second anyway). False if the thread is not capturing."""
    displays = current_displays()
    if displays is None:
        return False
    _local.stdout.clear()
    _local.stderr.clear()
    displays.clear()
    return True


def current_figures() -> OrderedDict | None:
    """The calling thread's own pyplot figures (number -> manager), if it is capturing (see ``figures``)."""
    return getattr(_local, "figures", None)


def current_displays() -> Displays | None:
    """Where the calling thread's ``display()`` goes, if it is capturing."""
    return getattr(_local, "displays", None)


@contextlib.contextmanager
def capture() -> Iterator[tuple[Screen, Screen, Displays]]:
    """Collect what the calling thread prints (stdout, stderr, as a terminal shows them) and displays."""
    shell = running_shell()
    if not _installed(shell):
        _install(shell)
    slots = ("stdout", "stderr", "displays", "figures")
    saved = [getattr(_local, slot, None) for slot in slots]
    out, err, displays = Screen(), Screen(), Displays()
    for slot, value in zip(slots, (out, err, displays, OrderedDict()), strict=True):
        setattr(_local, slot, value)
    try:
        yield out, err, displays
    finally:
        for slot, value in zip(slots, saved, strict=True):
            setattr(_local, slot, value)
