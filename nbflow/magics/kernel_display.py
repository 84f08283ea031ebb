"""What a task cell shows under its own cell, whichever cell is running when it changes.

A ``print`` from a background thread lands under the cell running at that moment, so every output of a
task cell goes through displays created (with a display id) while the submitting cell runs, and later
``update``d in place from any thread. What they send is made ``printable`` on its way out (a failure's
traceback quotes the cell's own values), so no string that UTF-8 cannot encode reaches the kernel's socket,
which would refuse it.
"""

from __future__ import annotations

import html
import json
import threading
from typing import Any

from IPython.core.interactiveshell import InteractiveShell
from IPython.display import DisplayHandle, display

from .capture import printable_data
from .task_display import WIDGET, widget_text

LIVE_LINES = 100  # lines of each stream shown while a cell runs; all of them show once it ends


def status(title: str, state: str) -> dict[str, str]:
    """The status line as a text/plain + text/html bundle."""
    head = f'<div style="font-family:monospace;color:#555">[nbflow] <b>{html.escape(title)}</b>: '
    return {"text/plain": f"[nbflow] {title}: {state}", "text/html": f"{head}{html.escape(state)}</div>"}


def streams_bundle(streams: dict[str, str]) -> dict[str, str]:
    """stdout, stderr and a traceback, in that order, as text/plain only: the front-end renders ANSI colours,
    and the text is sent and saved once, not once more as HTML."""
    return {"text/plain": "\n".join(text.rstrip("\n") for text in streams.values() if text)}


def compose(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's rich outputs (``display()``, figures, its last value) as one bundle. One is shown as it is (a
    figure as PNG, a widget as a widget); several are laid out in order as HTML (Markdown rendered with mistune
    if it is there, LaTeX left to the front end to typeset, JSON as text), with their texts as the text/plain
    fallback."""
    if len(items) <= 1:
        return items[0] if items else {"text/plain": ""}
    return {"text/html": "".join(_html(item) for item in items), "text/plain": _plain(items)}


def _plain(items: list[dict[str, Any]]) -> str:
    return "\n".join(item.get("text/plain", "") for item in items)


def _html(item: dict[str, Any]) -> str:
    if "text/html" in item:
        return item["text/html"]
    if "image/svg+xml" in item:
        return item["image/svg+xml"]
    for kind in ("png", "jpeg"):
        if f"image/{kind}" in item:
            return f'<img src="data:image/{kind};base64,{item["image/" + kind]}">'
    if "text/markdown" in item:
        try:
            import mistune  # what nbconvert renders Markdown with; where it is missing, the source shows
        except ImportError:
            pass
        else:
            return mistune.html(item["text/markdown"])
    if "text/latex" in item:  # the front end typesets it in HTML as in Markdown
        return f"<div>{html.escape(item['text/latex'])}</div>"
    source = item.get("text/markdown", item.get("text/plain", ""))
    if "application/json" in item:
        source = json.dumps(item["application/json"], indent=1)
    return f'<pre style="margin:2px 0">{html.escape(source)}</pre>'


def static(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outputs with each widget as its text: what shows where no widget manager runs (nbconvert, GitHub)."""
    return [{"text/plain": item.get("text/plain", "")} if WIDGET in item else item for item in items]


def current_request() -> str | None:
    """The id of the request that output sent now goes with (the cell the kernel runs, or ran last)."""
    shell = InteractiveShell.instance()
    return (getattr(shell.display_pub, "parent_header", None) or {}).get("msg_id")


class CellView:
    """A task cell's displays: the status line, what it printed (stdout, stderr, traceback), and what it
    showed (``display()``, figures, widgets, its last value). All are made while the submitting cell runs,
    because only those displays can be redrawn under it later. Several rich outputs of which one is a widget
    (a ``tqdm.auto`` bar) are shown, while the cell runs, in an ipywidgets ``Output`` whose outputs are set
    from any thread; once it ends they stay as static bundles, a widget as its text form."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._handles = (DisplayHandle(), DisplayHandle(), DisplayHandle())  # status, streams, rich outputs
        self._shown: list[dict[str, Any]] = []
        self._items: list[dict[str, Any]] = []  # the rich outputs last drawn
        self._box: Any = None  # the ipywidgets Output, while needed
        self._lock = threading.Lock()
        self.final_request: str | None = None  # the request whose header the final drawing went with

    def show(self, state: str) -> None:
        """Create the displays; call this in the submitting cell, from the kernel's main thread."""
        with self._lock:
            self._shown = [status(self.title, state), streams_bundle({}), {"text/plain": ""}]
            for handle, bundle in zip(self._handles, self._shown, strict=True):
                display(bundle, raw=True, display_id=handle.display_id)

    def update(
        self,
        state: str,
        streams: dict[str, str] | None = None,
        rich: list[dict[str, Any]] | None = None,
        final: bool = False,
    ) -> None:
        """Redraw in place (from any thread) what changed, or everything when ``final`` (then all of it goes
        with one request's header); ``streams`` or ``rich`` None leaves them as they are."""
        with self._lock:
            if not self._shown:
                return
            if final:  # read before sending: if the kernel moves on meanwhile, the cell is only drawn once more
                self.final_request = current_request()
            # Bundles made now are made printable (what a cell showed never breaks the kernel); shown ones already are.
            redraw_rich = rich is not None or self._box is not None
            bundles = [
                printable_data(status(self.title, state)),
                printable_data(streams_bundle(streams)) if streams is not None else self._shown[1],
                printable_data(self._rich(rich, final)) if redraw_rich else self._shown[2],
            ]
            for i, (handle, bundle) in enumerate(zip(self._handles, bundles, strict=True)):
                if final or bundle != self._shown[i]:
                    self._shown[i] = bundle
                    handle.update(bundle, raw=True)
            if final and self._box is not None:
                self._box.close()
                self._box = None

    def _rich(self, items: list[dict[str, Any]] | None, final: bool) -> dict[str, Any]:
        """The rich outputs' bundle; ``items`` None: the last ones again (a widget among them may have closed)."""
        items = self._items = self._items if items is None else items
        if final or len(items) < 2 or not any(WIDGET in item for item in items):
            return compose(static(items) if final else items)
        items = [item for item in items if WIDGET not in item or widget_text(item) is not None]  # not closed
        if self._box is None:
            from ipywidgets import Output

            self._box = Output()
        self._box.outputs = tuple({"output_type": "display_data", "data": item, "metadata": {}} for item in items)
        view = {"version_major": 2, "version_minor": 0, "model_id": self._box.model_id}
        return {WIDGET: view, "text/plain": _plain(items)}

    def republish(self) -> None:
        """Send the current state again: a front-end such as nbclient drops updates sent between two cells."""
        with self._lock:
            for handle, bundle in zip(self._handles, self._shown, strict=False):
                handle.update(bundle, raw=True)
