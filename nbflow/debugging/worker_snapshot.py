"""Where a task's attempt failed (a pool thread, a child process, a Dask worker): what it reports beside its
exception, so that the kernel can debug it and run it again.

``report`` is called only when an attempt raises: a task that succeeds pays nothing. Where the task ran in
another process, its frames cannot cross, so the report carries a ``Snapshot``: each frame of the task's own
code (nbflow's frames around it are left out) with its position, the source lines around it and its locals. Each
local is pickled on its own, innermost frame first, until ``LOCALS_BOUND`` bytes in all: a local that does not
pickle, or does not fit, comes back as an ``Unavailable`` that shows its type and a truncated repr, and the
others still come back. Taking the snapshot never raises: the user's exception is what the task ends with.
"""

from __future__ import annotations

import dataclasses
import io
import linecache
import os
import reprlib
import threading
from types import TracebackType
from typing import Any

import cloudpickle

from .. import context

LOCALS_BOUND = 256 * 2**20  # pickled bytes of locals one snapshot keeps, in all
FRAMES_KEPT = 200  # innermost frames kept (a deep recursion's outer frames are left out)
SOURCE_LINES = 400  # source lines kept per frame: its whole function if shorter, else a window around its line
INPUTS_BOUND = 1 * 2**30  # bytes (estimated) of inputs a failed attempt keeps for ``replay``
LOCALS_SECONDS = 10.0  # how long taking the locals may take (their __reduce__ and __repr__ are the user's code)
_NBFLOW = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class _Repr(reprlib.Repr):
    """``reprlib``'s short reprs, also for bytes (it would repr them whole, then cut: a copy four times as big)."""

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")

    repr_bytearray = repr_bytes


_repr = _Repr()
_repr.maxstring = _repr.maxother = 160
_repr.maxlevel = 3


@dataclasses.dataclass
class Unavailable:
    """A local the snapshot could not bring back; ``p name`` shows this, with the local's type and repr."""

    type_name: str
    text: str  # its repr, truncated
    why: str

    def __repr__(self) -> str:
        return f"<{self.type_name} not restored ({self.why}): {self.text}>"


@dataclasses.dataclass
class Frame:
    """One frame of a failed task, as data: ``lines`` are the source lines from line ``first`` on (empty if its
    source was gone); ``locals`` maps each name to its pickled value or an ``Unavailable``."""

    filename: str  # ``<dynamic-code>`` for code defined in the notebook (cloudpickle does not keep its file)
    name: str
    defined: int  # the line its code begins at (with ``name``, how the kernel finds the file of dynamic code)
    lineno: int
    module: str | None  # its module's ``__name__``
    module_level: bool  # module code (a task cell): its globals are its locals
    first: int
    lines: list[str]
    locals: dict[str, Any]
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # each local's type, for a placeholder later


@dataclasses.dataclass
class Snapshot:
    """A failed attempt's frames, outermost first; ``left`` says where locals too big to travel with the error
    wait to be fetched (a Dask worker's address and key), ``None`` when they travel with it."""

    frames: list[Frame]
    left: tuple[str, str] | None = None

    def locals_size(self) -> int:
        return sum(len(v) for f in self.frames for v in f.locals.values() if not isinstance(v, Unavailable))


def report(exc: BaseException, inputs: tuple[tuple, dict] | None, frames: bool) -> dict[str, Any]:
    """What the attempt that raised ``exc`` reports: what a task cell left (``context.report_failure``), the
    estimated size of its ``inputs`` (for ``replay``) and, if ``frames``, a ``Snapshot`` of its frames."""
    out = dict(context.take_report(exc) or {})
    if inputs is not None:
        out["inputs_bytes"] = _size_of(inputs)
    if frames:
        out["frames"] = take(exc.__traceback__)
    return out


