"""Every failure nbflow raises is an ``NbflowError`` subclass; all are importable from ``nbflow``."""

from __future__ import annotations


class NbflowError(Exception):
    """Base class of every nbflow error."""


class ResourceSpecError(NbflowError, ValueError):
    """A malformed resource or limit spec, amount or name."""


class EngineConfigError(NbflowError, ValueError):
    """An unknown engine, or an engine option out of range (``workers``, ``on_unsatisfiable``)."""


class TaskArgumentError(NbflowError, ValueError):
    """A task argument nbflow cannot pass on: a container that holds itself and futures cannot be rebuilt."""


class NoSuchLimit(NbflowError, LookupError):
    """A local resource has no capacity on this machine."""


class Unsatisfiable(NbflowError):
    """A demand larger than any worker or limit can ever give."""


class LimitTimeout(NbflowError, TimeoutError):
    """A limit was not granted within ``timeout``."""


class UpstreamError(NbflowError):
    """A dependency of this task failed or was cancelled (or stopped), so the task never ran."""

    def __init__(self, failed: str, cause: BaseException | None = None, upstream: object = None) -> None:
        self.failed = failed
        self.upstream = upstream  # (in the kernel) the upstream future: ``nbflow.debug`` follows it to the failure
        if isinstance(cause, UpstreamError):  # name the task that really failed, not every hop that never ran
            self.origin: str = cause.origin
            super().__init__(f"upstream task {failed!r} failed: its upstream {self.origin}")
        else:
            what = "was cancelled" if cause is None else f"failed: {type(cause).__name__}: {cause}"
            self.origin = f"{failed!r} {what}"
            super().__init__(f"upstream task {self.origin}")

    def __reduce__(self):  # keep the task name across pickling (process pool, Dask)
        return (type(self), (self.failed,), {"args": self.args, "origin": self.origin})


class TaskTimeout(NbflowError, TimeoutError):
    """A task ran longer than its ``timeout``."""


class TaskStopped(BaseException):
    """Raised inside a task's thread when the task is stopped (``Future.stop``): a ``BaseException``, like
    ``KeyboardInterrupt``, so that the task's ``except Exception`` does not swallow it; its ``finally`` blocks
    run. The stopped task's future reads ``cancelled``."""


class OutOfMemory(NbflowError):
    """A ``processes=True`` task's child (with its own children) used more memory than the task's
    ``max_memory``, and was killed; ``bound`` and ``peak`` are in bytes."""

    def __init__(self, message: str, bound: int, peak: int) -> None:
        super().__init__(message)
        self.bound = bound
        self.peak = peak

    def __reduce__(self):
        return (type(self), (str(self), self.bound, self.peak))


class LimitsDirError(NbflowError, OSError):
    """The limits directory is unusable (not writable, foreign-owned, no flock)."""


class SchedulerUnreachable(NbflowError, ConnectionError):
    """No Dask scheduler answered at the given address within the connect timeout."""


class WorkerDied(NbflowError):
    """The child process running a task died (killed, crashed, out of memory)."""


class RemoteError(NbflowError):
    """A task's exception that could not be rebuilt here (its class needs other constructor arguments, or
    cannot be imported); ``type_name``, the message and ``remote_traceback`` are kept."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return (type(self), (self.type_name, str(self).partition(": ")[2], self.remote_traceback))


def portable(exc: BaseException, traceback_text: str = "") -> BaseException:
    """``exc`` if it survives pickling to another process, else a ``RemoteError`` with its type name, message
    and traceback text (used where a task's exception leaves the process that raised it). Drops ``exc``'s
    traceback: what needs its frames must be done first."""
    import pickle

    import cloudpickle

    exc = exc.with_traceback(None)  # its frames leave as text (and a snapshot); one deep traceback would not pickle
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception:
        return RemoteError(type(exc).__qualname__, str(exc), traceback_text)
    return exc
