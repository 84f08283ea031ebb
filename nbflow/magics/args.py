"""The ``%nbflow`` subcommands' arguments, declared with ``IPython.core.magic_arguments``.

Each subcommand is a stub carrying its own parser; ``parse`` turns every malformed argument into a
one-line ``UsageError`` (IPython shows those without a traceback), and ``HELP`` is what ``%nbflow?`` shows.
"""

from __future__ import annotations

import argparse
import builtins
import re
from collections.abc import Callable, Mapping
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..errors import ResourceSpecError
from ..futures import STOP_GRACE
from ..retry_policy import Backoff, backoff, check_exception_class, delay_option
from ..specs import byte_size, check_name, duration, parse_amount, parse_resources


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = "count"
    return parse


def _seconds(text: str, zero_ok: bool = False) -> float:
    try:
        return duration(text, zero_ok=zero_ok, text=True)
    except ResourceSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return byte_size(text)
    except ResourceSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _grace(text: str) -> float:
    return _seconds(text, zero_ok=True)


_BACKOFF = re.compile(r"\s*(?:nbflow\.)?backoff\((.*)\)\s*", re.S)
_BACKOFF_ARGS = ("base", "factor", "max", "jitter")


def _unquoted(text: str) -> str:
    """``'1, 2'`` as ``1, 2``: quoted to hold spaces, and the magic's argument splitting keeps the quotes."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _retry_delay(text: str) -> float | tuple[float, ...] | Backoff:
    """``--retry-delay``: seconds (``2``, ``30s``), a list ``1,2,4`` (one per retry, the last repeating), or
    ``backoff(base=1,factor=2,max=60,jitter=0.1)`` (any of them, by name or in that order)."""
    text = _unquoted(text)
    try:
        found = _BACKOFF.fullmatch(text)
        if found is not None:
            return _backoff(found.group(1))
        items = text.split(",")
        if len(items) == 1:
            return duration(text.strip(), zero_ok=True, text=True)
        return delay_option(
            [duration(item.strip(), f"item {i}", zero_ok=True, text=True) for i, item in enumerate(items, 1)]
        )
    except ResourceSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _backoff(inner: str) -> Backoff:
    given: dict[str, float] = {}
    for i, part in enumerate(inner.split(",") if inner.strip() else []):
        key, named, value = part.partition("=")
        key, value = (key.strip(), value.strip()) if named else (_BACKOFF_ARGS[i] if i < 4 else "", key.strip())
        if key not in _BACKOFF_ARGS or key in given:
            raise ResourceSpecError(f"backoff takes base, factor, max and jitter, once each, got {part.strip()!r}")
        if key in ("base", "max"):
            given[key] = duration(value, f"backoff {key}", zero_ok=True, text=True)
        else:
            try:
                given[key] = float(value)
            except ValueError:
                raise ResourceSpecError(f"backoff {key} must be a number, got {value!r}") from None
    return backoff(**given)


_RESOURCES_HELP = "Dask-style resources, e.g. GPU=1 MEMORY=2GB (also GPU=1,MEMORY=2GB)."


@magic_arguments("nbflow use local")
@argument("--workers", type=_count(1), metavar="N", help="Pool size (default 8).")
@argument("--processes", action="store_true", help="Run tasks in worker processes instead of threads.")
def use_local():
    """Use the embedded local engine; resources are machine-wide limits shared by every process here."""


@magic_arguments("nbflow use dask")
@argument("address", nargs="?", metavar="ADDRESS", help="Scheduler address (tcp://HOST:PORT); omit for a new cluster.")
@argument("--n-workers", type=_count(1), metavar="N", help="Workers of the new LocalCluster.")
@argument("--threads-per-worker", type=_count(1), metavar="N", help="Threads per worker of the new LocalCluster.")
@argument("--resources", nargs="+", metavar="NAME=AMOUNT", help="Resources each new worker offers.")
def use_dask():
    """Use a Dask cluster: an existing scheduler at ADDRESS, or a new LocalCluster on 127.0.0.1."""


@magic_arguments("nbflow limit")
@argument("name", metavar="NAME", help="Limit name, e.g. GPU or gpu:host-1.")
@argument("capacity", nargs="?", metavar="CAPACITY", help="How much of it this machine has, e.g. 2 or 64GB.")
@argument("--rate", metavar="RATE", help="At most this many starts, e.g. 10/s, 60/min or 5000/h.")
@argument("--burst", metavar="N", type=int, default=1, help="Starts allowed at once after a pause (default 1).")
def limit():
    """Set this machine's limit: its capacity, its rate or both (persisted, shared by every process on the machine;
    what is left out is not set)."""


@magic_arguments("nbflow limits")
def limits():
    """Show this machine's limits: capacity, use, holders and waiters."""


