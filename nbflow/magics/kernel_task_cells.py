"""A submitted ``%%nbflow task`` cell: its futures, its displays, and rebinding its outputs in the notebook.

Rebinding choice: when the task finishes, the engine's done callback (an engine or Dask client thread)
rebinds each output name whose value is still this cell's future (an identity check), so the notebook sees
values without running another cell. The check and the store are two steps; a cell running in the main
thread that assigns that very name in the microseconds between them would be overwritten. We accept that
window rather than deferring rebinding to the next cell. Only values of existing keys change, never the
namespace's size, so a cell iterating ``globals()`` meanwhile is not disturbed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from .. import sidechannel
from ..futures import Future, find_futures
from ..options import TaskOptions
from ..tasks import Task
from .kernel_cell_analysis import CellPlan
from .kernel_display import LIVE_LINES, CellView
from .live import Inbox
from .task_cell_code import CellCode, pick
from .terminal import printable

TICK = 0.25  # seconds between status-line refreshes while task cells are unfinished


def short_error(exc: BaseException, text: str | None = None) -> BaseException:
    """Make IPython show ``exc`` as ``text`` (default: its one-line summary) instead of a traceback."""
    lines = printable(text or summary(exc)).rstrip("\n").split("\n")
    exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]  # IPython's hook for remote errors
    return exc


def summary(exc: BaseException) -> str:
    """``ZeroDivisionError: division by zero``: the exception's class (unqualified) and message on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")


class _Output(Task):
    """The small task that picks one output of a task cell from its result: the engine runs it, but it is not
    one of the notebook's tasks (``task_counts``, ``occupancy`` and the panel count the cell once)."""

    counted = False


class TaskCell:
    """One execution of a task cell."""

    def __init__(self, shell: Any, options: TaskOptions, plan: CellPlan, code: CellCode) -> None:
        self.shell = shell
        self.options = options
        self.name = options.name
        self.plan = plan
        self.code = code
        self.future: Future | None = None  # dropped once finished, with everything else holding values
        self.outputs: dict[str, Future] = {}
        self.previous: dict[str, Any] = {}
        self.upstream: list[Future] = []
        self.view: CellView | None = None
        self.inbox = Inbox(LIVE_LINES)  # what it shows while it runs, wherever it runs
        self.settled = threading.Event()
        self.outcome = ""  # "finished" | "error" | "cancelled" once settled
        self.ran = False  # once settled: an attempt had started (a cancelled cell was stopped, not just cancelled)
        self.interrupted = False  # a wait on it was interrupted: its status line says how to stop it
        self.error: BaseException | None = None
        self.failed: Future | None = None  # once it failed: its future, which keeps the failure to debug and replay
        self.report: dict[str, Any] = {}  # stdout, stderr, traceback, value once settled
        self.cached: Any = None  # the cache entry its result was read from, if it did not run
        self._submitted = time.monotonic()
        self.ended = 0.0
        self._drawn = 0  # the inbox version last drawn
        self._lock = threading.Lock()

    def submit(self, inputs: dict[str, Any]) -> None:
        """Submit the cell and one small task per output, bind the outputs to their futures (main thread)."""
        self.upstream = find_futures(list(inputs.values()))
        self._submitted = time.monotonic()
        sidechannel.listen(self.code.channel, self.inbox.receive)
        self.code.register_source()  # (tracebacks and the debugger show the cell's lines)
        future = Task(self.code, self.options).submit(**inputs)
        self.future = future
        for name in self.plan.outputs:
            self.outputs[name] = _Output(pick, TaskOptions(name=f"{self.name}.{name}")).submit(future, name)
        ns = self.shell.user_ns
        for name, fut in self.outputs.items():
            if name in ns:
                self.previous[name] = ns[name]
            ns[name] = fut
        future.add_done_callback(self._finish)

    def not_submitted(self) -> None:
        """The submission was refused (the error is shown under the cell): the status line says so."""
        with self._lock:
            self.outcome = "not submitted"
            if self.view is not None:
                self.view.update(self.state())

    def attach_view(self) -> None:
        """Show the status line under the running cell (main thread), then keep it up to date."""
        with self._lock:
            self.view = CellView(self.name)
            self.view.show(self.state())
            if self.outcome:
                self._draw()

    def state(self) -> str:
        """The status line: queued / waiting for GPU / running on worker X / stopping / done in 3.2 s / failed ..."""
        took = f"{self.ended - self._submitted:.1f} s"
        if self.cached is not None and self.outcome == "finished":
            made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.cached.created))
            return f"cached (run of {made}, which took {self.cached.duration:.1f} s)"
        if self.outcome == "cancelled" and self.ran:
            return f"cancelled: stopped after {took}"
        if self.outcome:
            return {"finished": f"done in {took}", "error": f"failed after {took}"}.get(self.outcome, self.outcome)
        fut = self.future
        if fut is None:
            return "submitting"
        status = fut.status
        if status == "stopping":  # until its attempt has really ended (a thread in a C call: until the call returns)
            return f"stopping on {fut.worker}" if fut.worker else "stopping"
        if status == "waiting":
            line = "waiting for " + ", ".join({**self.options.resources, **self.options.limits})
        elif status == "running":
            line = f"running on {fut.worker}" if fut.worker else "running"
        else:
            upstream = [dep.name for dep in self.upstream if not dep.done()]
            line = f"waiting for {', '.join(dict.fromkeys(upstream))}" if upstream else "queued"
        if self.interrupted:
            line += f" (the wait was interrupted, not the task: %nbflow stop {self.name} stops it)"
        return line

    def refresh(self) -> None:
        """Redraw the status line, and what the cell showed so far, if they changed (called by the ticker)."""
        with self._lock:
            if self.view is not None and not self.outcome:
                inbox, changed = self.inbox, self.inbox.version != self._drawn
                self._drawn = inbox.version
                streams = inbox.streams() if changed else None
                self.view.update(self.state(), streams, list(inbox.displays) if changed else None)

    def _finish(self, fut: Future) -> None:
        """Done callback (any thread): rebind outputs, show the cell's output, wake ``%nbflow wait``."""
        sidechannel.forget(self.code.channel)
        try:
            report: dict[str, Any] = {}
            if fut.cancelled():
                outcome = "cancelled"
                self.ran = fut.worker is not None
            elif fut.exception() is not None:
                outcome, self.error, self.failed = "error", fut.exception(), fut
                report = dict(fut._failure.report if fut._failure is not None else {})
                report["traceback"] = report.get("traceback", summary(self.error)).rstrip("\n") + self._hint(fut)
            else:
                outcome, result, self.cached = "finished", fut.result(), fut.cached
                self._rebind(result["outputs"])
                report = {key: item for key, item in result.items() if key != "outputs"}
            with self._lock:
                self.ended = time.monotonic()
                self.outcome, self.report = outcome, report
                # keep no values alive: the notebook holds them now (or the failed futures do)
                self.future, self.outputs, self.previous, self.upstream = None, {}, {}, []
                if self.view is not None:
                    self._draw()
        except BaseException as exc:  # never leave a waiter hanging; say what broke
            print(f"nbflow: finishing task cell {self.name!r} failed: {exc!r}", file=sys.__stderr__)
        finally:
            self.settled.set()

    def _hint(self, fut: Future) -> str:
        """The line under a failure that says how to debug it (none for a failure with no frames of the task's)."""
        from ..debugging.kernel_debugger import debuggable

        if not debuggable(fut):
            return "\n"
        name = self.name
        return (
            f"\n(%nbflow debug {name} opens the debugger where it raised; %nbflow replay {name} runs it again here)\n"
        )

    def _rebind(self, values: dict[str, Any]) -> None:
        ns = self.shell.user_ns
        for name, fut in self.outputs.items():
            if ns.get(name) is fut:  # not reassigned meanwhile
                if name in values:
                    ns[name] = values[name]
                elif name in self.previous:  # the cell did not assign it after all (e.g. an untaken branch)
                    ns[name] = self.previous[name]

    def _draw(self) -> None:
        streams = {kind: self.report.get(kind, "") for kind in ("stdout", "stderr", "traceback")}
        assert self.view is not None
        value = self.report.get("value")
        rich = self.report.get("displays", []) + ([value] if value else [])
        self.view.update(self.state(), streams, rich, final=True)

    def republish(self) -> None:
        with self._lock:
            if self.view is not None:
                self.view.republish()

    def cancel(self) -> bool:
        """Cancel the cell if it has not started; its outputs' futures then fail with ``UpstreamError``."""
        fut = self.future
        return fut is not None and fut.cancel()

    def stop(self, grace: float) -> str:
        """Stop the cell in any state (``Future.stop``); its outputs' futures then fail with ``UpstreamError``.
        Returns its status when asked (``running``, ``pending``, ...), or how it had ended (``finished``, ...)."""
        fut = self.future
        if fut is None:  # settled
            return self.outcome
        before = fut.status
        return before if fut.stop(grace) else fut.status


