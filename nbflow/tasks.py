"""``@nbflow.task``: a function plus the options an engine needs to place and run it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, overload

from .engines import engine
from .futures import Future
from .options import TaskOptions, changed


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
        if self.options.cache:
            from .caching import submit_many  # (imported on first use: hashing and the store cost ~10 ms)

            return submit_many(self, [(args, kwargs)])[0]
        return engine().submit(self, args, kwargs)

    def map(self, *iterables: Iterable[Any], **kwargs: Any) -> list[Future]:
        """One task per element (zipped, like the built-in ``map``), submitted as one batch; ``kwargs`` go to
        every call."""
        calls = [(args, kwargs) for args in zip(*iterables, strict=False)]
        if self.options.cache:
            from .caching import submit_many

            return submit_many(self, calls)
        return engine().map(self, calls)

    def with_options(self, **changes: Any) -> Task:
        """A copy of this task with some options changed, e.g. ``infer.with_options(resources={"GPU": 2})``."""
        return Task(self.fn, changed(self.options, changes))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run now, in this thread, holding the task's resources and limits while it runs."""
        if self.options.cache:
            from .caching import call

            return call(self, args, kwargs)
        return engine().call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<nbflow.Task {self.options.name}>"

    def __reduce__(self):  # pickled by value with its options, for process pools and Dask
        return (Task, (self.fn, self.options))


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
    max_memory: int | str | None = None,
    cache: bool = False,
    cache_key: Callable[..., str] | None = None,
    cache_expiration: float | None = None,
) -> Callable[[Callable[..., Any]], Task]: ...


def task(
    fn=None,
    /,
    *,
    name=None,
    resources=None,
    limits=None,
    retries=0,
    retry_delay=0.0,
    timeout=None,
    max_memory=None,
    cache=False,
    cache_key=None,
    cache_expiration=None,
):
    """Mark a function as a task: ``@nbflow.task`` or ``@nbflow.task(resources={"GPU": 1}, retries=2)``.

    Options are checked here, so a bad one fails at the decorator, not when the task first runs.
    """
    options = TaskOptions(
        name=name or "task",
        resources=resources or {},
        limits=limits or {},
        retries=retries,
        retry_delay=retry_delay,
        timeout=timeout,
        max_memory=max_memory,
        cache=cache,
        cache_key=cache_key,
        cache_expiration=cache_expiration,
    )

    def wrap(f: Callable[..., Any]) -> Task:
        return Task(f, options if name else changed(options, {"name": getattr(f, "__name__", "task")}))

    return wrap(fn) if fn is not None else wrap