@magic_arguments("nbflow status")
def status():
    """Show the current engine's occupancy (``nbflow.occupancy()``): workers, resources in use, task counts,
    and this machine's limits."""


@magic_arguments("nbflow monitor")
@argument("--interval", type=_seconds, metavar="SECONDS", default=0.5, help="Seconds (or 2s, 1m) between refreshes.")
def monitor():
    """Show the live occupancy panel."""


@magic_arguments("nbflow wait")
@argument("names", nargs="*", metavar="NAME", help="Task cells (or their output variables); default: all.")
def wait():
    """Block until task cells finish and their outputs are rebound; Kernel > Interrupt stops waiting only."""


@magic_arguments("nbflow cancel")
@argument("names", nargs="*", metavar="NAME", help="Task cells (or their output variables) to cancel.")
@argument("--all", action="store_true", help="Cancel every unfinished task cell.")
def cancel():
    """Cancel task cells that have not started yet (%nbflow stop stops running ones too)."""


@magic_arguments("nbflow stop")
@argument("names", nargs="*", metavar="NAME", help="Task cells (or their output variables) to stop.")
@argument("--all", action="store_true", help="Stop every unfinished task cell.")
@argument(
    "--grace",
    type=_grace,
    metavar="SECONDS",
    default=STOP_GRACE,
    help=f"For processes=True: seconds between SIGTERM and SIGKILL (default {STOP_GRACE:g}).",
)
def stop():
    """Stop task cells, queued or running: a thread gets TaskStopped at its next bytecode, a child process
    SIGTERM (then SIGKILL after --grace seconds); each reads 'stopping' until it has stopped, then 'cancelled'."""


@magic_arguments("nbflow debug")
@argument(
    "name",
    nargs="?",
    metavar="NAME",
    help="A task cell, its output variable, or a variable holding a future; default: the most recent failure shown.",
)
def debug():
    """Open pdb post-mortem at the line of a failed task's code that raised, wherever it ran (q leaves)."""


@magic_arguments("nbflow replay")
@argument(
    "name",
    nargs="?",
    metavar="NAME",
    help="A task cell, its output variable, or a variable holding a future; default: the most recent failure shown.",
)
def replay():
    """Run a failed task's attempt again here, in the foreground, with the inputs it had, so that %debug or
    breakpoint() can step through it (side effects run again). A task cell that now succeeds binds its outputs."""


@magic_arguments("nbflow task")
@argument("--name", help="Task name (default: the first variable the cell assigns, else cell-N).")
@argument("--resources", nargs="+", metavar="NAME=AMOUNT", help=_RESOURCES_HELP)
@argument("--limits", nargs="+", metavar="NAME=AMOUNT", help="Machine-wide limits held while it runs, e.g. gpu=1.")
@argument("--retries", type=_count(0), metavar="N", default=0, help="Re-runs after a failure (default 0).")
@argument(
    "--retry-delay",
    type=_retry_delay,
    metavar="DELAY",
    help="Seconds before a retry (default 0): 5 or 30s; 1,2,4 for one per retry, the last repeating; or"
    " backoff(base=1,factor=2,max=60,jitter=0.1), exponential.",
)
@argument(
    "--retry-on",
    nargs="+",
    metavar="EXCEPTION",
    help="Retry only these exceptions, e.g. ValueError,KeyError (notebook names, else builtins; default: any).",
)
@argument("--timeout", type=_seconds, metavar="SECONDS", help="Fail with TaskTimeout after SECONDS (or 90s, 5m).")
@argument(
    "--max-memory",
    type=_size,
    metavar="SIZE",
    help="Fail with OutOfMemory once its process uses more than SIZE (e.g. 2GB); needs use local --processes.",
)
@argument("--block", action="store_true", help="Wait for the task and show its output like an ordinary cell.")
@argument("--cache", action="store_true", help="Reuse the stored result of an unchanged cell with unchanged inputs.")
def task():
    """(cell magic) Run the cell as a background task. It reads the notebook variables it uses (futures
    among them are dependencies); each variable it assigns is bound to a Future at once and to its value
    when the task finishes, unless reassigned meanwhile."""


