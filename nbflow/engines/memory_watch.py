"""``max_memory`` for ``processes=True`` tasks: a thread in the kernel that watches the children running bounded
tasks and kills one whose memory passes its bound.

What is measured is the resident memory (RSS) of the child plus every process descending from it (a shared page
counts in each process that maps it), read from ``/proc`` every ``POLL`` seconds: a few small file reads per
process, so the watch costs well under a millisecond a round. The thread runs only while a bounded task runs: it
starts with the first one and ends when none is left, so tasks without ``max_memory`` never create it. Past the
bound, the child's process group and the descendants seen in that round get SIGKILL at once (a daemon that
double-forked out of the tree is still in the group; one that made its own session is neither counted nor killed).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time

from ..errors import EngineConfigError, OutOfMemory
from ..specs import size_text

POLL = 0.05  # seconds between two rounds: a runaway allocation is seen within this (plus one round's reads)
_PAGE = os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _supported() -> bool:
    """Whether this system lists a process's children in ``/proc`` (Linux with ``CONFIG_PROC_CHILDREN``)."""
    return sys.platform.startswith("linux") and os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")


def check_watchable(task: str, processes: bool) -> None:
    """At submit, on the local engine: refuse ``max_memory`` where it cannot be enforced."""
    if not processes:
        raise EngineConfigError(
            f"task {task!r} has max_memory, which needs processes=True: a thread's memory cannot be bounded;"
            " use nbflow.use('local', processes=True)"
        )
    if not _supported():
        raise EngineConfigError(
            f"task {task!r} has max_memory, which needs Linux: its processes' memory is read from /proc"
        )


class Watched:
    """One bounded task running in the child ``pid``: ``peak`` is the most its process tree was seen using, ``over``
    whether it passed ``bound`` (and was killed)."""

    __slots__ = ("watch", "pid", "bound", "task", "peak", "over")

    def __init__(self, watch: MemoryWatch, pid: int, bound: int, task: str) -> None:
        self.watch = watch
        self.pid = pid
        self.bound = bound
        self.task = task
        self.peak = 0
        self.over = False

    def end(self) -> None:
        """The task's attempt is over: stop watching (``over`` is final once this returns)."""
        self.watch._drop(self)

    def error(self) -> OutOfMemory:
        return OutOfMemory(
            f"task {self.task!r} used {size_text(self.peak)}, over its max_memory of {size_text(self.bound)}:"
            f" its process was stopped",
            self.bound,
            self.peak,
        )


class MemoryWatch:
    """The watcher of the children running bounded tasks; ``watch`` registers one for the length of one attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[Watched] = set()
        self._thread: threading.Thread | None = None

    def watch(self, bound: int, task: str, pid: int) -> Watched:
        """Watch the child ``pid`` running ``task`` against ``bound`` bytes until ``Watched.end``."""
        watched = Watched(self, pid, bound, task)
        with self._lock:
            self._watched.add(watched)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="nbflow-memory-watch", daemon=True)
                self._thread.start()
        return watched

    def _drop(self, watched: Watched) -> None:
        with self._lock:
            self._watched.discard(watched)

    def _serve(self) -> None:
        while True:
            with self._lock:
                if not self._watched:
                    self._thread = None
                    return
                watched = list(self._watched)
            for entry in watched:
                self._measure(entry)
            time.sleep(POLL)

    def _measure(self, entry: Watched) -> None:
        pids = _tree(entry.pid)
        used = sum(map(_rss, pids))
        with self._lock:  # (``end`` takes this lock: once it returns, nothing is killed for that attempt)
            if entry not in self._watched:
                return
            entry.peak = max(entry.peak, used)
            if used <= entry.bound:
                return
            entry.over = True  # before the kill: whoever sees the child die then reads it
            self._watched.discard(entry)
            try:
                os.killpg(entry.pid, signal.SIGKILL)  # the child's group: also what left the tree but not the group
            except OSError:  # no group yet
                pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:  # gone meanwhile
                    pass


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, parents first (each thread lists the children it started)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        out.append(parent)
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:  # gone meanwhile
            continue
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    todo.extend(map(int, f.read().split()))
            except OSError:
                pass
    return out


def _rss(pid: int) -> int:
    """The resident memory of ``pid`` in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


watcher = MemoryWatch()  # one for the process: each watched entry carries its own child, bound and task
