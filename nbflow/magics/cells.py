"""What a task cell reads and assigns (found with ``ast``/``symtable``), and the picklable function that runs it.

This module is imported on engine workers (threads, processes, Dask workers): it must not need IPython.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import linecache
import symtable
import traceback
import uuid
from typing import Any

from . import figures, registry, showing
from .capture import Displays, capture, running_shell
from .live import reporting

# Statements whose bindings may not happen: a name they bind may still be read from the notebook later.
_MAYBE = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.Match)
if hasattr(ast, "TryStar"):
    _MAYBE += (ast.TryStar,)


@dataclasses.dataclass(frozen=True)
class CellPlan:
    """A task cell's interface: names it may read from the notebook, names it assigns, whether it shows a value."""

    reads: frozenset[str]
    outputs: tuple[str, ...]
    shows_value: bool
    name_hint: str | None  # the first variable a top-level assignment binds: the task's default name


def analyze(source: str, filename: str) -> CellPlan:
    """Plan a cell from its (IPython-transformed) source; raises ``SyntaxError`` like running it would."""
    tree = ast.parse(source, filename)
    nested = _nested_reads(symtable.symtable(source, filename, "exec"))
    bound: set[str] = set()
    reads: set[str] = set()
    outputs: dict[str, None] = {}
    hint: str | None = None
    for stmt in tree.body:
        start = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
        end = stmt.end_lineno or stmt.lineno
        here = _Reads.of(stmt) | {name for line, names in nested if start <= line <= end for name in names}
        reads |= here - bound
        binds = _Binds.of(stmt)
        outputs.update(dict.fromkeys(binds))
        if hint is None and isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            hint = next(iter(binds), None)  # not a loop variable, an import or a definition
        if not isinstance(stmt, _MAYBE):
            bound.update(binds)
    last = tree.body[-1] if tree.body else None
    shows_value = isinstance(last, ast.Expr) and not source.rstrip().endswith(";") and not _prints(last.value)
    return CellPlan(frozenset(reads), tuple(outputs), shows_value, hint)


def _prints(expr: ast.expr) -> bool:
    """``print(...)``/``display(...)``: a last expression whose value (None) is not worth a display of its own."""
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("print", "display")


def _nested_reads(table: symtable.SymbolTable) -> list[tuple[int, set[str]]]:
    """For each nested scope (function, class, lambda, comprehension): its line and the globals it reads."""
    out = []
    for child in table.get_children():
        names = {s.get_name() for s in child.get_symbols() if s.is_global() and s.is_referenced()}
        out.append((child.get_lineno(), names))
        out.extend((child.get_lineno(), names) for _, names in _nested_reads(child))
    return out


class _Reads(ast.NodeVisitor):
    """Names read in module scope by one statement (nested scopes' bodies are left to ``symtable``)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    @classmethod
    def of(cls, node: ast.AST) -> set[str]:
        visitor = cls()
        visitor.visit(node)
        return visitor.names

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Store):  # Load, and Del (deleting needs the name)
            self.names.add(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.names.add(node.target.id)
        self.generic_visit(node)

    def _visit_signature(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.visit(default)
        if not isinstance(node, ast.Lambda):
            for item in [*node.decorator_list, node.returns]:
                if item is not None:
                    self.visit(item)
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    self.visit(arg.annotation)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_signature

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for item in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(item)

    def _visit_comprehension(self, node: ast.AST) -> None:
        self.visit(node.generators[0].iter)  # the only part evaluated in the enclosing scope

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension


class _Binds(ast.NodeVisitor):
    """Names one statement binds in module scope, in order."""

    def __init__(self) -> None:
        self.names: dict[str, None] = {}

    @classmethod
    def of(cls, node: ast.AST) -> list[str]:
        visitor = cls()
        visitor.visit(node)
        return list(visitor.names)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.names[node.id] = None

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:  # a bare ``x: int`` binds nothing
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.names[alias.asname or alias.name.split(".")[0]] = None

    visit_ImportFrom = visit_Import

    def _visit_scope(self, node: ast.AST) -> None:
        if not isinstance(node, ast.Lambda):
            self.names[node.name] = None
        for inner in ast.walk(node):  # a walrus in a default or decorator binds here
            if isinstance(inner, ast.NamedExpr) and isinstance(inner.target, ast.Name):
                self.names[inner.target.id] = None

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _visit_scope

    def _visit_comprehension(self, node: ast.AST) -> None:
        for inner in ast.walk(node):  # only a walrus escapes a comprehension
            if isinstance(inner, ast.NamedExpr) and isinstance(inner.target, ast.Name):
                self.names[inner.target.id] = None

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        for stmt in node.body:  # ``except E as e`` unbinds ``e`` after the handler
            self.visit(stmt)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.names[node.name] = None
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.names[node.name] = None

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.names[node.rest] = None
        self.generic_visit(node)


class CellCode:
    """A task cell as a picklable callable: ``CellCode(...)(**inputs)`` runs it in a fresh namespace.

    Returns ``{"outputs": {name: value}, "stdout": str, "stderr": str, "displays": [mimebundle], "value":
    mimebundle or None}``: ``displays`` are what it showed with ``display()``, ``plt.show()`` or figures it left
    open (each closed, so that no later cell shows it again).
    On failure the exception is re-raised with ``exc._nbflow_cell = {"traceback", "stdout", "stderr"}``,
    the traceback formatted where it ran, against the cell's own source and line numbers.
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
        namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, **inputs}
        body, last = self._compile()
        registry.per_thread()
        if running_shell() is None:  # a child process, a Dask worker: show what the kernel would show
            figures.headless()
            showing.use_for_ipython()
            namespace.setdefault("display", showing.display)  # a builtin in the kernel
        with capture() as (out, err, displays), reporting(self.channel, out, err, displays):
            before = figures.open_now()
            value = None
            try:
                exec(body, namespace)
                value = eval(last, namespace) if last is not None else None
                shown = showing.mimebundle(value) if value is not None else None
            except BaseException as exc:
                exc._nbflow_cell = {  # type: ignore[attr-defined]
                    "traceback": self._format(exc),
                    "stdout": out.text(),
                    "stderr": err.text(),
                    "displays": _settled(displays),
                }
                raise
            finally:
                for bundle in figures.close_new(before, value):
                    displays.add(bundle)
        outputs = {name: namespace[name] for name in self.outputs if name in namespace}
        return {
            "outputs": outputs,
            "stdout": out.text(),
            "stderr": err.text(),
            "displays": _settled(displays),
            "value": shown,
        }

    def _compile(self) -> tuple[Any, Any]:
        tree = ast.parse(self.source, self.filename)
        last = None
        if self.shows_value and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = compile(ast.Expression(tree.body.pop().value), self.filename, "eval")
        return compile(tree, self.filename, "exec"), last

    def _format(self, exc: BaseException) -> str:
        """The traceback from the cell's first frame on, with the cell's source lines."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != self.filename:
            tb = tb.tb_next
        lines = self.source.splitlines(keepends=True)
        linecache.cache[self.filename] = (len(self.source), None, lines, self.filename)
        try:
            return "".join(traceback.format_exception(type(exc), exc, tb))
        finally:
            linecache.cache.pop(self.filename, None)

    def __repr__(self) -> str:
        return f"<nbflow cell {self.filename}>"


def _settled(displays: Displays) -> list[dict[str, Any]]:
    """The cell's displays as they stay once it ended: a widget as its text form now (a progress bar's last
    line), or left out if it was closed (a bar with ``leave=False``), for what runs no widgets."""
    items = []
    for item in displays.items:
        if showing.WIDGET in item:
            text = showing.widget_text(item)
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
