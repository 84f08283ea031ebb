"""The picklable function that runs a task cell, and picks one of its outputs, wherever the task runs.

This module is imported on engine workers (threads, processes, Dask workers): it must not need IPython.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import traceback
import uuid
from typing import Any

from .. import context
from . import figures, per_thread_figures, task_display
from .capture import Displays, capture, running_shell
from .live import reporting


class CellCode:
    """A task cell as a picklable callable: ``CellCode(...)(**inputs)`` runs it in a fresh namespace.

    Returns ``{"outputs": {name: value}, "stdout": str, "stderr": str, "displays": [mimebundle], "value":
    mimebundle or None}``: ``displays`` are what it showed with ``display()``, ``plt.show()`` or figures it left
    open (each closed, so that no later cell shows it again).
    On failure the exception is re-raised, leaving ``{"traceback", "stdout", "stderr", "displays"}`` as the
    attempt's report (``context.report_failure``), the traceback formatted where it ran, against the cell's own
    source and line numbers.
    """

    def __init__(self, source: str, filename: str, outputs: tuple[str, ...], shows_value: bool) -> None:
        self.source = source
        self.filename = filename
        self.outputs = outputs
        self.shows_value = shows_value
        self.channel = f"nbflow-cell-{uuid.uuid4().hex}"  # what it shows while it runs goes there (``live``)

    @property
    def _nbflow_source(self) -> str:
        """What the cache hashes as this cell's code (see ``nbflow.caching.keys``)."""
        return self.source

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        per_thread_figures.per_thread()
        if running_shell() is None:  # a child process, a Dask worker: show what the kernel would show
            figures.headless()
            task_display.use_for_ipython()
            inputs = {"display": task_display.display, **inputs}  # a builtin in the kernel
        with capture() as (out, err, displays), reporting(self.channel, out, err, displays):
            before = figures.open_now()
            value = None
            try:
                outputs, value = self._run(inputs)
                shown = task_display.mimebundle(value) if value is not None else None
            except BaseException as exc:
                report = {
                    "traceback": self._format(exc),
                    "stdout": out.text(),
                    "stderr": err.text(),
                    "displays": _settled(displays),
                }
                context.report_failure(exc, report)
                raise
            finally:
                for bundle in figures.close_new(before, value):
                    displays.add(bundle)
        return {
            "outputs": outputs,
            "stdout": out.text(),
            "stderr": err.text(),
            "displays": _settled(displays),
            "value": shown,
        }

    def _nbflow_replay(self, **inputs: Any) -> dict[str, Any]:
        """``Future.replay`` (in the kernel): run the cell in the foreground — what it prints and shows appears as
        it happens, its exception is its own — in a fresh namespace of ``inputs``; returns ``{"outputs": {name:
        value}, "value": its last expression's value}``."""
        __tracebackhide__ = True  # (IPython leaves this frame out of the cell's traceback)
        outputs, value = self._run(inputs)
        return {"outputs": outputs, "value": value}

    def _run(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Run the cell in a fresh namespace of ``inputs``: the outputs it assigned, and its last expression's value
        (``None`` if it has none, or shows none). A cell with a top-level ``await`` runs on an event loop of its own
        (in a thread of its own where this thread runs one already: the kernel's, for a replay)."""
        __tracebackhide__ = True  # (IPython leaves this frame out of the cell's traceback, in a replay)
        namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, **inputs}
        body, last = self._compile()
        if (body.co_flags | (last.co_flags if last is not None else 0)) & _CO_COROUTINE:
            from ..engines.async_loop import run_to_end

            value = run_to_end(lambda: _awaited(body, last, namespace))
        else:
            exec(body, namespace)
            value = eval(last, namespace) if last is not None else None
        return {name: namespace[name] for name in self.outputs if name in namespace}, value

    def _compile(self) -> tuple[Any, Any]:
        tree = ast.parse(self.source, self.filename)
        last = None
        if self.shows_value and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = compile(ast.Expression(tree.body.pop().value), self.filename, "eval", _TOP_LEVEL_AWAIT)
        return compile(tree, self.filename, "exec", _TOP_LEVEL_AWAIT), last

    def _format(self, exc: BaseException) -> str:
        """The traceback from the cell's first frame on, with the cell's source lines."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != self.filename:
            tb = tb.tb_next
        added = self.filename not in linecache.cache  # (in the kernel it stays: the debugger shows it too)
        if added:
            self.register_source()
        try:
            return "".join(traceback.format_exception(type(exc), exc, tb))
        finally:
            if added:
                linecache.cache.pop(self.filename, None)

    def register_source(self) -> None:
        """Put the cell's source in ``linecache`` under its file name (the kernel keeps it, as IPython keeps every
        cell's), so that tracebacks and pdb show its lines."""
        lines = self.source.splitlines(keepends=True)
        linecache.cache[self.filename] = (len(self.source), None, lines, self.filename)

    def __repr__(self) -> str:
        return f"<nbflow cell {self.filename}>"


_TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT  # as in an ordinary cell (IPython's autoawait)
_CO_COROUTINE = 0x80  # a code object compiled so that running it makes a coroutine: it awaits at top level


async def _awaited(body: Any, last: Any, namespace: dict[str, Any]) -> Any:
    """The cell's statements, then its last expression, each awaited if it awaits."""
    ran = eval(body, namespace)
    if ran is not None:
        await ran
    value = eval(last, namespace) if last is not None else None
    return await value if last is not None and last.co_flags & _CO_COROUTINE else value


def _settled(displays: Displays) -> list[dict[str, Any]]:
    """The cell's displays as they stay once it ended: a widget as its text form now (a progress bar's last
    line), or left out if it was closed (a bar with ``leave=False``), for what runs no widgets."""
    items = []
    for item in displays.items:
        if task_display.WIDGET in item:
            text = task_display.widget_text(item)
            if text is None:
                continue
            item = {**item, "text/plain": text}
        items.append(item)
    return items


def pick(result: dict[str, Any], name: str) -> Any:
    """One output of a finished task cell (a task of its own, so a dependent cell gets just that value)."""
    try:
        return result["outputs"][name]
    except KeyError:
        raise NameError(f"the task cell did not assign {name!r}") from None
