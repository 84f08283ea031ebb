"""``@nbflow.task``: a function plus the options an engine needs to place and run it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, overload

from .errors import ResourceSpecError
from .futures import Future
from .specs import parse_resources


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Validated options of a task; engines read these and nothing else."""

    name: str
    resources: Mapping[str, float] = dataclasses.field(default_factory=dict)
    limits: Mapping[str, float] = dataclasses.field(default_factory=dict)
    retries: int = 0
    retry_delay: float = 0.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ResourceSpecError(f"task name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "resources", parse_resources(self.resources))
        object.__setattr__(self, "limits", parse_resources(self.limits))
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ResourceSpecError(f"retries must be a whole number >= 0, got {self.retries!r}")
        if not isinstance(self.retry_delay, (int, float)) or self.retry_delay < 0:
            raise ResourceSpecError(f"retry_delay must be seconds >= 0, got {self.retry_delay!r}")
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or self.timeout <= 0):
            raise ResourceSpecError(f"timeout must be seconds > 0 or None, got {self.timeout!r}")

    def __reduce__(self):  # sent with every Dask task: constructor arguments pickle smaller and faster than state
        return (
            TaskOptions,
            (self.name, dict(self.resources), dict(self.limits), self.retries, self.retry_delay, self.timeout),
        )


class Task:
    """A function marked as a task: ``submit``/``map`` run it in the background, a call runs it here."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options
        functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        return self.options.name

    def submit(self, *args: Any, **kwargs: Any) -> Future:
        """Run in the background on the current engine; never blocks on resources."""
        from .engines import engine

        return engine().submit(self, args, kwargs)

    def map(self, *iterables: Iterable[Any], **kwargs: Any) -> list[Future]:
        """``submit`` once per element (zipped, like the built-in ``map``); ``kwargs`` go to every call."""
        from .engines import engine

        eng = engine()
        return [eng.submit(self, args, kwargs) for args in zip(*iterables, strict=False)]

    def with_options(self, **changes: Any) -> Task:
        """A copy of this task with some options changed, e.g. ``infer.with_options(resources={"GPU": 2})``."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(TaskOptions)}
        if unknown:
            raise TypeError(f"unknown task option(s) {sorted(unknown)}; valid: {_OPTION_NAMES}")
        return Task(self.fn, dataclasses.replace(self.options, **changes))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run now, in this thread, holding the task's resources and limits while it runs."""
        from .engines import engine

        return engine().call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<nbflow.Task {self.options.name}>"

    def __reduce__(self):  # pickled by value with its options, for process pools and Dask
        return (Task, (self.fn, self.options))


_OPTION_NAMES = ", ".join(f.name for f in dataclasses.fields(TaskOptions))


@overload
def task(fn: Callable[..., Any], /) -> Task: ...
@overload
def task(
    *,
    name: str | None = None,
    resources: Mapping[str, float] | str | None = None,
    limits: Mapping[str, float] | str | None = None,
    retries: int = 0,
    retry_delay: float = 0.0,
    timeout: float | None = None,
) -> Callable[[Callable[..., Any]], Task]: ...


def task(fn=None, /, *, name=None, resources=None, limits=None, retries=0, retry_delay=0.0, timeout=None):
    """Mark a function as a task: ``@nbflow.task`` or ``@nbflow.task(resources={"GPU": 1}, retries=2)``."""

    def wrap(f: Callable[..., Any]) -> Task:
        options = TaskOptions(
            name=name or getattr(f, "__name__", "task"),
            resources=resources or {},
            limits=limits or {},
            retries=retries,
            retry_delay=retry_delay,
            timeout=timeout,
        )
        return Task(f, options)

    return wrap(fn) if fn is not None else wrap
