"""In the kernel: pdb post-mortem on a failed task (``nbflow.debug``, ``%nbflow debug``).

A task that ran in a thread of this process left its real traceback: pdb walks it from the first frame of the
task's own code. One that ran in a child process or on a Dask worker left a snapshot (``worker_snapshot``):
each of its frames becomes a real frame here, made by running a line of code compiled under the frame's file
name, function name and line number with the restored locals as its locals, so pdb's ``where``, ``up``,
``list`` and ``p expr`` work on it as on any traceback. Its source is the kernel's copy of the file when the
kernel has one, else the lines the snapshot brought.
"""

from __future__ import annotations

import builtins
import dataclasses
import linecache
import os
import pdb
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import NbflowError
from ..futures import failed_origin
from .kernel_failure import Failure
from .worker_snapshot import Frame, Snapshot, Unavailable, own_frames

if TYPE_CHECKING:
    from ..futures import Future

_DYNAMIC = "<dynamic-code>"  # cloudpickle's file name for code it sent by value


def debug(fut: Future, commands: Sequence[str] | None = None) -> None:
    """Open pdb post-mortem at the line of the task's code that raised, for ``fut`` or, if it never ran, the
    upstream task that failed. With ``commands``, run those pdb commands instead of asking, printing each with
    its answer (for notebooks that run unattended)."""
    if commands is not None and (isinstance(commands, (str, bytes)) or not all(isinstance(c, str) for c in commands)):
        raise TypeError('commands must be a list of pdb commands as strings, e.g. ["p x", "where"]')
    failed, failure = failed_origin(fut)
    exc = failed.exception()
    tb = traceback_of(failure)
    if tb is None:
        raise NbflowError(
            f"task {failed.name!r} failed with {_summary(exc)} — raised by nbflow, not by the task's code, so there"
            " are no frames of it to debug"
        )
    print(_header(failed, failure, exc), flush=True)
    debugger = _Scripted(commands) if commands is not None else _interactive()
    entry = tb
    while entry is not None:  # a task cell's ``Cell In[7]`` is no path: pdb must not make it one
        name = entry.tb_frame.f_code.co_filename
        if not os.path.isabs(name):
            debugger.fncache[name] = name
        entry = entry.tb_next
    debugger.reset()
    tracing = sys.gettrace()  # (pdb leaves a trace function set when some commands end it: put back what was)
    try:
        debugger.interaction(None, tb)
    finally:
        sys.settrace(tracing)


def debuggable(fut: Future) -> bool:
    """Whether ``debug(fut)`` has frames of the task's code to open (its failure did not come from nbflow)."""
    try:
        failure = failed_origin(fut)[1]
    except NbflowError:
        return False
    snapshot = failure.report.get("frames")
    return bool(snapshot.frames) if snapshot is not None else own_frames(failure.traceback) is not None


def traceback_of(failure: Failure) -> TracebackType | None:
    """The failed attempt's traceback from the task's own code on: the real one, or rebuilt from its snapshot."""
    snapshot = failure.report.get("frames")
    if snapshot is None:
        return own_frames(failure.traceback)
    if snapshot.left is not None:
        _fetch(snapshot, failure.report.get("fetch"))
    if any(frame.filename == _DYNAMIC for frame in snapshot.frames):
        files = _notebook_files(failure)
        for frame in snapshot.frames:
            if frame.filename == _DYNAMIC:
                frame.filename = files.get((frame.name, frame.defined), _DYNAMIC)
    return rebuild(snapshot)


def rebuild(snapshot: Snapshot) -> TracebackType | None:
    """Real frames for a snapshot's frames, linked as a traceback (``None`` if it has none)."""
    tbs = [_stub(frame) for frame in snapshot.frames]
    for outer, inner in zip(tbs, tbs[1:], strict=False):
        outer.tb_next = inner
    return tbs[0] if tbs else None


def _stub(frame: Frame) -> TracebackType:
    """A real frame standing for ``frame``: a line compiled at its line number, under its file and function name,
    run with its restored locals; returns the traceback entry of that frame."""
    _register_source(frame)
    values = {name: _restore(value, frame.kinds.get(name, "?")) for name, value in frame.locals.items()}
    if frame.module_level:  # a task cell's namespace: its globals are its locals
        namespace = {"__builtins__": builtins, "__name__": frame.module or "__main__", **values}
        globals_, locals_ = namespace, namespace
    else:
        globals_, locals_ = _globals(frame.module), values
    first = min(frame.first, frame.lineno)
    code = compile("\n" * (frame.lineno - first) + "1/0", frame.filename, "exec")
    code = code.replace(co_name=frame.name, co_firstlineno=first)  # (``longlist`` finds its function from here)
    try:
        exec(code, globals_, locals_)
    except ZeroDivisionError as stop:
        tb = stop.__traceback__
        assert tb is not None and tb.tb_next is not None
        return tb.tb_next
    raise AssertionError("unreachable")


