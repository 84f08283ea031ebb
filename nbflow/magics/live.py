"""What a task cell shows while it runs, wherever it runs: reported to the kernel a few times a second.

Where the cell runs (a thread of the kernel, a child process, a Dask worker) one reporter thread looks at
each running cell every ``TICK`` and sends what is new through ``nbflow.sidechannel``: the text written
since the last report, and the displays when they changed. What is sent is proportional to what was
printed: past ``CHUNK`` characters in one tick only the end is sent, since only the tail shows while the
cell runs (all of it shows when it ends, from its result). In the kernel an ``Inbox`` replays the text
onto screens of its own, keeping their tails.

This module is imported where task cells run: it must not need IPython.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import sidechannel
from .capture import Displays
from .terminal import Screen

TICK = 0.1
CHUNK = 8 * 1024  # about LIVE_LINES lines of 80 characters
STREAMS = ("stdout", "stderr")


class _Outbox:
    """One running cell, seen by the reporter: its screens (recording what is written) and displays."""

    def __init__(self, channel: str, out: Screen, err: Screen, displays: Displays) -> None:
        self.channel = channel
        self.screens = out, err
        self.displays = displays
        self.version = 0  # of the displays last sent
        self.clears = 0  # of the screens, as last sent
        out.fresh, err.fresh = [], []

    def report(self) -> dict[str, Any]:
        """What is new since the last report: ``{"stdout": (lines skipped or None, text), "displays": [...]}``."""
        report: dict[str, Any] = {}
        clears = sum(screen.clears for screen in self.screens)
        if clears != self.clears:  # clear_output(): what was sent before it is gone
            self.clears = report["clear"] = clears
        for kind, screen in zip(STREAMS, self.screens, strict=True):
            text = screen.take()
            if len(text) > CHUNK:  # only the tail shows live: send from the first line begun in the last CHUNK
                cut = text.find("\n", len(text) - CHUNK)
                cut = cut + 1 if cut >= 0 else len(text) - CHUNK  # (or the end of one very long line)
                report[kind] = (text.count("\n", 0, cut), text[cut:])
            elif text:
                report[kind] = (None, text)
        if self.displays.version != self.version:
            self.version = self.displays.version
            report["displays"] = list(self.displays.items)
        return report


class _Reporter:
    """The process's reporter thread: runs while cells run, sends nothing in a tick where nothing changed."""

    def __init__(self) -> None:
        self._boxes: dict[int, _Outbox] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, box: _Outbox) -> None:
        with self._lock:
            self._boxes[id(box)] = box
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="nbflow-cell-output", daemon=True)
                self._thread.start()

    def remove(self, box: _Outbox) -> None:
        with self._lock:
            self._boxes.pop(id(box), None)

    def _serve(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                boxes = list(self._boxes.values())
                if not boxes:
                    self._thread = None
                    return
            for box in boxes:
                try:
                    report = box.report()
                    if report:
                        sidechannel.send(box.channel, report)
                except Exception as exc:  # one cell's report that cannot travel must not stop the others'
                    print(f"nbflow: live output of a task cell could not be sent: {exc!r}", file=sys.__stderr__)


_reporter = _Reporter()


@contextlib.contextmanager
def reporting(channel: str, out: Screen, err: Screen, displays: Displays) -> Iterator[None]:
    """Report what a cell writes to ``out``/``err`` and shows in ``displays`` on ``channel`` while it runs."""
    box = _Outbox(channel, out, err, displays)
    _reporter.add(box)
    try:
        yield
    finally:
        _reporter.remove(box)
        out.fresh = err.fresh = None


class Inbox:
    """The kernel's view of a running cell: the tails of its streams and its displays, as last reported."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._screens = {kind: Screen() for kind in STREAMS}
        self.displays: list[dict[str, Any]] = []
        self.version = 0  # bumps when anything changed
        self._lock = threading.Lock()

    def receive(self, report: dict[str, Any]) -> None:
        with self._lock:
            for kind, screen in self._screens.items():
                if "clear" in report:
                    screen.clear()
                if kind in report:
                    skipped, text = report[kind]
                    if skipped is not None:
                        screen.skip(skipped)
                    screen.write(text)
                    screen.trim(self._keep)
            if "displays" in report:
                self.displays = report["displays"]
            self.version += 1

    def streams(self) -> dict[str, str]:
        """The last lines of each stream, each led by a note of how many earlier lines are left out."""
        shown = {}
        with self._lock:
            for kind, screen in self._screens.items():
                hidden, text = screen.tail(self._keep)
                note = f"[nbflow] ... {hidden} earlier lines (all of them show when the cell ends)\n" if hidden else ""
                shown[kind] = note + text
        return shown
