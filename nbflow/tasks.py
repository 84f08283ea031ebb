"""``@nbflow.task``: a function plus the options an engine needs to place and run it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, overload

from .engines import engine
from .futures import Future
from .options import TaskOptions, changed
from .retry_policy import Backoff


class Task:
    """A function marked as a task: ``submit``/``map`` run it in the background, a call runs it here."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options
        self.is_async = is_coroutine_function(fn)  # an ``async def``: its calls are awaited, on an event loop
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
        """Run now, in this thread, holding the task's resources and limits while it runs; an async task returns
        an awaitable that runs it where it is awaited, holding them while awaited."""
        if self.is_async:
            from .engines.async_call import call_async

            if self.options.cache:
                from .caching import call_async as cached_call

                return cached_call(self, args, kwargs)
            return call_async(engine(), self, args, kwargs)
        if self.options.cache:
            from .caching import call

            return call(self, args, kwargs)
        return engine().call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<nbflow.Task {self.options.name}>"

    def __reduce__(self):  # pickled by value with its options, for process pools and Dask
        return (Task, (self.fn, self.options))


def is_coroutine_function(fn: Any) -> bool:
    """Whether calling ``fn`` makes a coroutine (``async def``, also through ``functools.partial``, a bound method
    or an object whose ``__call__`` is one), without importing ``inspect`` or ``asyncio``; an async generator is
    refused (``TypeError``): a task returns one value."""
    flags = _code_flags(fn)
    if flags & _CO_ASYNC_GENERATOR:
        raise TypeError(
            f"{getattr(fn, '__name__', type(fn).__name__)} is an async generator (async def with yield): a task"
            " returns one value; collect the items in a list and return it"
        )
    return bool(flags & _CO_COROUTINE)


def _code_flags(fn: Any) -> int:
    while isinstance(fn, functools.partial):
        fn = fn.func
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:  # an object: its class's __call__
        call = next((vars(klass)["__call__"] for klass in type(fn).__mro__ if "__call__" in vars(klass)), None)
        code = getattr(call, "__code__", None)
    return code.co_flags if code is not None else 0


_CO_COROUTINE, _CO_ASYNC_GENERATOR = 0x80, 0x200  # ``inspect.CO_COROUTINE``, ``inspect.CO_ASYNC_GENERATOR``


@overload
def task(fn: Callable[..., Any], /) -> Task: ...
@overload
def task(
    *,
    name: str | None = None,
    resources: Mapping[str, float] | str | None = None,
    limits: Mapping[str, float] | str | None = None,
    retries: int = 0,
    retry_delay: float | str | Sequence[float | str] | Backoff = 0.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool] | None = None,
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
    retry_on=None,
    timeout=None,
    max_memory=None,
    cache=False,
    cache_key=None,
    cache_expiration=None,
):
    """Mark a function as a task: ``@nbflow.task`` or ``@nbflow.task(resources={"GPU": 1}, retries=2)``.

    Options are checked here, so a bad one fails at the decorator, not when the task first runs. A failed attempt
    is retried while ``retries`` remain and ``retry_on`` (an exception class, a tuple of them, or a function
    ``exc -> bool``; default: every ``Exception``) matches it, after ``retry_delay``: seconds, a list of them (one
    per retry, the last repeating) or ``nbflow.backoff(...)``; an exception's ``retry_after`` seconds replace it.
    """
    options = TaskOptions(
        name=name or "task",
        resources=resources or {},
        limits=limits or {},
        retries=retries,
        retry_delay=retry_delay,
        retry_on=retry_on,
        timeout=timeout,
        max_memory=max_memory,
        cache=cache,
        cache_key=cache_key,
        cache_expiration=cache_expiration,
    )

    def wrap(f: Callable[..., Any]) -> Task:
        named = getattr(f, "__name__", None) or type(f).__name__  # (a callable object: its class's name)
        return Task(f, options if name else changed(options, {"name": named}))

    return wrap(fn) if fn is not None else wrap