class SubmittedCells:
    """The kernel's task cells, and the one thread that refreshes their status lines while any is unfinished."""

    def __init__(self) -> None:
        self._cells: list[TaskCell] = []  # not yet covered by a ``%nbflow wait`` for all
        self._by_name: dict[str, TaskCell] = {}  # the latest cell of each name
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None

    def add(self, cell: TaskCell) -> None:
        with self._lock:
            self._cells.append(cell)
            self._by_name.pop(cell.name, None)  # re-insert: lookups by output variable prefer recent cells
            self._by_name[cell.name] = cell
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="nbflow-magics-status", daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                pending = [c for c in self._cells if not c.settled.is_set()]
                if not pending:
                    self._ticker = None
                    return
            for cell in pending:
                try:
                    cell.refresh()
                except Exception as exc:  # a display the kernel refuses must not stop the other cells' redraws
                    print(f"nbflow: redrawing task cell {cell.name!r} failed: {exc!r}", file=sys.__stderr__)

    def unwaited(self) -> list[TaskCell]:
        """Task cells submitted since the last wait for all (finished or not)."""
        with self._lock:
            return list(self._cells)

    def waited(self, cells: list[TaskCell]) -> None:
        with self._lock:
            self._cells = [c for c in self._cells if c not in cells]

    def failed(self) -> list[TaskCell]:
        """Task cells that failed, the latest last."""
        with self._lock:
            return [c for c in self._by_name.values() if c.failed is not None]

    def unfinished(self) -> list[TaskCell]:
        with self._lock:
            return [c for c in self._cells if not c.settled.is_set()]  # a cell leaves _cells only once settled

    def find(self, names: Iterable[str]) -> list[TaskCell]:
        """Task cells by task name or by an output variable, latest first; an unknown name is a ``UsageError``."""
        from IPython.core.error import UsageError

        with self._lock:
            by_name = dict(self._by_name)
        found = []
        for name in names:
            cell = by_name.get(name) or next((c for c in reversed(by_name.values()) if name in c.plan.outputs), None)
            if cell is None:
                raise UsageError(f"no task cell named {name!r} (task cells: {', '.join(by_name) or 'none yet'})")
            found.append(cell)
        return found
