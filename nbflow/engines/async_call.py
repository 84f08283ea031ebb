"""``await task(x)``: a direct call of an async task, run where it is awaited (a notebook cell's top-level
``await``, another async task), holding the task's limits while awaited, with its timeout and retries."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from .. import context
from ..futures import find_futures, new_key, substitute, upstream_value
from ..options import Runnable
from .async_loop import Deadline
from .attempt import Attempt, retry_delay


async def call_async(eng: Any, task: Runnable, args: tuple, kwargs: dict) -> Any:
    """``Engine.call`` for an async task: dependencies awaited, ``eng``'s demands of it (``_holds``) acquired
    without blocking the loop, ``timeout`` (a coroutine can be cancelled, unlike a direct call's thread),
    ``retries`` and ``retry_delay`` applied."""
    from ..machine_limits.api import acquire_all_async

    deps = find_futures((args, kwargs))
    if deps:
        await asyncio.wait([asyncio.wrap_future(dep) for dep in deps])
        args, kwargs = substitute((args, kwargs), upstream_value)
    opts = task.options
    demands = eng._holds(task)
    key = new_key(opts.name)
    here = asyncio.current_task()
    where = here.get_name() if here is not None else None
    for number in itertools.count():
        attempt, deadline = Attempt(number, key, opts.name), Deadline(opts.name, opts.timeout)
        try:
            if demands:
                attempt.holdings = await acquire_all_async(demands, task=opts.name)
            attempt.pick_gpus(eng.cuda_visible)
            ends = time.monotonic() + opts.timeout if opts.timeout is not None else None
            with context.running_coroutine(attempt.context(where, demands, ends)):
                return await deadline.run(task.fn(*args, **kwargs), attempt.release)
        except Exception as exc:
            delay = retry_delay(exc, number, opts)
            if delay is None:
                raise
        finally:
            if not deadline.late:  # (a timed-out coroutine releases them when it has really ended)
                attempt.release()
        await asyncio.sleep(delay)
