"""What a task cell reads and assigns, found with ``ast``/``symtable`` in the kernel before it is submitted.

Kernel side only: where the task runs, ``task_cell_code`` runs the cell without this analyser.
"""

from __future__ import annotations

import ast
import dataclasses
import symtable

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
