"""On a Dask worker: a task with a ``timeout`` runs in a helper thread and is stopped at its deadline."""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .. import context
from ..errors import TaskTimeout
from ..futures import set_block_hook
from ..options import Runnable
from ..thread_stop import StoppableCall
from .attempt import Attempt, not_a_coroutine
from .core import bind
from .dask_worker_secede import rejoin_once, secede_once


class Relay:
    """Runs secede/rejoin in the task thread on behalf of the helper thread that runs a timed task.

    Dask's secede/rejoin only work in the thread Dask started the task in; that thread waits on ``requests``.
    """

    def __init__(self) -> None:
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.closed = False

    def call(self, fn: Callable[[], object]) -> None:
        done = threading.Event()
        with self.lock:
            if self.closed:  # the task timed out: nobody will serve the request
                return
            self.requests.put((fn, done))
        done.wait()

    def close(self) -> None:
        with self.lock:
            self.closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                request = self.requests.get_nowait()
                if request is not None:
                    request[1].set()

    @contextlib.contextmanager
    def seceded(self) -> Iterator[None]:
        self.call(secede_once)
        try:
            yield
        finally:
            self.call(rejoin_once)


def run_with_deadline(
    task: Runnable,
    args: tuple,
    kwargs: dict,
    engine: Any,
    attempt: Attempt,
    where: str,
    holds: Mapping[str, float],
    call: StoppableCall,
) -> Any:
    """Run the task in a helper thread (as ``call``) and raise ``TaskTimeout`` in this one at the deadline.

    At the deadline the worker thread and the task's Dask resources are free at once; the helper gets
    ``TaskTimeout`` at its next bytecode (``call.stop``: a blocking C call finishes first), and keeps the
    attempt's holdings (its machine-wide limits) until it has really stopped.
    """
    timeout = task.options.timeout
    deadline = time.monotonic() + timeout
    current = attempt.context(where, holds, deadline)  # its ``nbflow.current()``, with its deadline
    relay = Relay()
    outcome: dict[str, Any] = {}

    def helper() -> None:
        bind(engine)
        set_block_hook(relay.seceded)
        try:
            with context.running(current):
                outcome["value"] = not_a_coroutine(call.run(functools.partial(task.fn, *args, **kwargs)), task.name)
        except BaseException as exc:  # handed to the task thread, which raises it
            outcome["error"], outcome["report"] = exc, context.take_report(exc)
        with relay.lock:
            outcome["finished"] = True
            orphaned = outcome.get("orphaned", [])
        for holding in orphaned:
            holding.release()
        relay.requests.put(None)

    thread = threading.Thread(target=helper, name=f"nbflow-{task.name}", daemon=True)
    thread.start()
    while (request := next_request(relay, deadline)) is not None:
        fn, done = request
        try:
            fn()
        finally:
            done.set()
    with relay.lock:
        timed_out = not outcome.get("finished")
        if timed_out:
            outcome["orphaned"], attempt.holdings = attempt.holdings, []
    if timed_out:
        call.stop(TaskTimeout)
        relay.close()
        raise TaskTimeout(f"task {task.name!r} ran longer than its timeout of {timeout:g} s")
    if "error" in outcome:
        if outcome["report"] is not None:
            context.report_failure(outcome["error"], outcome["report"])
        raise outcome["error"]
    return outcome["value"]


def next_request(relay: Relay, deadline: float) -> tuple | None:
    """The helper's next secede/rejoin request; ``None`` when it finished or the deadline passed."""
    try:
        return relay.requests.get(timeout=max(deadline - time.monotonic(), 0))
    except queue.Empty:
        return None
