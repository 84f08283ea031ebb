"""Per-thread capture of ``sys.stdout``/``sys.stderr`` for task cells.

A task cell may run in a thread of the kernel next to the notebook's own code, so swapping
``sys.stdout`` (``contextlib.redirect_stdout``) would steal every other thread's output. Instead the
process-wide streams are wrapped once by a router that sends a write to the calling thread's buffer if
that thread is capturing, and to the original stream otherwise.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Iterator
from typing import Any

_local = threading.local()
_install_lock = threading.Lock()


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


def _install() -> None:
    with _install_lock:
        for slot in ("stdout", "stderr"):
            stream = getattr(sys, slot)
            if not isinstance(stream, _Router):
                setattr(sys, slot, _Router(stream, slot))


@contextlib.contextmanager
def capture() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Collect what the calling thread prints (stdout, stderr) while the block runs."""
    if not isinstance(sys.stdout, _Router) or not isinstance(sys.stderr, _Router):
        _install()
    saved = getattr(_local, "stdout", None), getattr(_local, "stderr", None)
    out, err = io.StringIO(), io.StringIO()
    _local.stdout, _local.stderr = out, err
    try:
        yield out, err
    finally:
        _local.stdout, _local.stderr = saved
