"""Messages a running task sends to the kernel that submitted it, before its result: what it printed so far.

A task runs in a thread of the kernel, in a child process or on a Dask worker. Each place that runs tasks
elsewhere installs how to reach the kernel (the child's pipe to its parent, a Dask worker event), and the
kernel's side hands each message to whoever listens for that channel. In the kernel itself a message is
a plain call. Elsewhere it travels pickled, as bytes, so that no text or value in it can break the transport
(a Dask worker's batched stream fails on a string UTF-8 cannot encode, and takes the worker down with it).
Messages are best effort: one that finds no listener (the cell's kernel is gone, another client's task) is
dropped; a task's result never depends on them.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

_listeners: dict[str, Callable[[Any], None]] = {}  # in the kernel: channel -> handler
_transport: Callable[[str, bytes], None] | None = None  # elsewhere: how to reach the kernel
_lock = threading.Lock()


def listen(channel: str, handler: Callable[[Any], None]) -> None:
    """Call ``handler(message)`` for each message sent on ``channel`` (kernel side)."""
    with _lock:
        _listeners[channel] = handler


def forget(channel: str) -> None:
    with _lock:
        _listeners.pop(channel, None)


def deliver(channel: str, data: bytes) -> None:
    """Hand a message that arrived from elsewhere, as ``send`` packed it, to its listener, if there is one."""
    handler = _listeners.get(channel)
    if handler is not None:
        handler(pickle.loads(data))


def install(transport: Callable[[str, bytes], None]) -> None:
    """How this process (a child, a Dask worker) sends a channel's packed messages to the kernel."""
    global _transport
    _transport = transport


def send(channel: str, message: Any) -> None:
    """Send ``message`` on ``channel``: directly when the listener is in this process, else over the installed
    transport; dropped when there is no way to the kernel."""
    handler = _listeners.get(channel)
    if handler is not None:
        handler(message)
    elif _transport is not None:
        _transport(channel, pickle.dumps(message))
