"""Cache keys: a task's name, its code and the values it is called with, hashed so that only what matters counts.

Code is hashed from its source parsed with ``ast`` (comments, formatting, docstrings and decorators do not
count), plus the code of every function defined in the notebook (``__main__``) that it names, so editing a
helper invalidates its callers. Values are hashed by content: numpy arrays and pandas objects by their data,
functions by their code, a future by the cache key of the value it resolves to.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import math
import textwrap
import types
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import NbflowError


class Unknown(Exception):
    """A value whose key is not known yet (a future of a task that is not cached): hash it once it is there."""


def digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def code_hash(fn: Any, _seen: set[int] | None = None) -> str:
    """The hash of ``fn``'s code and of the notebook functions it names (recursively)."""
    seen = _seen if _seen is not None else set()
    seen.add(id(fn))
    source = getattr(fn, "_nbflow_source", None)  # a task cell's source
    namespace: Mapping[str, Any] = {}
    if source is None:
        fn = inspect.unwrap(getattr(fn, "__func__", fn))
        source = _source(fn)
        namespace = getattr(fn, "__globals__", {})
    tree = _parse(source)
    names = sorted(_names(tree, getattr(fn, "__code__", None)))  # (before normalizing drops the decorators)
    own = _normalized(tree) if tree is not None else source or _bytecode(getattr(fn, "__code__", None))
    helpers = []
    for name in names:
        helper = namespace.get(name)
        if _is_notebook_function(helper) and id(helper) not in seen:
            helpers.append(f"{name}:{code_hash(helper, seen)}".encode())
    return digest(own.encode(), *helpers)


def _source(fn: Any) -> str | None:
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None


def _parse(source: str | None) -> ast.AST | None:
    try:
        return ast.parse(source) if source is not None else None
    except SyntaxError:  # e.g. a lambda cut out of a longer line: its text (or bytecode) stands for it
        return None


def _normalized(tree: ast.AST) -> str:
    """A syntax tree without docstrings and decorators: what runs, not how it is written (changes ``tree``)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.decorator_list = []
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _bytecode(code: types.CodeType | None) -> str:
    if code is None:
        return ""
    consts = [_bytecode(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return f"{code.co_code.hex()}|{consts}|{code.co_names}"


def _names(tree: ast.AST | None, code: types.CodeType | None) -> set[str]:
    """Global names the code may call: from its syntax tree, or its bytecode where there is none."""
    if tree is not None:
        return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names: set[str] = set()
    stack = [code] if code is not None else []
    while stack:
        current = stack.pop()
        names.update(current.co_names)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return names


def _is_notebook_function(value: Any) -> bool:
    return isinstance(value, types.FunctionType) and value.__module__ == "__main__"


def value_hash(value: Any, what: str) -> str:
    """The hash of an argument's value by content; ``what`` names it in the error if it cannot be hashed."""
    h = hashlib.blake2b(digest_size=20)
    _feed(h, value, what, set())
    return h.hexdigest()


def _feed(h: Any, value: Any, what: str, seen: set[int]) -> None:
    kind = type(value)
    h.update(f"<{kind.__module__}.{kind.__qualname__}>".encode())
    if value is None or kind in (bool, int, str, bytes, complex):
        h.update(repr(value).encode())
    elif kind is float:
        h.update((repr(value) if not math.isnan(value) else "nan").encode())
    elif getattr(value, "cache_key", None) is not None and hasattr(value, "add_done_callback"):  # an nbflow future
        h.update(value.cache_key.encode())
    elif hasattr(value, "add_done_callback") and hasattr(value, "key"):
        raise Unknown(what)
    elif id(value) in seen:
        h.update(b"<cycle>")
    elif kind in (list, tuple) or isinstance(value, (list, tuple)):
        seen.add(id(value))
        h.update(str(len(value)).encode())
        for i, item in enumerate(value):
            _feed(h, item, f"{what}[{i}]", seen)
    elif isinstance(value, Mapping):
        seen.add(id(value))
        items = sorted((value_hash(k, what), k) for k in value)
        for key_hash, k in items:
            h.update(key_hash.encode())
            _feed(h, value[k], f"{what}[{k!r}]", seen)
    elif isinstance(value, (set, frozenset)):
        h.update("".join(sorted(value_hash(item, what) for item in value)).encode())
    elif isinstance(value, (types.FunctionType, types.MethodType)) or hasattr(value, "_nbflow_source"):
        h.update(code_hash(value).encode())
    elif isinstance(value, types.ModuleType):
        h.update(value.__name__.encode())
    elif _is_numpy(value):
        _feed_array(h, value, what, seen)
    elif _is_pandas(value):
        _feed_pandas(h, value, what, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        seen.add(id(value))
        for field in dataclasses.fields(value):
            h.update(field.name.encode())
            _feed(h, getattr(value, field.name), f"{what}.{field.name}", seen)
    elif kind.__module__ == "__main__" and hasattr(value, "__dict__"):  # a notebook class: its code and state
        seen.add(id(value))  # (pickling it by value would differ from one process to the next)
        tree = _parse(_source(kind))
        h.update((_normalized(tree) if tree is not None else kind.__qualname__).encode())
        _feed(h, vars(value), f"{what}.__dict__", seen)
    else:
        _feed_pickle(h, value, what)


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "tobytes")


