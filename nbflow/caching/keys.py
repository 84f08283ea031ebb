"""Cache keys: a task's name, its code and the values it is called with, hashed so that only what matters counts.

A function counts by its compiled code (not its line numbers, comments, formatting, docstring or decorators)
and by what it computes with besides its arguments: the object a method is bound to, its closure's values, its
defaults, and the functions, classes and constants of the notebook (``__main__``) it names, recursively. A task
cell counts by its source, parsed. Values are hashed by content: numpy arrays and pandas objects by their data,
an instance of a notebook class by its class's code and its attributes, a future by the cache key of the value
it resolves to. Where nbflow cannot tell two values apart it raises rather than guess: a wrong hit is worse than
a miss.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import math
import sys
import types
import weakref
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


def code_hash(fn: Any) -> str:
    """The hash of ``fn``'s own code: a task cell's parsed source, a function's compiled code; another callable
    (a ``functools.partial``, an object with ``__call__``) counts by its value, in ``state_hash``."""
    source = getattr(fn, "_nbflow_source", None)
    if source is not None:
        return digest(_normalized(ast.parse(source)).encode())
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return _code(code)[0].decode() if code is not None else digest(type(fn).__qualname__.encode())


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


_codes: dict[int, tuple[weakref.ref, bytes, tuple[str, ...]]] = {}  # id(code) -> (code, its hash, names)


def _code(code: types.CodeType) -> tuple[bytes, tuple[str, ...]]:
    """A code object's hash and the global names it may read, once per code object (a hit hashes its task's
    helpers on every call). The compiled code, not the source: two lambdas of one line differ, and a class made
    in a notebook, whose source ``inspect`` cannot find, counts by its methods' code."""
    found = _codes.get(id(code))
    if found is None or found[0]() is not code:
        parts: list[bytes] = []
        names: set[str] = set()
        _compiled(code, parts, names)
        ref = weakref.ref(code, functools.partial(_forget, id(code)))
        found = _codes[id(code)] = (ref, digest(*parts).encode(), tuple(sorted(names)))
    return found[1], found[2]


def _forget(key: int, _: weakref.ref) -> None:
    _codes.pop(key, None)


_HAS_DOCSTRING = getattr(inspect, "CO_HAS_DOCSTRING", None)  # Python >= 3.14