LINE_COMMANDS = {
    "use": None,  # dispatches on the engine kind: use local / use dask
    "limit": limit,
    "limits": limits,
    "status": status,
    "monitor": monitor,
    "wait": wait,
    "cancel": cancel,
    "stop": stop,
    "debug": debug,
    "replay": replay,
}
ENGINES = {"local": use_local, "dask": use_dask}
_ALL = (use_local, use_dask, limit, limits, status, monitor, wait, cancel, stop, debug, replay, task)

HELP = (
    "nbflow magics: run notebook cells as background tasks on the local engine or a Dask cluster.\n\n"
    "Load with %load_ext nbflow. Subcommands (line magic %nbflow, cell magic %%nbflow task):\n\n"
    + "\n".join(stub.__doc__ for stub in _ALL)
)


def parse(stub: Callable[[], None], argstring: str) -> argparse.Namespace:
    """Parse ``argstring`` with ``stub``'s parser; any problem becomes a one-line ``UsageError``."""
    prog = stub.parser.prog
    try:
        return stub.parser.parse_argstring(argstring)
    except UsageError as exc:
        raise UsageError(f"%{prog}: {_one_line(exc)} (see %nbflow? for help)") from None
    except ValueError as exc:  # unbalanced quotes in arg_split
        raise UsageError(f"%{prog}: cannot split arguments: {_one_line(exc)}") from None


def resources(option: str, items: list[str] | None) -> dict[str, float]:
    """``--resources GPU=1 MEMORY=2GB`` as ``{name: amount}``; a bad item is a one-line ``UsageError``."""
    try:
        return parse_resources(items or [])
    except ResourceSpecError as exc:
        raise UsageError(f"{option}: {_one_line(exc)}") from None


def exception_classes(items: list[str] | None, namespace: Mapping[str, Any]) -> tuple[type, ...] | None:
    """``--retry-on ValueError,KeyError`` (also ``ValueError KeyError``, ``requests.HTTPError``) as exception classes:
    each name looked up in ``namespace`` (the notebook's), else among the builtins; None if not given. An unknown
    name, or one that is not an exception class, is a one-line ``UsageError``."""
    if items is None:
        return None
    names = re.split(r"\s*,\s*|\s+", _unquoted(" ".join(items).strip()))
    if not all(names):  # (nothing named, or an empty name between two commas)
        raise UsageError("--retry-on: name one exception class or more, e.g. --retry-on ValueError,KeyError")
    found = []
    for name in names:
        head, *rest = name.split(".")
        if head in namespace:
            value = namespace[head]
        elif head in vars(builtins):
            value = vars(builtins)[head]
        else:
            raise UsageError(f"--retry-on: unknown name {name!r}: not a notebook variable or a builtin")
        try:
            for attribute in rest:
                value = getattr(value, attribute)
        except Exception:
            raise UsageError(f"--retry-on: unknown name {name!r}: {head} has no such attribute") from None
        try:
            check_exception_class(value, f"--retry-on {name}")
        except ResourceSpecError as exc:
            raise UsageError(_one_line(exc)) from None
        found.append(value)
    return tuple(found)


def set_limit(parsed: argparse.Namespace) -> None:
    """Set the limit ``%nbflow limit NAME [CAPACITY] [--rate R] [--burst N]`` describes; a bad or missing value
    is a one-line ``UsageError``."""
    from ..limit_scopes import limit as set_it

    try:
        name = check_name(parsed.name)
        if parsed.capacity is None and parsed.rate is None:
            raise ResourceSpecError(f"give a CAPACITY, --rate or both, e.g. %nbflow limit {name} 4 or --rate 10/s")
        capacity = None if parsed.capacity is None else parse_amount(name, parsed.capacity)
        set_it(name, capacity, rate=parsed.rate, burst=parsed.burst)
    except ResourceSpecError as exc:
        raise UsageError(f"%nbflow limit: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
