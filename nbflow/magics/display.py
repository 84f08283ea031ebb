"""What a task cell shows under its own cell, whichever cell is running when it changes.

A ``print`` from a background thread lands under the cell running at that moment, so every output of a
task cell goes through displays created (with a display id) while the submitting cell runs, and later
``update``d in place from any thread.
"""

from __future__ import annotations

import html
import threading
from typing import Any

from IPython.display import DisplayHandle, display

_STREAM_STYLE = {
    "stdout": "margin:2px 0",
    "stderr": "margin:2px 0;background:#fdd",
    "traceback": "margin:2px 0;background:#fdd;color:#800",
}


def render(title: str, state: str, streams: dict[str, str]) -> dict[str, str]:
    """The status line and the cell's output streams as one text/plain + text/html bundle."""
    head = f"[nbflow] {title}: {state}"
    shown = {kind: text for kind, text in streams.items() if text}
    plain = "\n".join([head, *(text.rstrip("\n") for text in shown.values())])
    blocks = "".join(
        f'<pre style="{_STREAM_STYLE[kind]}">{html.escape(text.rstrip(chr(10)))}</pre>' for kind, text in shown.items()
    )
    status = f'<div style="font-family:monospace;color:#555">[nbflow] <b>{html.escape(title)}</b>: '
    return {"text/plain": plain, "text/html": f"{status}{html.escape(state)}</div>{blocks}"}


class CellView:
    """A task cell's displays: the status line (with stdout, stderr, traceback) and its last value."""

    def __init__(self, title: str, shows_value: bool) -> None:
        self.title = title
        self._status = DisplayHandle()
        self._value = DisplayHandle() if shows_value else None
        self._shown: dict[str, Any] | None = None
        self._value_shown: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def show(self, state: str) -> None:
        """Create the displays; call this in the submitting cell, from the kernel's main thread."""
        self._shown = render(self.title, state, {})
        display(self._shown, raw=True, display_id=self._status.display_id)
        if self._value is not None:
            self._value_shown = {"text/plain": ""}
            display(self._value_shown, raw=True, display_id=self._value.display_id)

    def update(self, state: str, streams: dict[str, str] | None = None, value: dict[str, Any] | None = None) -> None:
        """Redraw in place (from any thread) if something changed."""
        bundle = render(self.title, state, streams or {})
        with self._lock:
            if bundle != self._shown:
                self._shown = bundle
                self._status.update(bundle, raw=True)
            if value is not None and self._value is not None and value != self._value_shown:
                self._value_shown = value
                self._value.update(value, raw=True)

    def republish(self) -> None:
        """Send the current state again: a front-end such as nbclient drops updates sent between two cells."""
        with self._lock:
            if self._shown is not None:
                self._status.update(self._shown, raw=True)
            if self._value is not None and self._value_shown is not None:
                self._value.update(self._value_shown, raw=True)
