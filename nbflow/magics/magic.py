"""``%nbflow`` (line) and ``%%nbflow task`` (cell): one magic that dispatches on its first word."""

from __future__ import annotations

import collections
import sys
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from .. import engines
from ..errors import NbflowError
from ..futures import own_failure
from ..machine_limits import limits
from ..options import TaskOptions
from . import args
from .kernel_cell_analysis import analyze
from .kernel_display import current_request
from .kernel_task_cells import SubmittedCells, TaskCell, short_error
from .task_cell_code import CellCode


@magics_class
class NbflowMagics(Magics):
    """Holds this kernel's task cells; see ``%nbflow?``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.cells = SubmittedCells()
        self.errors: collections.deque = collections.deque(maxlen=20)  # the last errors cells showed, and when
        shell.events.register("post_run_cell", self._note_error)

    def _note_error(self, result: Any) -> None:
        error = getattr(result, "error_in_exec", None)
        if error is not None:
            self.errors.append((error, time.monotonic()))

    @line_cell_magic
    def nbflow(self, line: str, cell: str | None = None) -> Any:
        sub, _, rest = line.strip().partition(" ")
        if cell is not None:
            if sub != "task":
                raise UsageError(f"%%nbflow {sub}: the cell magic is '%%nbflow task'; other subcommands are %nbflow")
            return self._task(rest, cell)
        if sub == "task":
            raise UsageError("%nbflow task is a cell magic: start the cell with %%nbflow task")
        if sub == "replay":  # outside the handler below: the replayed task's own errors come out as they are
            return self._replay(rest)
        if sub not in args.LINE_COMMANDS:
            valid = ", ".join([*args.LINE_COMMANDS, "task"])
            shown = f"unknown subcommand {sub!r}" if sub else "a subcommand is needed"
            raise UsageError(f"%nbflow: {shown}; valid subcommands: {valid} (see %nbflow? for help)")
        try:
            return getattr(self, f"_{sub}")(rest)
        except (UsageError, KeyboardInterrupt):
            raise
        except NbflowError as exc:  # bad input the library caught: one line, no traceback
            raise short_error(exc) from None

    nbflow.__doc__ = args.HELP

    # --- line subcommands -----------------------------------------------------------------------------

    def _use(self, rest: str) -> None:
        kind, _, rest = rest.strip().partition(" ")
        stub = args.ENGINES.get(kind)
        if stub is None:
            raise UsageError(f"%nbflow use: unknown engine {kind!r}; use 'local' or 'dask'")
        opts = vars(args.parse(stub, rest))
        if kind == "dask":
            opts["resources"] = args.resources("--resources", opts["resources"]) or None
            if opts["address"] and any(opts[key] for key in ("n_workers", "threads_per_worker", "resources")):
                raise UsageError(
                    "%nbflow use dask: --n-workers, --threads-per-worker and --resources describe a "
                    "new cluster; drop them to use the scheduler at ADDRESS"
                )
        eng = engines.use(kind, **{key: value for key, value in opts.items() if value not in (None, False)})
        client = getattr(eng, "client", None)
        print(f"nbflow: using the {eng.kind} engine" + (f": {client!r}" if client is not None else ""))

    def _limit(self, rest: str) -> None:
        parsed = args.parse(args.limit, rest)
        args.set_limit(parsed)
        shown = " and ".join(
            part for part in (parsed.capacity, parsed.rate and f"rate {parsed.rate} (burst {parsed.burst})") if part
        )
        print(f"nbflow: limit {parsed.name} = {shown} on this machine")

    def _limits(self, rest: str) -> None:
        args.parse(args.limits, rest)
        from ..render import format_holder, rate_summary, used_text

        statuses = limits()
        if not statuses:
            print("nbflow: no limits set on this machine (set one with %nbflow limit NAME CAPACITY or --rate 10/s)")
        now = time.time()
        for status in statuses:
            rate = rate_summary(status.rate, status.burst, status.next_start)
            used = used_text(status.name, status.used, status.capacity)
            print(f"{status.name}: {used} used{rate and ', '}{rate}, {status.waiting} waiting")
            for h in status.holders:
                print(f"  {format_holder(h, status.name, now)}")

    def _status(self, rest: str) -> None:
        args.parse(args.status, rest)
        from ..render import render_html, render_text

        snap = engines.engine().occupancy()
        display({"text/plain": render_text(snap), "text/html": render_html(snap)}, raw=True)

    def _monitor(self, rest: str) -> Any:
        from .. import monitor

        return monitor(interval=args.parse(args.monitor, rest).interval)

    def _wait(self, rest: str) -> None:
        names = args.parse(args.wait, rest).names
        cells = self.cells.find(names) if names else self.cells.unwaited()
        self._wait_for(cells)
        self.cells.waited(cells)

    def _chosen(self, parsed: Any, verb: str) -> list[TaskCell]:
        """The cells ``%nbflow cancel``/``stop`` act on: ``--all`` unfinished ones, or those named (a name covers
        every unfinished cell of that name: a cell run twice runs twice)."""
        if parsed.all == bool(parsed.names):
            raise UsageError(f"%nbflow {verb}: name the task cells to {verb}, or use --all (not both)")
        if parsed.all:
            return self.cells.unfinished()
        cells = self.cells.find(parsed.names)
        named = {cell.name for cell in cells}
        return list(dict.fromkeys(cells + [cell for cell in self.cells.unfinished() if cell.name in named]))

    def _cancel(self, rest: str) -> None:
        cells = self._chosen(args.parse(args.cancel, rest), "cancel")
        kept = [cell.name for cell in cells if not cell.cancel() and cell.outcome != "cancelled"]
        note = f"; already running or done: {', '.join(kept)}" if kept else ""
        print(f"nbflow: cancelled {len(cells) - len(kept)} task cell(s){note}")

    def _stop(self, rest: str) -> None:
        parsed = args.parse(args.stop, rest)
        cells = self._chosen(parsed, "stop")
        if not cells:
            print("nbflow: no unfinished task cells to stop")
            return
        stopping, done = [], []
        for cell in cells:
            before = cell.stop(parsed.grace)
            if before in _STOPPED:
                stopping.append(f"{cell.name} ({_STOPPED[before]})")
            else:
                done.append(f"{cell.name} ({before or 'finished'})")
        said = f"stopping {len(stopping)} task cell(s): {', '.join(stopping)}" if stopping else "nothing to stop"
        note = f"; already done: {', '.join(done)}" if done else ""
        print(f"nbflow: {said}{note}")

    def _debug(self, rest: str) -> None:
        from IPython.core.error import StdinNotImplementedError

        from ..debugging.kernel_debugger import debug

        no_input = UsageError(
            "%nbflow debug: this front-end sends the kernel no input, so pdb cannot ask for commands; run them"
            ' with nbflow.debug(future, commands=["p x", "where"])'
        )
        fut = self._failed(args.parse(args.debug, rest).name)
        if getattr(getattr(self.shell, "kernel", None), "_allow_stdin", True) is False:  # (nbclient, nbconvert)
            raise no_input
        try:
            debug(fut)
        except StdinNotImplementedError:
            raise no_input from None

    def _replay(self, rest: str) -> Any:
        """Run the failed attempt here; a task cell binds its outputs and shows its last value, as a cell would."""
        __tracebackhide__ = True  # (IPython leaves nbflow's frames out of a replay's traceback)
        try:
            fut = self._failed(args.parse(args.replay, rest).name, "replay")
            failure = own_failure(fut)
        except NbflowError as exc:
            raise short_error(exc) from None
        print(f"nbflow: replaying task {fut.name!r} here (attempt {failure.number + 1}, its inputs)", flush=True)
        result = failure.replay()
        if not isinstance(failure.task.fn, CellCode):
            return result
        self.shell.user_ns.update(result["outputs"])
        return result["value"]

    def _failed(self, name: str | None, verb: str = "debug") -> Any:
        """The future ``%nbflow debug``/``replay`` act on: that of the task cell (or output variable) ``name``, or of
        a notebook variable ``name`` holding a future; without a name, the most recent failure shown."""
        from ..futures import Future

        if name is None:
            return self._last_failure(verb)
        value = self.shell.user_ns.get(name)
        try:
            cell = self.cells.find([name])[0]
        except UsageError:
            if isinstance(value, Future):
                return value
            raise
        if cell.failed is not None:
            return cell.failed
        if cell.future is not None:  # not finished yet
            return cell.future
        raise NbflowError(
            f"task cell {name!r} did not fail: it {'was ' if cell.outcome == 'cancelled' else ''}"
            f"{cell.outcome or 'was not submitted'}"
        )

    def _last_failure(self, verb: str) -> Any:
        """The failed task the notebook showed last: under a task cell, or raised in a cell (``fut.result()``) by a
        future a notebook variable still holds."""
        shown: list[tuple[float, Any]] = [(cell.ended, cell.failed) for cell in self.cells.failed()]
        held = [fut for fut in _futures_in(self.shell.user_ns) if fut.done() and not fut.cancelled()]
        for error, when in reversed(self.errors):  # the latest first
            fut = next((fut for fut in held if fut.exception() is error), None)
            if fut is not None:
                shown.append((when, fut))
                break
        if not shown:
            raise NbflowError(
                f"no failed task to {verb}: no task cell failed, and no error shown is that of a future a notebook"
                f" variable holds; name one: %nbflow {verb} NAME"
            )
        return max(shown, key=lambda item: item[0])[1]

    # --- the task cell ----------------------------------------------------------------------------------

    def _task(self, rest: str, body: str) -> Any:
        parsed = args.parse(args.task, rest)
        shell = self.shell
        source = "\n" + shell.transform_cell(body)  # line 1 is the %%nbflow line: keep the cell's numbering
        number = _cell_number(shell)
        filename = f"Cell In[{number}]"
        try:
            plan = analyze(source, filename)
        except SyntaxError as exc:  # IPython would show a SyntaxError raised here with its own frames
            code = f": {exc.text.strip()}" if exc.text else ""
            raise UsageError(f"%%nbflow task: SyntaxError in the cell, line {exc.lineno}: {exc.msg}{code}") from None
        options = TaskOptions(
            name=parsed.name or plan.name_hint or f"cell-{number}",
            resources=args.resources("--resources", parsed.resources),
            limits=args.resources("--limits", parsed.limits),
            retries=parsed.retries,
            retry_delay=0.0 if parsed.retry_delay is None else parsed.retry_delay,
            retry_on=args.exception_classes(parsed.retry_on, shell.user_ns),
            timeout=parsed.timeout,
            max_memory=parsed.max_memory,
            cache=parsed.cache,
        )
        cell = TaskCell(shell, options, plan, CellCode(source, filename, plan.outputs, plan.shows_value))
        if not parsed.block:
            cell.attach_view()
        ns = shell.user_ns
        try:
            cell.submit({name: ns[name] for name in sorted(plan.reads) if name in ns})
        except NbflowError as exc:
            cell.not_submitted()
            problem = getattr(exc, "problem", None)  # an input the cache cannot hash (task cells have no cache_key=)
            if problem is not None:
                raise UsageError(f"{problem}: pass it in another form, or drop --cache") from None
            raise short_error(exc) from None
        self.cells.add(cell)
        if parsed.block:
            return self._block(cell)
        return None

    def _block(self, cell: TaskCell) -> None:
        """``--block``: wait, then show the cell's output as an ordinary cell would (no display updates)."""
        try:
            cell.settled.wait()
        except KeyboardInterrupt as exc:
            cell.attach_view()  # it keeps running: from now on its output goes to a live display here
            raise short_error(exc, _interrupted([cell])) from None
        report = cell.report
        sys.stdout.write(report.get("stdout", ""))
        sys.stderr.write(report.get("stderr", ""))
        if cell.error is not None:
            raise short_error(cell.error, report.get("traceback"))
        if cell.outcome == "cancelled":
            print(f"nbflow: task cell {cell.name!r} was cancelled", file=sys.stderr)
        else:
            for bundle in report.get("displays", []) + [report.get("value")]:
                if bundle is not None:
                    display(bundle, raw=True)

    def _wait_for(self, cells: list[TaskCell]) -> None:
        try:
            for cell in cells:
                cell.settled.wait()
        except KeyboardInterrupt as exc:
            raise short_error(exc, _interrupted(cells)) from None
        # A cell drawn for the last time while this one ran went with its header, which every front-end takes
        # in; nbclient drops what went with an earlier cell's header once that cell is done: draw those again.
        this = current_request()
        for cell in cells:
            if cell.view is not None and cell.view.final_request != this:
                cell.republish()
        failed = [f"{cell.name} ({type(cell.error).__name__})" for cell in cells if cell.error is not None]
        if failed:
            print(f"nbflow: {len(failed)} task cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        cancelled = [cell.name + (" (stopped)" if cell.ran else "") for cell in cells if cell.outcome == "cancelled"]
        if cancelled:
            print(f"nbflow: {len(cancelled)} task cell(s) cancelled: {', '.join(cancelled)}", file=sys.stderr)


def _futures_in(namespace: dict[str, Any]) -> list[Any]:
    """The futures among the notebook's variables, and in their lists, tuples and dicts (one level down)."""
    from ..futures import Future

    found = []
    for value in list(namespace.values()):
        if isinstance(value, Future):
            found.append(value)
        elif isinstance(value, (list, tuple, dict)) and len(value) <= 100_000:
            items = value.values() if isinstance(value, dict) else value
            found += [item for item in items if isinstance(item, Future)]
    return found


def _cell_number(shell: Any) -> int:
    """The running cell's In[] number (IPython 9 has already advanced ``execution_count`` by now)."""
    history = getattr(shell, "history_manager", None)
    return len(history.input_hist_parsed) - 1 if history is not None else shell.execution_count


# ``%nbflow stop``'s line: what stopping did, by the cell's status when asked
_STOPPED = {
    "running": "was running: cancelled once it has stopped",
    "stopping": "already stopping",
    "waiting": "had not started: cancelled",
    "pending": "had not started: cancelled",
}


def _interrupted(cells: list[TaskCell]) -> str:
    """The interrupted wait's message; the status lines of the cells that keep running say how to stop them."""
    running = [cell for cell in cells if not cell.settled.is_set()]
    for cell in running:
        cell.interrupted = True
    names = [cell.name for cell in running]
    return (
        f"KeyboardInterrupt: stopped waiting; {len(names)} task cell(s) keep running and rebind their "
        f"outputs when done: {', '.join(names)} (%nbflow stop {' '.join(names)} stops them)"
    )
