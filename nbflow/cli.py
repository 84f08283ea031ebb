"""The ``nbflow`` command (also ``python -m nbflow``): manage and watch this machine's limits, and its result cache.

    nbflow limits set NAME [CAPACITY] [--rate 10/s [--burst N]]     (also: nbflow limit NAME ...)
    nbflow limits [ls]     nbflow limits rm NAME     nbflow status
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
    commands = parser.add_subparsers(dest="command", metavar="{limits,limit,status,cache}", parser_class=_Parser)
    commands.required = True
    lim = commands.add_parser("limits", help="set, list or remove this machine's limits")
    actions = lim.add_subparsers(dest="action", metavar="{set,ls,rm}", parser_class=_Parser)  # none: ls
    set_help = "set (or change) a limit: its capacity, its rate or both (what is left out is not set)"
    _set_arguments(actions.add_parser("set", help=set_help))
    _set_arguments(commands.add_parser("limit", help=f"{set_help}; the same as `limits set`"))
    actions.add_parser("ls", help="list the limits: capacity, rate, burst, next start (the default)")
    rm = actions.add_parser("rm", help="remove a limit, capacity and rate (holders keep their share till they release)")
    rm.add_argument("name")
    commands.add_parser("status", help="current occupancy of this machine's limits: holders and waiters")
    cache = commands.add_parser("cache", help="list or clear cached task results")
    cached = cache.add_subparsers(dest="action", metavar="{ls,clear}", parser_class=_Parser)
    cached.required = True
    cached.add_parser("ls", help="list the cached results, most recently used first")
    clear = cached.add_parser("clear", help="delete the cached results of a task (all of them without NAME)")
    clear.add_argument("name", nargs="?", help="task name")
    return parser


def _set_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="limit name, e.g. GPU or gpu:host-1")
    parser.add_argument("capacity", nargs="?", help="at most this much held at once: 2, 0.5, 100e9 or 70GB")
    parser.add_argument("--rate", help="at most this many starts: 10/s, 60/min or 5000/h")
    parser.add_argument("--burst", type=int, default=1, help="starts allowed at once after a pause (default 1)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 after a one-line error)."""
    args = _parser().parse_args(argv)
    from .machine_limits import api as lim

    try:
        if args.command == "cache":
            _cache(args)
        elif args.command == "status":
            print(_status_table(lim.limits()))
        elif args.command == "limit" or args.action == "set":
            _set(args)
        elif args.action == "rm":
            lim.remove_limit(args.name)
        else:
            print(_limits_table(lim.limits()))
    except (NbflowError, OSError) as exc:
        _fail(str(exc))
    return 0


def _set(args: argparse.Namespace) -> None:
    from .errors import ResourceSpecError
    from .limit_scopes import limit
    from .specs import check_name, parse_amount

    name = check_name(args.name)
    if args.capacity is None and args.rate is None:
        raise ResourceSpecError(f"limit {name!r} needs a capacity, --rate or both, e.g. `nbflow limits set {name} 4`")
    limit(name, None if args.capacity is None else parse_amount(name, args.capacity), rate=args.rate, burst=args.burst)


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


NO_LIMITS = "no limits on this machine yet: set one with `nbflow limits set NAME CAPACITY` (or --rate 10/s)"


def _limits_table(statuses: list) -> str:
    if not statuses:
        return NO_LIMITS
    from .render import rate_fields

    rows = [["NAME", "CAPACITY", "RATE", "BURST", "NEXT START"]]
    return _table(rows + [[s.name, _capacity(s), *rate_fields(s.rate, s.burst, s.next_start)] for s in statuses])


def _capacity(status) -> str:
    return "-" if status.capacity is None else f"{status.capacity:g}"


def _status_table(statuses: list) -> str:
    if not statuses:
        return NO_LIMITS
    from .render import holder_fields, rate_fields

    rows = [["LIMIT", "USED", "CAPACITY", "RATE", "NEXT START", "WAITING", "HOLDER", "TASK", "AMOUNT", "SINCE"]]
    now = time.time()
    for s in statuses:
        rate, _, next_start = rate_fields(s.rate, s.burst, s.next_start)
        head = [s.name, f"{s.used:g}", _capacity(s), rate, next_start, str(s.waiting)]
        if not s.holders:
            rows.append(head + ["-", "", "", ""])
        for i, h in enumerate(s.holders):
            since = f"{time.strftime('%H:%M:%S', time.localtime(h.since))} ({now - h.since:.1f}s)"
            rows.append((head if i == 0 else [""] * len(head)) + [*holder_fields(h, s.name, exact=True), since])
    return _table(rows)
