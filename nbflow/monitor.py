"""The live occupancy panel (SPEC §5): an anywidget fed by one shared background poller.

The kernel sends one snapshot per tick as a single synced trait, and only when something other than its
timestamp changed; the front-end (``widgets/monitor.js``) computes "held for" from its own clock.
"""

from __future__ import annotations

import atexit
import html
import importlib.resources
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import anywidget
import traitlets

Source = Callable[[], Mapping[str, Any]]


def _asset(name: str) -> str:
    return importlib.resources.files("nbflow.widgets").joinpath(name).read_text(encoding="utf-8")


def _occupancy() -> Mapping[str, Any]:
    import nbflow

    return nbflow.occupancy()


class Monitor(anywidget.AnyWidget):
    """A panel of ``nbflow.occupancy()``: per worker a bar per resource, task counts, limit holders.

    It refreshes every ``interval`` seconds from a background thread shared by all panels, until
    ``close()``. ``source`` replaces ``nbflow.occupancy`` (any callable returning the same shape).
    """

    _esm = _asset("monitor.js")
    _css = _asset("monitor.css")
    snapshot = traitlets.Dict().tag(sync=True)

    def __init__(self, interval: float = 0.5, source: Source | None = None) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise ValueError(f"monitor interval must be seconds > 0, got {interval!r}")
        self.interval = float(interval)
        self.source: Source = source or _occupancy
        super().__init__(snapshot=take_snapshot(self.source, {}))
        self._due = time.monotonic() + self.interval
        _poller.add(self)

    def refresh(self, snapshot: Mapping[str, Any] | None = None) -> bool:
        """Show ``snapshot`` (default: a fresh one); sends it only if more than its time changed."""
        snap = dict(snapshot) if snapshot is not None else take_snapshot(self.source, self.snapshot)
        old = self.snapshot
        if {**snap, "time": old.get("time")} == old:
            return False
        self.snapshot = snap
        return True

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

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def add(self, panel: Monitor) -> None:
        with self._wake:
            self._panels.add(panel)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbflow-monitor", daemon=True)
                self._thread.start()
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
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

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
                due = [panel for panel in panels if panel._due <= now]
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
        snapshots: dict[Source, dict[str, Any]] = {}
        for panel in due:
            if panel.source not in snapshots:
                snapshots[panel.source] = take_snapshot(panel.source, panel.snapshot)
            panel.refresh(snapshots[panel.source])
            panel._due = time.monotonic() + panel.interval


_poller = _Poller()
atexit.register(_poller.stop)


# --- static fallback -------------------------------------------------------------------------------


_BYTE_UNITS = ("kB", "MB", "GB", "TB", "PB")


def format_amount(resource: str, amount: float) -> str:
    """``2``, ``0.5``, or decimal bytes for ``MEMORY`` (``70 GB``), as the user wrote them."""
    if resource.upper() == "MEMORY" and abs(amount) >= 1000:
        unit = 0
        while abs(amount) >= 1000 and unit < len(_BYTE_UNITS):
            amount /= 1000
            unit += 1
        return f"{amount:.3g} {_BYTE_UNITS[unit - 1]}"
    return f"{amount:.3g}" if amount != int(amount) else str(int(amount))


def format_duration(seconds: float) -> str:
    """``3.2 s``, ``4 min 05 s``, ``2 h 10 min``."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _used_of(resource: str, used: float, total: float) -> str:
    return f"{format_amount(resource, used)}/{format_amount(resource, total)}"


def _header(snap: Mapping[str, Any]) -> list[str]:
    taken = time.strftime("%H:%M:%S", time.localtime(snap.get("time") or time.time()))
    lines = [f"nbflow monitor · {snap.get('engine', '?')} engine · {taken}"]
    if snap.get("error"):
        lines.append(f"error: {snap['error']}")
    tasks = snap.get("tasks") or {}
    lines.append("tasks: " + (", ".join(f"{n} {status}" for status, n in tasks.items()) or "none"))
    return lines


def _worker_rows(snap: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(name, host, resources, counts) per worker."""
    rows = []
    for worker in snap.get("workers") or ():
        uses = worker.get("resources") or {}
        bars = ", ".join(f"{name} {_used_of(name, use['used'], use['total'])}" for name, use in uses.items())
        counts = ", ".join(f"{worker.get(what, 0)} {what}" for what in ("running", "waiting", "queued"))
        rows.append((str(worker.get("name", "?")), str(worker.get("host", "")), bars or "no resources", counts))
    return rows


def _limit_rows(snap: Mapping[str, Any]) -> list[tuple[str, str, str, list[str]]]:
    """(name, used/capacity, waiting, holder lines) per machine limit."""
    now = snap.get("time") or time.time()
    rows = []
    for lim in snap.get("limits") or ():
        name = lim["name"]
        holders = [
            f"pid {h['pid']}@{h['host']} task {h.get('task') or '-'} holds {format_amount(name, h['amount'])}"
            f" for {format_duration(now - h['since'])}"
            for h in lim.get("holders") or ()
        ]
        rows.append((name, _used_of(name, lim["used"], lim["capacity"]), f"{lim.get('waiting', 0)} waiting", holders))
    return rows


def render_text(snap: Mapping[str, Any]) -> str:
    """A plain-text summary of a snapshot (the ``text/plain`` fallback, also handy in logs)."""
    out = _header(snap)
    workers = _worker_rows(snap)
    if workers:
        out.append("workers:")
        out += [f"  {name} ({host}): {bars} · {counts}" for name, host, bars, counts in workers]
    limits = _limit_rows(snap)
    if limits:
        out.append("limits:")
        for name, used, waiting, holders in limits:
            out.append(f"  {name} {used}, {waiting}")
            out += [f"    {holder}" for holder in holders]
    return "\n".join(out)


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def render_html(snap: Mapping[str, Any]) -> str:
    """A static HTML summary: what GitHub and nbconvert show where the live widget cannot run."""
    title, *info = _header(snap)
    parts = [f"<strong>{html.escape(title)}</strong>"] + [f"<div>{html.escape(line)}</div>" for line in info]
    workers = _worker_rows(snap)
    if workers:
        parts.append(_table(("worker", "host", "resources used/total", "tasks"), workers))
    limits = [(name, used, waiting, "; ".join(holders) or "-") for name, used, waiting, holders in _limit_rows(snap)]
    if limits:
        parts.append(_table(("limit", "used/capacity", "waiting", "holders"), limits))
    return '<div class="nbflow-static">' + "".join(parts) + "</div>"