def _notebook_files(failure: Failure) -> dict[tuple[str, int], str]:
    """Where the code that cloudpickle sent as ``<dynamic-code>`` was defined (a notebook cell's file): the
    functions the task, its inputs and the notebook hold, by name and first line."""
    fn = failure.task.fn
    seeds = [fn, *getattr(fn, "__globals__", {}).values(), *(failure.inputs or ((), {}))[0]]
    seeds += (failure.inputs or ((), {}))[1].values()
    main = sys.modules.get("__main__")
    seeds += list(vars(main).values()) if main is not None else []
    files: dict[tuple[str, int], str] = {}
    codes = [code for seed in seeds for code in _codes_of(seed)]
    while codes:
        code = codes.pop()
        files.setdefault((code.co_name, code.co_firstlineno), code.co_filename)
        codes += [const for const in code.co_consts if isinstance(const, type(code))]
    return files


def _codes_of(obj: Any) -> list[Any]:
    obj = getattr(obj, "fn", obj)  # a task: its function
    if isinstance(obj, type):
        return [code for value in vars(obj).values() for code in _codes_of(getattr(value, "__func__", value))]
    code = getattr(obj, "__code__", None)
    return [code] if code is not None and hasattr(code, "co_consts") else []


def _restore(value: Any, kind: str) -> Any:
    """A local of type ``kind`` unpickled here (its unpickling is the user's code: a class's ``__setstate__``)."""
    if isinstance(value, Unavailable):
        return value
    import cloudpickle

    try:
        return cloudpickle.loads(value)
    except Exception as exc:
        why = f"cannot be rebuilt here: {type(exc).__name__}: {exc}"
        return Unavailable(kind, f"({len(value)} bytes pickled)", why)


def _globals(module: str | None) -> dict[str, Any]:
    """The globals a restored frame sees: its module's, if this process has it (the notebook's own for code
    defined in it), else just the builtins."""
    loaded = sys.modules.get(module or "")
    if loaded is not None:
        return loaded.__dict__
    return {"__builtins__": builtins, "__name__": module}


def _fetch(snapshot: Snapshot, fetch: Any) -> None:
    """Bring the locals a Dask worker kept (once: they are kept in the snapshot); if they are gone, their
    placeholders say why."""
    got = fetch(snapshot.left) if fetch is not None else "lost: the cluster is not connected"
    snapshot.left = None
    for i, frame in enumerate(snapshot.frames):
        if isinstance(got, list):
            frame.locals.update(got[i] if i < len(got) else {})
            continue
        for name, value in frame.locals.items():
            if isinstance(value, Unavailable) and value.why.startswith("kept on the worker"):
                frame.locals[name] = dataclasses.replace(value, why=got)


def _register_source(frame: Frame) -> None:
    """Give pdb the frame's source: the kernel's copy of its file if it has one, else the snapshot's lines."""
    name = frame.filename
    if frame.lines and not linecache.getlines(name):
        entry = linecache.cache.get(name)
        lines = list(entry[2]) if entry and len(entry) == 4 and entry[1] is None else []
        end = frame.first - 1 + len(frame.lines)
        lines += ["\n"] * (end - len(lines))
        lines[frame.first - 1 : end] = frame.lines
        linecache.cache[name] = (sum(map(len, lines)), None, lines, name)


def _header(fut: Future, failure: Failure, exc: BaseException) -> str:
    where = f" on {failure.worker}" if failure.worker else ""
    how = "from a snapshot of its frames" if "frames" in failure.report else "its frames as they were"
    attempt = failure.number + 1
    return f"nbflow: post-mortem of task {fut.name!r}{where}, attempt {attempt}: {_summary(exc)} ({how}; 'q' leaves)"


def _summary(exc: BaseException) -> str:
    """``ZeroDivisionError: division by zero`` on one line, printable whatever the message holds."""
    try:
        text = " ".join(str(exc).split())[:200]
    except Exception:  # its __str__ raised
        text = "(its message cannot be shown)"
    return f"{type(exc).__name__}: {text}".encode("utf-8", "backslashreplace").decode()  # (a lone surrogate: \udcff)


def _interactive() -> pdb.Pdb:
    """The debugger ``%debug`` uses in this shell (IPython's), or pdb outside IPython."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    cls = getattr(shell, "debugger_cls", None) or pdb.Pdb
    return cls()


def _plain_pdb() -> type[pdb.Pdb]:
    """The standard library's pdb (a kernel replaces ``pdb.Pdb`` with IPython's, which colours its answers)."""
    return next(c for c in pdb.Pdb.__mro__ if c.__module__ == "pdb" and c.__name__ == "Pdb")


class _Scripted(_plain_pdb()):  # type: ignore[misc]
    """pdb that runs given commands, each echoed before its answer, and leaves after the last: plain text, the same
    in a kernel and out of one."""

    def __init__(self, commands: Sequence[str]) -> None:
        super().__init__(stdout=sys.stdout, readrc=False, nosigint=True)
        self.cmdqueue = list(commands)

    def _asks(self, arg: str) -> None:
        """(``debug``, ``interact``, ``restart``, ``run``) would read commands from stdin, which nobody answers here."""
        self.error(f"{self.lastcmd.split()[0] if self.lastcmd else 'that'}: not with commands= (it asks for input)")

    do_debug = do_interact = do_restart = do_run = _asks

    def cmdloop(self, intro: Any = None) -> None:
        if self.cmdqueue:  # (none: the frame it stopped at was shown, and that is all)
            super().cmdloop(intro)

    def precmd(self, line: str) -> str:
        self.message(f"{self.prompt}{line}")
        return super().precmd(line)

    def postcmd(self, stop: Any, line: str) -> Any:
        return stop or not self.cmdqueue
