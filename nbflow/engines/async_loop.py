"""Where async tasks run (an engine's process, a Dask worker): one asyncio event loop in its own thread.

Coroutines waiting on the network cost no thread each: thousands of async tasks wait at once on one loop, and
the engine's worker threads stay free for sync tasks. The loop starts with the first async task and stops once
its owner is closed and no coroutine of its is left.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from .. import context
from ..errors import TaskTimeout


class EventLoopThread:
    """An event loop in a daemon thread named ``name``, running the coroutines of ``start`` (``spawn``);
    ``setup()`` runs first in that thread."""

    def __init__(
        self, name: str, start: Callable[..., Coroutine[Any, Any, Any]], setup: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self._start_one = start
        self._setup = setup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._spawned: collections.deque = collections.deque()  # the arguments of ``start`` not yet taken by the loop

    def spawn(self, *args: Any) -> bool:
        """Run the coroutine ``start(*args)`` as an asyncio task on the loop (``start`` is called there); False
        once closing. (Only the arguments are kept until then: no closure per coroutine.)"""
        with self._lock:
            if self._closing:
                return False
            loop = self._loop or self._start()
            wake = not self._spawned  # one wake-up of the loop per batch, not per coroutine (each is a write)
            self._spawned.append(args)
        if wake:
            loop.call_soon_threadsafe(self._create)
        return True

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)`` in the loop's thread, soon (nothing if the loop is not running)."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # closed meanwhile: nothing of it runs any more
                pass

    def close(self) -> None:
        """Stop once the coroutines running now (those spawned before, and what they started) have ended."""
        with self._lock:
            self._closing = True
        self.call(self._create)  # (spawned ones not yet created are created first, then waited for)
        self.call(lambda: asyncio.get_running_loop().create_task(self._stop_when_idle()))

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        self._loop = loop
        threading.Thread(target=self._main, args=(loop,), name=self.name, daemon=True).start()
        return loop

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        if self._setup is not None:
            self._setup()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _create(self) -> None:
        with self._lock:
            spawned, self._spawned = self._spawned, collections.deque()
        loop, start = asyncio.get_running_loop(), self._start_one
        for args in spawned:
            loop.create_task(start(*args))

    async def _stop_when_idle(self) -> None:
        """(Closing) wait for every other task of the loop, then stop it: no count is kept per coroutine."""
        me = asyncio.current_task()
        while others := [task for task in asyncio.all_tasks() if task is not me]:
            await asyncio.wait(others)
        asyncio.get_running_loop().stop()


class Deadline:
    """An async attempt's ``timeout``: ``run`` awaits its coroutine for at most that long, then cancels it
    (``CancelledError`` at its ``await``) and raises ``TaskTimeout`` at once, even if it swallows the cancellation.
    ``late`` is then True: what the attempt holds is released by the coroutine's end (``release``), not before."""

    def __init__(self, name: str, timeout: float | None) -> None:
        self.name = name
        self.timeout = timeout
        self.late = False

    async def run(self, coroutine: Coroutine[Any, Any, Any], release: Callable[[], object]) -> Any:
        if self.timeout is None:
            return await coroutine
        inner = asyncio.ensure_future(coroutine)
        try:
            done, _ = await asyncio.wait({inner}, timeout=self.timeout)
        except asyncio.CancelledError:  # the caller was cancelled (stopped): so is the coroutine
            inner.cancel()
            raise
        if done:
            return inner.result()
        self.late = True
        inner.cancel()
        inner.add_done_callback(lambda _: release())
        raise TaskTimeout(f"task {self.name!r} ran longer than its timeout of {self.timeout:g} s")


def run_to_end(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """The coroutine ``make()`` returns, run to its end on an event loop of its own: in this thread, or in a helper
    thread (keeping this thread's current task) where this thread runs a loop already (the kernel's, in a replay)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # none here: a worker's thread
        return asyncio.run(make())
    import concurrent.futures

    ctx = context.current()

    def run() -> Any:
        with context.running(ctx):
            return asyncio.run(make())

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nbflow-loop") as pool:
        return pool.submit(run).result()
