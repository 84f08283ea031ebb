"""Task options: validated once, when a task is declared, and read by every engine the same way."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .errors import ResourceSpecError
from .retry_policy import RetryDelay, RetryOn, delay_option, retry_on_option
from .specs import byte_size, duration, parse_resources


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Validated options of a task.

    On every engine: a failed attempt (an exception, a ``TaskTimeout``, a lost worker) is retried while
    ``retries`` remain and ``retry_on`` (an exception class, a tuple of them, or a function ``exc -> bool``;
    default: every ``Exception``) matches it, after ``retry_delay`` (seconds; a list of them, one per retry, the
    last repeating; or ``nbflow.backoff(...)``), during which the task holds nothing; ``timeout``
    bounds each attempt from the moment it starts running. ``max_memory`` (bytes) bounds the memory of a
    ``processes=True`` attempt's process tree: past it the process is killed and the task fails with
    ``OutOfMemory``, never retried; the engines that cannot bound it refuse it at submit.
    """

    name: str
    resources: Mapping[str, float] = dataclasses.field(default_factory=dict)
    limits: Mapping[str, float] = dataclasses.field(default_factory=dict)
    retries: int = 0
    retry_delay: RetryDelay = 0.0
    timeout: float | None = None
    max_memory: int | None = None
    cache: bool = False
    cache_key: Callable[..., str] | None = None
    cache_expiration: float | None = None
    retry_on: RetryOn = None  # (last: the constructor's positions before it stay as they were)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ResourceSpecError(f"task name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "resources", parse_resources(self.resources))
        object.__setattr__(self, "limits", parse_resources(self.limits))
        if isinstance(self.retries, bool) or not isinstance(self.retries, numbers.Integral) or self.retries < 0:
            raise ResourceSpecError(f"retries must be a whole number >= 0, got {self.retries!r}")
        object.__setattr__(self, "retries", int(self.retries))
        object.__setattr__(self, "retry_delay", delay_option(self.retry_delay))
        object.__setattr__(self, "retry_on", retry_on_option(self.retry_on))
        if self.timeout is not None:
            object.__setattr__(self, "timeout", duration(self.timeout, "timeout"))
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", byte_size(self.max_memory, "max_memory"))
        if not isinstance(self.cache, bool):
            raise ResourceSpecError(f"cache must be True or False, got {self.cache!r}")
        if self.cache_key is not None and not callable(self.cache_key):
            raise ResourceSpecError(f"cache_key must be a function of the call's arguments, got {self.cache_key!r}")
        if self.cache_expiration is not None:
            object.__setattr__(self, "cache_expiration", duration(self.cache_expiration, "cache_expiration"))
        if (self.cache_key is not None or self.cache_expiration is not None) and not self.cache:
            object.__setattr__(self, "cache", True)  # asking how to cache means caching

    def held(self) -> dict[str, float]:
        """What the task holds while it runs: ``resources`` and ``limits`` (same names add up)."""
        out = dict(self.resources)
        for name, amount in self.limits.items():
            out[name] = out.get(name, 0.0) + amount
        return out

    def __reduce__(self):  # constructor arguments pickle smaller and faster than state
        tail = self.retry_on is not None  # the rare options last: only what is set, and what comes before it
        return (
            TaskOptions,
            (self.name, dict(self.resources), dict(self.limits), self.retries, self.retry_delay, self.timeout)
            + ((self.max_memory,) if self.max_memory is not None or self.cache or tail else ())
            + ((self.cache, self.cache_key, self.cache_expiration) if self.cache or tail else ())
            + ((self.retry_on,) if tail else ()),
        )


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TaskOptions))


class Runnable(Protocol):
    """What an engine needs of a task: the function and its options (``nbflow.Task`` is one)."""

    fn: Callable[..., Any]
    options: TaskOptions

    @property
    def name(self) -> str: ...


def changed(options: TaskOptions, changes: Mapping[str, Any]) -> TaskOptions:
    """``options`` with ``changes`` applied; unknown option names raise ``TypeError`` listing the valid ones."""
    unknown = set(changes) - set(OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown task option(s) {sorted(unknown)}; valid: {', '.join(OPTION_NAMES)}")
    return dataclasses.replace(options, **changes)