def _feed_array(h: Any, array: Any, what: str, seen: set[int]) -> None:
    import numpy as np

    array = np.asarray(array)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    if array.dtype.hasobject:
        _feed(h, array.ravel().tolist(), what, seen)
    else:
        h.update(np.ascontiguousarray(array).tobytes())


def _is_pandas(value: Any) -> bool:
    return type(value).__module__.startswith("pandas.") and hasattr(value, "index")


def _feed_pandas(h: Any, obj: Any, what: str, seen: set[int]) -> None:
    import pandas as pd

    h.update(repr(getattr(obj, "dtypes", getattr(obj, "dtype", ""))).encode())
    h.update(repr(list(getattr(obj, "columns", [getattr(obj, "name", None)]))).encode())
    h.update(pd.util.hash_pandas_object(obj, index=True).to_numpy().tobytes())


def _feed_pickle(h: Any, value: Any, what: str) -> None:
    import cloudpickle

    try:
        h.update(cloudpickle.dumps(value, protocol=5))
    except Exception as exc:
        raise NbflowError(
            f"cannot hash argument {what} ({type(value).__name__}) for the cache ({exc}); "
            "pass cache_key=lambda *args, **kwargs: ... returning a string"
        ) from None


_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_PLAIN_SIZE = 10_000  # elements: a bigger container is data, to be passed as an argument


def _plain(value: Any, budget: list[int]) -> bool:
    """A constant: a scalar, or a small tuple of them (what a notebook tweaks between runs)."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (tuple, frozenset)):  # not lists or dicts: a task may append to one (results.append)
        return all(_plain(item, budget) for item in value)
    return False


def state_hash(fn: Any) -> str:
    """What a function reads besides its arguments and code: its closure's values, its defaults, and the
    constants of the notebook it names (``THRESHOLD = 0.5``), and the same of the notebook functions it calls,
    so changing one recomputes. Other values (a list it may append to, a dict, a model, a DataFrame) do not
    count: pass them as arguments to have them in the key."""
    parts: list[bytes] = []
    _state(fn, parts, set())
    return digest(*parts)


def _state(fn: Any, parts: list[bytes], seen: set[int]) -> None:
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    code = getattr(fn, "__code__", None)
    if code is None or id(fn) in seen:
        return
    seen.add(id(fn))
    cells = zip(code.co_freevars, fn.__closure__ or (), strict=False)
    values: list[tuple[str, Any]] = [(f"closure {name}", cell.cell_contents) for name, cell in cells if _filled(cell)]
    values += [("defaults", fn.__defaults__), ("kwdefaults", fn.__kwdefaults__)]
    namespace = getattr(fn, "__globals__", {})
    if namespace.get("__name__") == "__main__":
        values += [(name, namespace[name]) for name in sorted(_names(None, code)) if name in namespace]
    for name, value in values:
        if _is_notebook_function(value):
            _state(value, parts, seen)
        elif _plain(value, [_PLAIN_SIZE]):
            parts.append(f"{name}={value_hash(value, name)}".encode())


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
        return True
    except ValueError:
        return False


def call_key(name: str, code: str, args: tuple, kwargs: Mapping[str, Any], cache_key: Callable | None) -> str:
    """The key of one call; ``Unknown`` if an argument is a future whose key is not known yet."""
    if cache_key is not None:
        custom = cache_key(*args, **kwargs)
        if not isinstance(custom, str):
            raise NbflowError(f"cache_key must return a string, got {type(custom).__name__}")
        return digest(name.encode(), code.encode(), b"custom", custom.encode())
    parts = [value_hash(arg, f"{i} of {name}()") for i, arg in enumerate(args)]
    parts += [f"{k}={value_hash(kwargs[k], f'{k!r} of {name}()')}" for k in sorted(kwargs)]
    return digest(name.encode(), code.encode(), *(p.encode() for p in parts))
