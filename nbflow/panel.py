"""The live occupancy panel: an anywidget fed by one shared background poller.

Imported on first use of ``nbflow.monitor()`` (it imports ``anywidget``); the summaries it shows where no
widget can run are in the light ``nbflow.render`` module.

The kernel sends one snapshot per tick as a single synced trait, and only when something other than its
timestamp changed; the front-end (``widgets/monitor.js``) computes "held for" from its own clock. With the
engine's own occupancy, the snapshot lists the tasks that run (or are stopping), each with a stop button: a
click sends ``{"stop": key}`` to the kernel, which calls that task's ``Future.stop()``.
"""

from __future__ import annotations

import atexit
import importlib.resources
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import anywidget
import traitlets

from .render import render_html, render_text
from .specs import duration

Source = Callable[[], Mapping[str, Any]]


def _asset(name: str) -> str:
    return importlib.resources.files("nbflow.widgets").joinpath(name).read_text(encoding="utf-8")


RUNNING_ROWS = 50  # running tasks listed at most; the task counts say how many more there are


def _occupancy() -> Mapping[str, Any]:
    """The engine's occupancy, and the tasks it runs now (each row gets a stop button)."""
    from .engines import engine

    eng = engine()
    running = [
        {"key": fut.key, "name": fut.name, "status": fut.status, "worker": fut.worker}
        for fut in eng.running_futures(RUNNING_ROWS)
    ]
    return {**eng.occupancy(), "running": running}


def stop_task(key: str) -> bool:
    """Stop the running task whose future has ``key`` (the panel's stop button); False if none runs now."""
    from .engines import engine

    for fut in engine().running_futures():
        if fut.key == key:
            return fut.stop()
    return False


class Monitor(anywidget.AnyWidget):
    """A panel of ``nbflow.occupancy()``: per worker a bar per resource, task counts, limit holders.

    It refreshes every ``interval`` seconds from a background thread shared by all panels, until
    ``close()``. ``source`` replaces ``nbflow.occupancy`` (any callable returning the same shape).
    """

    _esm = _asset("monitor.js")
    _css = _asset("monitor.css")
    snapshot = traitlets.Dict().tag(sync=True)

    def __init__(self, interval: float | str = 0.5, source: Source | None = None) -> None:
        self.interval = duration(interval, "monitor interval")
        self.source: Source = source or _occupancy
        super().__init__(snapshot=take_snapshot(self.source, {}))
        self._due = time.monotonic() + self.interval
        self.on_msg(self._on_message)
        _poller.add(self)

    def refresh(self, snapshot: Mapping[str, Any] | None = None) -> bool:
        """Show ``snapshot`` (default: a fresh one); sends it only if more than its time changed."""
        snap = dict(snapshot) if snapshot is not None else take_snapshot(self.source, self.snapshot)
        old = self.snapshot
        if {**snap, "time": old.get("time")} == old:
            return False
        self.snapshot = snap
        return True

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """A stop button was clicked: stop that task, and show its new status at once rather than next tick."""
        key = content.get("stop") if isinstance(content, dict) else None
        if isinstance(key, str):
            stop_task(key)
            _poller.wake(self)

    def close(self) -> None:
        """Stop refreshing (the shared poller stops with the last panel) and remove the views."""
        _poller.remove(self)
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget view, plus a static text and HTML summary for nbconvert, nbval and GitHub."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, metadata = bundle
        data = {**data, "text/plain": render_text(self.snapshot), "text/html": render_html(self.snapshot)}
        return data, metadata


def take_snapshot(source: Source, last: Mapping[str, Any]) -> dict[str, Any]:
    """``source()`` as a plain dict; on failure the last snapshot with an ``error`` line, so the panel lives on."""
    try:
        return dict(source())
    except Exception as exc:  # a dropped scheduler must not kill the poller
        return {**last, "time": time.time(), "error": f"{type(exc).__name__}: {exc}"}


class _Poller:
    """One daemon thread refreshing every live panel: started by the first, stopped with the last.

    Panels are held weakly; each tick takes one snapshot per distinct source among the panels that are due.
    """

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._panels: weakref.WeakSet[Monitor] = weakref.WeakSet()
        self._thread: threading.Thread | None = None

    def add(self, panel: Monitor) -> None:
        start = None
        with self._wake:
            self._panels.add(panel)
            if self._thread is None:
                start = self._thread = threading.Thread(target=self._run, name="nbflow-monitor", daemon=True)
            self._wake.notify()
        if start is not None:  # outside the lock: a panel collected meanwhile (__del__ closes it) takes it too
            start.start()

    def wake(self, panel: Monitor) -> None:
        """Refresh ``panel`` now (from the poller's thread, which sends every update)."""
        with self._wake:
            panel._due = time.monotonic()
            self._wake.notify()

    def remove(self, panel: Monitor) -> None:
        with self._wake:
            self._panels.discard(panel)
            if self._panels:
                return
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (it finishes the tick it is in); also called at interpreter exit."""
        with self._wake:
            thread, self._thread = self._thread, None
            self._wake.notify()
        if thread is not None and thread is not threading.current_thread() and thread.ident is not None:
            thread.join(timeout)  # (one not started yet ends at once when it starts: it is no longer current)

    def _due(self) -> list[Monitor] | None:
        """The panels due now; waits until one is. ``None`` once this thread should end."""
        me = threading.current_thread()
        with self._wake:
            while self._thread is me:
                panels = list(self._panels)
                if not panels:
                    self._thread = None
                    break
                now = time.monotonic()
                # wake for the first panel due; any other due within a quarter of its interval joins the tick,
                # after which panels with one interval stay in step (one snapshot serves them all)
                due = [panel for panel in panels if panel._due - now <= panel.interval / 4]
                if due:
                    return due
                self._wake.wait(min(panel._due for panel in panels) - now)
        return None

    def _run(self) -> None:
        while (due := self._due()) is not None:
            self._tick(due)
            del due  # no strong reference to a panel while waiting

    @staticmethod
    def _tick(due: list[Monitor]) -> None:
        start = time.monotonic()
        snapshots: dict[Source, dict[str, Any]] = {}
        for panel in due:
            if panel.source not in snapshots:
                snapshots[panel.source] = take_snapshot(panel.source, panel.snapshot)
            try:
                panel.refresh(snapshots[panel.source])
            except Exception:  # one panel that cannot send must not stop the thread serving the others
                logging.getLogger(__name__).exception("refreshing the nbflow panel %s failed", panel.model_id)
            panel._due = start + panel.interval


_poller = _Poller()
atexit.register(_poller.stop)
