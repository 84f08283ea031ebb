"""Text and HTML summaries of an occupancy snapshot: ``%nbflow status``, ``nbflow status`` and the panel's
fallback where no widget manager runs (nbconvert, nbval, GitHub); and how a limit's holder reads everywhere
(these summaries, ``%nbflow limits``, ``nbflow status`` and ``LimitTimeout``)."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping
from typing import Any

from .machine_limits.status import Holder
from .specs import size_text


def format_amount(resource: str, amount: float) -> str:
    """``2``, ``0.5``, or decimal bytes for ``MEMORY`` (``70 GB``), as the user wrote them."""
    if resource.upper() == "MEMORY" and amount >= 1000:
        return size_text(amount)
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


def holder_fields(holder: Holder, limit: str, *, exact: bool = False) -> tuple[str, str, str]:
    """(``pid@host``, task or ``-``, amount) of a holder of ``limit``; ``exact`` writes the amount as ``%g``, as
    the numbers around it are written in a table or an error message (else ``format_amount``: ``70 GB``)."""
    amount = f"{holder.amount:g}" if exact else format_amount(limit, holder.amount)
    return f"{holder.pid}@{holder.host}", holder.task or "-", amount


def format_holder(holder: Holder, limit: str, now: float | None = None, *, exact: bool = False) -> str:
    """``pid 42@box task fit holds 1 (slot 0) for 3.2 s``: one holder on one line. Without ``now`` the
    duration is left out; ``exact`` (an error message) quotes the task and writes the amount as ``%g``."""
    who, task, amount = holder_fields(holder, limit, exact=exact)
    slots = f" (slot {','.join(map(str, holder.slots))})" if holder.slots else ""
    held = f" for {format_duration(now - holder.since)}" if now is not None else ""
    return f"pid {who} task {repr(task) if exact else task} holds {amount}{slots}{held}"


def used_text(resource: str, used: float, total: float | None) -> str:
    """``1/2``; ``1/-`` when there is no capacity (a rate limit)."""
    return f"{format_amount(resource, used)}/{'-' if total is None else format_amount(resource, total)}"


def rate_fields(rate: str | None, burst: int, next_start: float) -> tuple[str, str, str]:
    """(rate, burst, next start) of a limit as shown in tables: ``10/s``, ``3``, ``now`` or ``in 0.3 s``; ``-`` for
    each when it has no rate."""
    if rate is None:
        return "-", "-", "-"
    return rate, str(burst), "now" if next_start <= 0 else f"in {format_duration(next_start)}"


def rate_summary(rate: str | None, burst: int, next_start: float) -> str:
    """``rate 10/s (burst 3), next start now``; ``""`` without a rate."""
    if rate is None:
        return ""
    rate, burst_text, start = rate_fields(rate, burst, next_start)
    return f"rate {rate}{f' (burst {burst_text})' if burst != 1 else ''}, next start {start}"


def _header(snap: Mapping[str, Any]) -> list[str]:
    taken = time.strftime("%H:%M:%S", time.localtime(snap.get("time") or time.time()))
    lines = [f"nbflow monitor · {snap.get('engine', '?')} engine · {taken}"]
    if snap.get("error"):
        lines.append(f"error: {snap['error']}")
    tasks = snap.get("tasks") or {}
    lines.append("tasks: " + (", ".join(f"{n} {status}" for status, n in tasks.items()) or "none"))
    return lines


def _natural(name: str) -> list[str | int]:
    """Sort key putting worker 2 before worker 10, as the live view does."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _worker_rows(snap: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(name, host, resources, counts) per worker."""
    rows = []
    for worker in sorted(snap.get("workers") or (), key=lambda w: _natural(str(w.get("name", "")))):
        uses = worker.get("resources") or {}
        bars = ", ".join(f"{name} {used_text(name, use['used'], use['total'])}" for name, use in uses.items())
        counts = ", ".join(f"{worker.get(what, 0)} {what}" for what in ("running", "waiting", "queued"))
        gpus = "".join(f", {use['task']} on GPU {use['ids']}" for use in worker.get("gpus") or ())
        rows.append((str(worker.get("name", "?")), str(worker.get("host", "")), bars or "no resources", counts + gpus))
    return rows


def _limit_rows(snap: Mapping[str, Any]) -> list[tuple[str, str, str, str, list[str]]]:
    """(name, used/capacity, rate, waiting, holder lines) per limit."""
    now = snap.get("time") or time.time()
    rows = []
    for lim in snap.get("limits") or ():
        name = lim["name"]
        holders = [format_holder(Holder.from_dict(h), name, now) for h in lim.get("holders") or ()]
        shown = f"{name} (cluster)" if lim.get("scope") == "cluster" else name
        rate = rate_summary(lim.get("rate"), lim.get("burst", 1), lim.get("next_start", 0.0))
        used = used_text(name, lim["used"], lim["capacity"])
        rows.append((shown, used, rate, f"{lim.get('waiting', 0)} waiting", holders))
    return rows


def render_text(snap: Mapping[str, Any]) -> str:
    """A plain-text summary of a snapshot (the ``text/plain`` fallback, also handy in logs)."""
    out = _header(snap)
    workers = _worker_rows(snap)
    if workers:
        out.append("workers:")
        out += [f"  {name}{f' ({host})' if host else ''}: {bars} · {counts}" for name, host, bars, counts in workers]
    limits = _limit_rows(snap)
    if limits:
        out.append("limits:")
        for name, used, rate, waiting, holders in limits:
            out.append(f"  {name} {used}{rate and ', '}{rate}, {waiting}")
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
    limits = [
        (name, used, rate or "-", waiting, "; ".join(holders) or "-")
        for name, used, rate, waiting, holders in _limit_rows(snap)
    ]
    if limits:
        parts.append(_table(("limit", "used/capacity", "rate", "waiting", "holders"), limits))
    return '<div class="nbflow-static">' + "".join(parts) + "</div>"
