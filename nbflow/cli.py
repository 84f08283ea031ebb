"""The ``nbflow`` command (also ``python -m nbflow``): manage and watch this machine's limits, and its result cache.

    nbflow limits set NAME CAPACITY     nbflow limits ls     nbflow limits rm NAME     nbflow status
    nbflow cache ls                     nbflow cache clear [NAME]

Every error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .errors import NbflowError

EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        _fail(f"{message} (see `{self.prog} --help`)")


def _fail(message: str):
    print(f"nbflow: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_ERROR)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nbflow", description="Machine-wide limits and the result cache of nbflow.")
    commands = parser.add_subparsers(dest="command", metavar="{limits,status,cache}", parser_class=_Parser)
    commands.required = True
    lim = commands.add_parser("limits", help="set, list or remove this machine's limits")
    actions = lim.add_subparsers(dest="action", metavar="{set,ls,rm}", parser_class=_Parser)
    actions.required = True
    set_ = actions.add_parser("set", help="set (or change) the capacity of a limit")
    set_.add_argument("name", help="limit name, e.g. GPU or gpu:host-1")
    set_.add_argument("capacity", help="a number > 0, e.g. 2, 0.5, 100e9 or 70GB")
    actions.add_parser("ls", help="list the limits with their capacities")
    rm = actions.add_parser("rm", help="remove a limit's capacity (holders keep their share until they release)")
    rm.add_argument("name")
    commands.add_parser("status", help="current occupancy of this machine's limits: holders and waiters")
    cache = commands.add_parser("cache", help="list or clear cached task results")
    cached = cache.add_subparsers(dest="action", metavar="{ls,clear}", parser_class=_Parser)
    cached.required = True
    cached.add_parser("ls", help="list the cached results, most recently used first")
    clear = cached.add_parser("clear", help="delete the cached results of a task (all of them without NAME)")
    clear.add_argument("name", nargs="?", help="task name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 after a one-line error)."""
    args = _parser().parse_args(argv)
    from .machine_limits import api as lim
    from .specs import check_name, parse_amount

    try:
        if args.command == "cache":
            _cache(args)
        elif args.command == "status":
            print(_status_table(lim.limits()))
        elif args.action == "set":
            name = check_name(args.name)
            lim.limit(name, parse_amount(name, args.capacity))
        elif args.action == "rm":
            lim.remove_limit(args.name)
        else:
            print(_limits_table(lim.limits()))
    except (NbflowError, OSError) as exc:
        _fail(str(exc))
    return 0


def _cache(args: argparse.Namespace) -> None:
    from . import caching

    if args.action == "clear":
        count = caching.clear(args.name)
        print(f"deleted {count} cached result(s)" + (f" of {args.name}" if args.name else ""))
        return
    entries = caching.entries()
    if not entries:
        print(f"no cached results in {caching.cache_dir()}")
        return
    rows = [["TASK", "KEY", "SIZE", "TOOK", "MADE", "LAST USED"]]
    for e in entries:
        made, used = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) for t in (e.created, e.used))
        rows.append([e.name, e.key[:12], f"{e.size}", f"{e.duration:.2f}s", made, used])
    print(_table(rows))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


NO_LIMITS = "no limits on this machine yet: set one with `nbflow limits set NAME CAPACITY`"


def _limits_table(statuses: list) -> str:
    if not statuses:
        return NO_LIMITS
    return _table([["NAME", "CAPACITY"]] + [[s.name, f"{s.capacity:g}"] for s in statuses])


def _status_table(statuses: list) -> str:
    if not statuses:
        return NO_LIMITS
    from .render import holder_fields

    rows = [["LIMIT", "USED", "CAPACITY", "WAITING", "HOLDER", "TASK", "AMOUNT", "SINCE"]]
    now = time.time()
    for s in statuses:
        head = [s.name, f"{s.used:g}", f"{s.capacity:g}", str(s.waiting)]
        if not s.holders:
            rows.append(head + ["-", "", "", ""])
        for i, h in enumerate(s.holders):
            since = f"{time.strftime('%H:%M:%S', time.localtime(h.since))} ({now - h.since:.1f}s)"
            rows.append((head if i == 0 else [""] * 4) + [*holder_fields(h, s.name, exact=True), since])
    return _table(rows)
