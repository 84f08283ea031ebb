"""Child processes for ``nbflow.use("local", processes=True)``: one per pool thread, started on first use.

Why not ``ProcessPoolExecutor``: a task that overruns its ``timeout`` must really stop and give its
resources back, and killing a ``ProcessPoolExecutor`` worker breaks the whole pool. Here each pool
thread owns one child (``spawn`` context: safe with threads around), so killing it touches nothing
else and the next task simply starts a fresh child. Payloads are cloudpickled, so functions and
closures defined in a notebook (``__main__``) work.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cloudpickle

from .. import context, sidechannel
from ..errors import WorkerDied, portable
from .attempt import not_a_coroutine

if TYPE_CHECKING:
    from .memory_watch import Watched

_SIDE = b"nbflow-side:"  # leads a side-channel message in the child's replies (a pickle starts with 0x80)


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a child, attached as its ``__cause__``."""

    def __str__(self) -> str:
        return self.args[0]


class ChildProcess:
    """One child process that runs payloads sent by its owning thread, one at a time."""

    def __init__(self) -> None:
        self._proc: Any = None
        self._conn: Any = None
        self._devices: str | None = None  # CUDA_VISIBLE_DEVICES the child last ran a task with

    def start(self, env: dict[str, str]) -> int:
        """Have a child ready to run a task with ``env``; returns its pid.

        CUDA reads ``CUDA_VISIBLE_DEVICES`` once per process, so a child that ran with other devices
        is replaced rather than reused: a task never touches a GPU slot it does not hold.
        """
        devices = env.get("CUDA_VISIBLE_DEVICES")
        if devices is not None and self._devices not in (None, devices):
            self.close()
        if self._proc is None:
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, os.getpid()), name="nbflow-task", daemon=True)
            proc.start()
            child.close()
            self._proc, self._conn = proc, parent
        if devices is not None:
            self._devices = devices
        return self._proc.pid

    def run(
        self,
        fn: Any,
        args: tuple,
        kwargs: dict,
        env: dict[str, str],
        keep: Sequence[int] = (),
        ctx: Any = None,
        watch: Callable[[int], Watched] | None = None,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in the child with ``env`` set and ``ctx`` as ``nbflow.current()``; its
        exception is re-raised here.

        ``keep`` are the locked slot-file descriptors of the shares the task holds: the child holds copies
        while it runs, so if this process dies first, the shares stay taken until the child is gone too.
        ``watch(pid)`` (a task's ``max_memory``) watches the child's memory while it runs the task; if the
        watch killed it, ``OutOfMemory`` is raised here.
        """
        self.start(env)
        self._conn.send_bytes(struct.pack("!I", len(keep)))
        if keep:
            with socket.socket(fileno=os.dup(self._conn.fileno())) as sock:
                socket.send_fds(sock, [b"F"], list(keep))
        self._conn.send_bytes(cloudpickle.dumps((fn, args, kwargs, env, ctx)))
        watched = watch(self._proc.pid) if watch is not None else None
        try:
            while (reply := self._conn.recv_bytes()).startswith(_SIDE):  # what the task shows while it runs
                sidechannel.deliver(*cloudpickle.loads(reply[len(_SIDE) :]))
            ok, value, tb, report = cloudpickle.loads(reply)
        except (EOFError, OSError):
            ok = None  # it died
        finally:
            if watched is not None:
                watched.end()  # (before any reap: the watch never signals a pid the system may have reused)
        if watched is not None and watched.over:  # killed for its memory (perhaps just as it replied)
            self._reap()
            raise watched.error()
        if ok is None:
            pid, code = self._proc.pid, self._reap()
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise WorkerDied(f"the worker process (pid {pid}) died with {how} while running the task")
        if ok:
            return value
        value.__cause__ = RemoteTraceback(tb)
        context.report_failure(value, report)  # (its snapshot: ``debugging.worker_snapshot``)
        raise value

    def kill(self) -> None:
        """SIGKILL the child and the processes it started (a timed-out or stopped task); ``run`` then raises
        ``WorkerDied`` in the owning thread."""
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM the child and the processes it started (a stopped task): they exit unless they handle it."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        """Signal the child's process group (it leads one: what the task started is in it, and a forked helper
        holding the child's pipe or shares would otherwise outlive it), or the child alone if it has not made its
        group yet (once each: a second SIGTERM would interrupt the task's own handler of the first)."""
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # no such group yet
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:  # gone
                pass

    def close(self) -> None:
        """Ask the child to exit (it finishes nothing: it is idle when this is called) and reap it."""
        if self._proc is not None:
            try:
                self._conn.send_bytes(b"")
            except OSError:
                pass
            self._reap(timeout=5)

    def _reap(self, timeout: float | None = None) -> int | None:
        proc, conn, self._proc, self._conn, self._devices = self._proc, self._conn, None, None, None
        conn.close()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        return proc.exitcode


def _serve(conn: Any, parent: int) -> None:
    """The child's loop: receive a payload, run it, send back ``(ok, value, traceback text, report)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the notebook; the parent decides
    os.setpgid(0, 0)  # its own process group: stopping the task signals whatever the task started too
    multiprocessing.current_process().daemon = False  # a task may start processes (a DataLoader's workers)
    threading.Thread(target=_exit_with, args=(parent,), name="nbflow-parent-watch", daemon=True).start()
    sending = threading.Lock()  # side-channel messages come from a reporter thread, the reply from this one

    def side(channel: str, message: Any) -> None:
        data = _SIDE + cloudpickle.dumps((channel, message))
        with sending:
            conn.send_bytes(data)

    sidechannel.install(side)
    while True:
        try:
            header = conn.recv_bytes()
        except EOFError:
            return
        if not header:
            return
        (count,) = struct.unpack("!I", header)
        kept: list[int] = []
        if count:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                kept = socket.recv_fds(sock, 1, count)[1]
        try:
            reply = _run(conn.recv_bytes())
        finally:
            for fd in kept:  # the task is over: the parent releases the shares
                os.close(fd)
        with sending:
            conn.send_bytes(reply)


def _exit_with(parent: int) -> None:
    """Exit the moment the parent (the kernel) dies, however it dies: a task must not run on without it."""
    try:
        fd = os.pidfd_open(parent)
    except (AttributeError, OSError):  # no pidfd (old kernel), or the parent is gone already
        while os.getppid() == parent:
            time.sleep(0.05)
        os._exit(70)
    if os.getppid() != parent:  # died before the pidfd was opened
        os._exit(70)
    select.select([fd], [], [])
    os._exit(70)


def run_coroutine(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """An async task's function in the child: its coroutine run to its end on an event loop of its own (its task
    also in the coroutine's context: threads it starts with ``asyncio.to_thread`` see it, as on the local loop).
    SIGTERM (``stop()``, a timeout) cancels it, so its ``finally`` blocks run before the SIGKILL that follows."""
    import asyncio

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # stop(), a timeout: cancel it
        try:
            with context.running_coroutine(context.current()):
                return await fn(*args, **kwargs)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(main())


def _run(data: bytes) -> bytes:
    saved: dict[str, str | None] = {}
    try:
        fn, args, kwargs, env, ctx = cloudpickle.loads(data)
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        with context.running(ctx):
            reply = (True, not_a_coroutine(fn(*args, **kwargs), ctx.name if ctx else "task"), "", None)
    except BaseException as exc:
        from ..debugging.worker_snapshot import report

        text, sent = traceback.format_exc(), report(exc, None, frames=True)  # (before ``portable`` drops its frames)
        reply = (False, portable(exc, text), text, sent)
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
    try:
        return cloudpickle.dumps(reply)
    except Exception as exc:  # an unpicklable result or exception
        what = "result" if reply[0] else f"exception {type(reply[1]).__name__}: {reply[1]}"
        err = RuntimeError(f"the task's {what} could not be sent back from the worker process: {exc}")
        return cloudpickle.dumps((False, err, reply[2], None))