def _compiled(code: types.CodeType, parts: list[bytes], names: set[str]) -> None:
    """What ``code`` does: its bytecode, names, signature and constants, nested code included; not its line
    numbers nor its docstring."""
    consts = code.co_consts
    if _HAS_DOCSTRING is not None:
        consts = consts[1:] if code.co_flags & _HAS_DOCSTRING else consts
    elif code.co_flags & inspect.CO_NEWLOCALS and not code.co_name.startswith("<"):  # a ``def``: up to 3.13 its
        consts = consts[1:]  # first constant is its docstring or None (a lambda's or comprehension's is not)
    flags = code.co_flags & ~(_HAS_DOCSTRING or 0)
    layout = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, flags)
    parts.append(repr((layout, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode())
    parts.append(code.co_code)
    names.update(code.co_names)
    for const in consts:
        if isinstance(const, types.CodeType):
            _compiled(const, parts, names)
        elif isinstance(const, frozenset):  # (its repr's order changes from one process to the next)
            parts.append(f"frozenset{sorted(repr(item) for item in const)}".encode())
        else:
            parts.append(f"{type(const).__name__}:{const!r}".encode())


def _notebook(value: Any) -> bool:
    """Defined in the notebook (or the ``__main__`` script): its code is not in any file the key could name."""
    return getattr(value, "__module__", None) == "__main__"


def _helper(value: Any) -> Any:
    """The notebook function behind a global a function names (an ``nbflow.task`` wraps one), else None."""
    if isinstance(value, types.FunctionType):
        return value if _notebook(value) else None
    if hasattr(value, "__wrapped__") and callable(value):
        try:
            inner = inspect.unwrap(value)
        except ValueError:  # a proxy whose ``__wrapped__`` never ends
            return None
        return inner if isinstance(inner, types.FunctionType) and _notebook(inner) else None
    return None


def value_hash(value: Any, what: str) -> str:
    """The hash of an argument's value by content; ``what`` names it in the error if it cannot be hashed."""
    h = hashlib.blake2b(digest_size=20)
    _feed(h, value, what, {})
    return h.hexdigest()


Seen = dict[int, tuple[int, Any]]  # id -> (order, the object, kept alive so that its id is not reused)


def _again(h: Any, value: Any, seen: Seen) -> bool:
    """True (and the hash says which earlier object it is) if ``value`` was hashed before: cycles end here."""
    earlier = seen.get(id(value))
    if earlier is not None:
        h.update(f"<same as {earlier[0]}>".encode())
        return True
    seen[id(value)] = (len(seen), value)
    return False


_SCALARS = (bool, int, float, complex, str, bytes)


def _feed(h: Any, value: Any, what: str, seen: Seen) -> None:
    kind = type(value)
    h.update(f"<{kind.__module__}.{kind.__qualname__}>".encode())
    if kind is float:
        h.update((repr(value) if not math.isnan(value) else "nan").encode())
        return
    if value is None or kind in _SCALARS:
        h.update(repr(value).encode())
        return
    if getattr(value, "cache_key", None) is not None and hasattr(value, "add_done_callback"):  # an nbflow future
        h.update(value.cache_key.encode())
        return
    if hasattr(value, "add_done_callback") and hasattr(value, "key"):
        raise Unknown(what)
    if isinstance(value, (types.FunctionType, types.MethodType)):
        _feed_function(h, value, what, seen, strict=True)
        return
    if isinstance(value, type) and _notebook(value):
        _feed_class(h, value, what, seen, strict=True)
        return
    if _again(h, value, seen):  # (functions and classes see to their own cycles)
        return
    if kind.__module__ == "__main__":  # an instance of a notebook class: its class's code counts too
        _feed_class(h, kind, what, seen, strict=True)
    if isinstance(value, (list, tuple)):
        h.update(str(len(value)).encode())
        for i, item in enumerate(value):
            _feed(h, item, f"{what}[{i}]", seen)
    elif isinstance(value, Mapping):  # in its order: a task may depend on it (``list(d)``)
        h.update(str(len(value)).encode())
        for k in value:
            _feed(h, k, f"{what} key", seen)
            _feed(h, value[k], f"{what}[{k!r}]", seen)
    elif isinstance(value, (set, frozenset)):
        h.update("".join(sorted(value_hash(item, what) for item in value)).encode())
    elif hasattr(value, "_nbflow_source"):
        h.update(code_hash(value).encode())
    elif isinstance(value, functools.partial):
        _feed(h, (value.func, value.args, value.keywords), what, seen)
    elif isinstance(value, types.ModuleType):
        h.update(value.__name__.encode())
    elif _is_numpy(value):
        _feed_array(h, value, what, seen)
    elif _is_pandas(value):
        _feed_pandas(h, value, what, seen)
    elif isinstance(value, _SCALARS):  # of a subclass (a notebook's ``Meters(float)``, an ``IntEnum``): its value
        base = next(b for b in _SCALARS if isinstance(value, b))
        h.update(base.__repr__(value).encode())  # (not ``str(value)``: the subclass may change that)
        _feed(h, getattr(value, "__dict__", None), f"{what}.__dict__", seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            h.update(field.name.encode())
            _feed(h, getattr(value, field.name), f"{what}.{field.name}", seen)
    elif kind.__module__ == "__main__":  # its attributes (pickling it by value would differ between processes)
        _feed(h, getattr(value, "__dict__", None), f"{what}.__dict__", seen)
        slots = [name for cls in kind.__mro__ for name in getattr(cls, "__slots__", ()) if hasattr(value, name)]
        _feed(h, {name: getattr(value, name) for name in slots}, what, seen)
    else:
        _feed_pickle(h, value, what)


def _feed_function(h: Any, fn: Any, what: str, seen: Seen, strict: bool) -> None:
    """A function by its code and what it computes with besides its arguments: the object a method is bound
    to, its closure's values and its defaults, and the notebook's functions, classes and constants it names,
    recursively. ``strict``: those values are hashed whatever they are (a function passed as an argument, an
    instance's class); else only constants count, as documented for a task's own function."""
    if isinstance(fn, types.MethodType):
        _feed(h, fn.__self__, f"{what} (the object it is bound to)", seen)
        fn = fn.__func__
    code = getattr(fn, "__code__", None)  # (not unwrapped: a decorator's wrapper counts, and what it wraps)
    if code is None:  # a builtin
        _feed_pickle(h, fn, what)
        return
    if _again(h, fn, seen):
        return
    own, names = _code(code)
    h.update(own)
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        _feed_read(h, f"closure {name}", value, what, seen, strict)
    for i, value in enumerate(getattr(fn, "__defaults__", None) or ()):
        _feed_read(h, f"default {i}", value, what, seen, strict)
    for name, value in sorted((getattr(fn, "__kwdefaults__", None) or {}).items()):
        _feed_read(h, f"default {name}", value, what, seen, strict)
    namespace = getattr(fn, "__globals__", None) or {}  # (a compiled function may have none)
    if namespace.get("__name__") == "__main__":
        for name in names:
            if name in namespace:
                _feed_read(h, name, namespace[name], what, seen, strict, others=False)


def _feed_read(h: Any, name: str, value: Any, what: str, seen: Seen, strict: bool, others: bool = True) -> None:
    """One value a function reads besides its arguments (see ``_feed_function``); ``others``: whether a value
    that is not a constant, a notebook function or class counts (a closure's, a default), if ``strict``."""
    helper = _helper(value)
    if helper is not None:
        h.update(name.encode())
        _feed_function(h, helper, f"{what} ({name})", seen, strict)
    elif isinstance(value, type) and _notebook(value):
        h.update(name.encode())
        _feed_class(h, value, f"{what} ({name})", seen, strict)
    elif (strict and others) or _plain(value, [_PLAIN_SIZE]):
        h.update(name.encode())
        _feed(h, value, f"{what} ({name})", seen)
    elif others:
        h.update(f"{name}<not counted>".encode())


def _feed_class(h: Any, cls: type, what: str, seen: Seen, strict: bool) -> None:
    """A notebook class by its bases, its methods' code and its attributes, from its ``__dict__`` (``inspect``
    cannot find the source of a class made in a kernel)."""
    if _again(h, cls, seen):
        return
    h.update(cls.__qualname__.encode())
    for base in cls.__bases__:
        if _notebook(base):
            _feed_class(h, base, what, seen, strict)
        else:
            h.update(f"{base.__module__}.{base.__qualname__}".encode())
    for name, attr in sorted(vars(cls).items()):
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        elif isinstance(attr, functools.cached_property):
            attr = attr.func
        functions = [attr.fget, attr.fset, attr.fdel] if isinstance(attr, property) else [attr]
        if any(isinstance(f, types.FunctionType) for f in functions):
            for f in functions:
                h.update(name.encode())
                if f is not None:
                    _feed_function(h, f, f"{what}.{name}", seen, strict)
        elif not (name.startswith("_") and name.endswith("_")):  # not ``__module__``, ``__doc__``, enum internals
            # other class attributes are the class's globals: constants count, shared objects do not
            _feed_read(h, name, attr, f"{what}.{cls.__qualname__}", seen, strict=False)


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "tobytes")


def _feed_array(h: Any, array: Any, what: str, seen: Seen) -> None:
    import numpy as np

    array = np.asarray(array)
    dtype = array.dtype
    h.update(f"{dtype.str}{dtype.descr if dtype.fields else ''}{array.shape}".encode())  # fields: names, offsets
    if array.dtype.hasobject:
        _feed(h, array.ravel().tolist(), what, seen)
    else:
        h.update(np.ascontiguousarray(array).tobytes())


def _is_pandas(value: Any) -> bool:
    return type(value).__module__.startswith("pandas.") and hasattr(value, "index")


def _feed_pandas(h: Any, obj: Any, what: str, seen: Seen) -> None:
    import pandas as pd

    h.update(repr(getattr(obj, "dtypes", getattr(obj, "dtype", ""))).encode())
    h.update(repr(list(getattr(obj, "columns", [getattr(obj, "name", None)]))).encode())
    h.update(pd.util.hash_pandas_object(obj, index=True).to_numpy().tobytes())


def _feed_pickle(h: Any, value: Any, what: str) -> None:
    import cloudpickle

    try:
        h.update(cloudpickle.dumps(value, protocol=5))
    except Exception as exc:
        raise Unhashable(f"cannot hash argument {what} ({type(value).__name__}) for the cache ({exc})") from None


class Unhashable(NbflowError):
    """A value the cache cannot tell apart from others: nbflow does not guess (a wrong hit is worse than a miss).
    ``problem`` is what was wrong; the message adds how to fix it for a task (a task cell says its own)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{problem}; pass cache_key=lambda *args, **kwargs: ... returning a string")


_PLAIN = (type(None), *_SCALARS)
_PLAIN_SIZE = 10_000  # elements: a bigger container is data, to be passed as an argument


_IMMUTABLE = {  # modules of value types that cannot change in place: a notebook tweaks them like scalars
    "decimal": ("Decimal",),
    "fractions": ("Fraction",),
    "datetime": ("date", "time", "timedelta", "timezone"),
    "pathlib": ("PurePath",),
    "uuid": ("UUID",),
    "enum": ("Enum",),
}


def _immutable(value: Any) -> bool:
    """An instance of one of ``_IMMUTABLE`` (a module not imported has no instances: nothing is imported here)."""
    for module, names in _IMMUTABLE.items():
        found = sys.modules.get(module)
        if found is not None and isinstance(value, tuple(getattr(found, name) for name in names)):
            return True
    return False


def _plain(value: Any, budget: list[int]) -> bool:
    """A constant: a scalar, or a small tuple of them (what a notebook tweaks between runs)."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if isinstance(value, _PLAIN) or _immutable(value):
        return True
    if isinstance(value, (tuple, frozenset)):  # not lists or dicts: a task may append to one (results.append)
        return all(_plain(item, budget) for item in value)
    return False


def state_hash(fn: Any) -> str:
    """What a task's function computes with besides its arguments and its own code, as of now: the object it
    is bound to; its closure's values, its defaults and the notebook constants it names (``THRESHOLD = 0.5``);
    the code and the same constants of the notebook functions and classes it names, so redefining a helper
    recomputes even when the task is not defined again. Other values it reads (a list it may append to, a
    dict, a model, a DataFrame) do not count: pass them as arguments to have them in the key."""
    h = hashlib.blake2b(digest_size=20)
    what = f"{getattr(fn, '__name__', 'the task')}()"
    if getattr(fn, "__code__", None) is not None or isinstance(fn, types.MethodType):
        _feed_function(h, fn, what, {}, strict=False)
    elif not hasattr(fn, "_nbflow_source"):  # a callable object: its value as of now (a cell's inputs are arguments)
        _feed(h, fn, f"the callable of {what}", {})
    return h.hexdigest()


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