def own_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from the first frame of the task's own code on: nbflow's frames that called it are left out."""
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_NBFLOW):
        tb = tb.tb_next
    return tb


def take(tb: TracebackType | None) -> Snapshot:
    """A ``Snapshot`` of the task's frames in ``tb`` (empty if none are the task's own).

    Pickling a local runs its ``__reduce__``, and a placeholder its ``__repr__``: the user's code, which may take
    long or never end. So the locals are taken in a helper thread, and what it has not taken within
    ``LOCALS_SECONDS`` is a placeholder (the helper is left to finish, or not, on its own)."""
    chain = []
    tb = own_frames(tb)
    while tb is not None:
        chain.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    frames: list[Frame] = []
    found: list[dict[str, Any]] = []
    for frame, lineno in reversed(chain[-FRAMES_KEPT:]):  # innermost first: its locals matter most
        try:
            first, lines = _source(frame, lineno)
            names = dict(frame.f_locals)
            names.pop("__builtins__", None)  # a module's frame (a task cell): restored where it is debugged
            module_level = frame.f_globals is frame.f_locals
            code = frame.f_code
            kinds = {name: _type_name(type(value)) for name, value in names.items()}
            module = frame.f_globals.get("__name__")
            frames.append(
                Frame(
                    code.co_filename,
                    code.co_name,
                    code.co_firstlineno,
                    lineno,
                    module,
                    module_level,
                    first,
                    lines,
                    {},
                    kinds,
                )
            )
            found.append(names)
        except Exception:  # a frame nbflow cannot read is left out; the others still come back
            continue
    taken: list[dict[str, Any]] = [{} for _ in frames]
    worker = threading.Thread(target=_take_locals, args=(found, taken), name="nbflow-snapshot", daemon=True)
    worker.start()
    worker.join(LOCALS_SECONDS)
    late = f"not taken: pickling the task's locals and their reprs took over {LOCALS_SECONDS:g} s"
    for frame, names, values in zip(frames, found, taken, strict=True):
        values = dict(values)  # (a copy: the helper may still be writing, if it is stuck)
        frame.locals = {name: values.get(name) or Unavailable(frame.kinds[name], "(not taken)", late) for name in names}
    frames.reverse()
    return Snapshot(frames)


def _take_locals(found: list[dict[str, Any]], taken: list[dict[str, Any]]) -> None:
    """(The helper thread) each local pickled on its own, innermost frame first, within ``LOCALS_BOUND`` in all."""
    room = LOCALS_BOUND
    refused = []  # placeholders are made after every local was tried: a repr is the user's code too
    for names, values in zip(found, taken, strict=True):
        for name, value in names.items():
            data = _pickle(value, room)
            if isinstance(data, str):
                refused.append((values, name, value, data))
            else:
                room -= len(data)
                values[name] = data
    for values, name, value, why in refused:
        values[name] = unavailable(value, why)


def _source(frame: Any, lineno: int) -> tuple[int, list[str]]:
    code = frame.f_code
    try:
        lines = linecache.getlines(code.co_filename, frame.f_globals)
    except Exception:
        lines = []
    if not lines:
        return lineno, []
    first = code.co_firstlineno
    last = max((line for _, _, line in code.co_lines() if line), default=lineno)
    if last - first + 1 > SOURCE_LINES:
        first = max(1, lineno - SOURCE_LINES // 2)
        last = first + SOURCE_LINES - 1
    return first, lines[first - 1 : last]


class _Full(Exception):
    pass


class _Sink:
    """A file that refuses to grow past ``room`` bytes: a local too big to keep costs no more than ``room``."""

    def __init__(self, room: int) -> None:
        self.data = bytearray()
        self.room = room

    def write(self, chunk: Any) -> int:
        size = memoryview(chunk).nbytes
        if len(self.data) + size > self.room:
            raise _Full
        self.data += chunk
        return size


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, but an open file is not a value to bring back (cloudpickle would copy its contents)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, io.IOBase):
            raise TypeError(f"an open file ({type(obj).__name__}) is not copied")
        return super().reducer_override(obj)


def _pickle(value: Any, room: int) -> bytearray | str:
    """``value`` pickled within ``room`` bytes, or why not."""
    over = f"over the {LOCALS_BOUND // 2**20} MiB a snapshot keeps"
    size = getattr(value, "nbytes", None)  # (an array's buffer: pickling would copy it whole before it is refused)
    if isinstance(size, int) and size > room:
        return over
    sink = _Sink(room)
    try:
        _Pickler(sink, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(value)
    except _Full:
        return over
    except Exception as exc:
        return f"cannot be pickled: {' '.join(str(exc).split())[:120]}"
    return sink.data


def unavailable(value: Any, why: str) -> Unavailable:
    """A placeholder for ``value``: its type and its repr, truncated (a repr that fails says so)."""
    try:
        text = _repr.repr(value)
    except Exception as exc:
        text = f"(its repr failed: {type(exc).__name__})"
    return Unavailable(_type_name(type(value)), text, why)


def _type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _size_of(inputs: Any) -> int:
    """About how many bytes ``inputs`` hold (Dask's estimate: arrays and frames by their buffers)."""
    try:
        from dask.sizeof import sizeof

        return int(sizeof(inputs))
    except Exception:
        return 0
