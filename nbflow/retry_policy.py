"""Retry policies: how long a failed attempt waits before the next one (``retry_delay``) and which failures are
retried at all (``retry_on``).

Both are checked once, when a task is declared (``options.TaskOptions``); one function applies them for every
engine and for a direct call (``engines.attempt.retry_delay``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from collections.abc import Callable
from typing import Any, Union

from .errors import OutOfMemory, ResourceSpecError
from .specs import MAX_SECONDS, duration


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential retry delays (made by ``nbflow.backoff``): ``base * factor ** (n - 1)`` seconds before retry
    ``n`` (1 for the first), at most ``max``, then moved by a fraction of itself drawn anew for each retry from
    ``[-jitter, +jitter]``; never below 0."""

    base: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        base = duration(self.base, "backoff base", zero_ok=True)
        cap = duration(self.max, "backoff max", zero_ok=True)
        factor, jitter = self.factor, self.jitter
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 1 <= factor < math.inf:
            raise ResourceSpecError(f"backoff factor must be a finite number >= 1, got {_shown(factor)}")
        if isinstance(jitter, bool) or not isinstance(jitter, numbers.Real) or not 0 <= jitter <= 1:
            raise ResourceSpecError(f"backoff jitter must be a fraction from 0 to 1, got {_shown(jitter)}")
        if cap < base:
            raise ResourceSpecError(f"backoff max ({cap:g} s) must be at least its base ({base:g} s)")
        for name, value in (("base", base), ("factor", float(factor)), ("max", cap), ("jitter", float(jitter))):
            object.__setattr__(self, name, value)

    def delay(self, retry: int, rng: Any = random) -> float:
        """The seconds to wait before retry ``retry`` (1 for the first); ``rng`` draws the jitter."""
        seconds = 0.0
        if self.base > 0:
            try:
                seconds = min(self.base * self.factor ** (retry - 1), self.max)
            except OverflowError:  # a factor ** n past the float range: capped anyway
                seconds = self.max
        if self.jitter and seconds:
            seconds += seconds * rng.uniform(-self.jitter, self.jitter)
        return min(max(seconds, 0.0), MAX_SECONDS)

    def __repr__(self) -> str:
        return f"backoff(base={self.base!r}, factor={self.factor!r}, max={self.max!r}, jitter={self.jitter!r})"

    def __reduce__(self):
        return (Backoff, (self.base, self.factor, self.max, self.jitter))


def backoff(base: float | str = 1.0, factor: float = 2.0, max: float | str = 60.0, jitter: float = 0.1) -> Backoff:
    """Exponential retry delays, for ``retry_delay=``: ``base * factor ** (n - 1)`` seconds before retry ``n``,
    capped at ``max`` seconds, then moved by up to ``jitter`` of itself either way (a fraction from 0 to 1, drawn
    anew for each retry, so runs that failed together do not retry together). ``base`` and ``max`` are durations
    (``0.5``, ``"2s"``) with ``max >= base``; ``factor`` is a finite number >= 1. An exception's ``retry_after``
    (seconds) replaces the computed delay, still capped at ``max``."""
    return Backoff(base, factor, max, jitter)


RetryDelay = Union[float, "tuple[float, ...]", Backoff]
RetryOn = Union[type, "tuple[type, ...]", Callable[[BaseException], Any], None]


def delay_option(value: Any) -> RetryDelay:
    """``retry_delay=`` checked: seconds (a number or a duration string), a non-empty list or tuple of them (the
    delay before retry 1, 2, ...; the last repeats), or a ``Backoff``; else a one-line ``ResourceSpecError``."""
    if isinstance(value, Backoff):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ResourceSpecError("retry_delay must not be an empty list: give at least one delay (0 for none)")
        return tuple(duration(item, f"retry_delay[{i}]", zero_ok=True) for i, item in enumerate(value))
    if not isinstance(value, (str, numbers.Real)) or isinstance(value, bool):
        raise ResourceSpecError(
            "retry_delay must be seconds (a number, or a duration such as '90s'), a list of them, or"
            f" nbflow.backoff(...), got {_shown(value)}"
        )
    return duration(value, "retry_delay", zero_ok=True)


def retry_on_option(value: Any) -> RetryOn:
    """``retry_on=`` checked: None (every ``Exception``), an exception class, a non-empty tuple (or list) of them,
    or a function of the exception; else a one-line ``ResourceSpecError``."""
    if value is None:
        return None
    if isinstance(value, type):
        check_exception_class(value, "retry_on")
        return value
    if isinstance(value, (tuple, list)):
        if not value:
            raise ResourceSpecError("retry_on=() would retry nothing: leave retries at 0 instead")
        for i, item in enumerate(value):
            check_exception_class(item, f"retry_on[{i}]")
        return tuple(value)
    if callable(value):
        return value
    raise ResourceSpecError(
        f"retry_on must be an exception class, a tuple of them, or a function exc -> bool, got {_shown(value)}"
    )


def check_exception_class(cls: Any, what: str) -> None:
    """A one-line ``ResourceSpecError`` naming ``what`` unless ``cls`` is an exception class that can be retried."""
    if not isinstance(cls, type) or not issubclass(cls, BaseException):
        raise ResourceSpecError(f"{what} must be an exception class, got {_shown(cls)}")
    if not issubclass(cls, Exception):
        raise ResourceSpecError(f"{what}: {cls.__name__} is not an Exception, and is never retried")
    if issubclass(cls, OutOfMemory):
        raise ResourceSpecError(f"{what}: {cls.__name__} is never retried (the same call would use as much again)")


def is_function(retry_on: RetryOn) -> bool:
    """Whether ``retry_on`` is the user's function (deciding runs their code), not classes."""
    return retry_on is not None and not isinstance(retry_on, (type, tuple))


def matches(retry_on: RetryOn, exc: BaseException) -> bool:
    """Whether ``retry_on`` retries ``exc``; a function's own exception propagates."""
    if retry_on is None:
        return True
    if is_function(retry_on):
        return bool(retry_on(exc))
    return isinstance(exc, retry_on)


def retry_after(exc: BaseException) -> float | None:
    """The seconds ``exc`` asks to wait (its ``retry_after`` attribute, as a server's ``Retry-After``): a finite
    number >= 0, at most ``MAX_SECONDS``; None for anything else."""
    try:
        value = getattr(exc, "retry_after", None)
    except Exception:  # a property that fails: as if there were none
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        seconds = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    if not 0 <= seconds < math.inf:  # NaN fails too
        return None
    return min(seconds, MAX_SECONDS)


def policy_delay(policy: RetryDelay, retry: int, rng: Any = random) -> float:
    """The delay ``policy`` gives before retry ``retry`` (1 for the first)."""
    if isinstance(policy, Backoff):
        return policy.delay(retry, rng)
    if isinstance(policy, tuple):
        return policy[min(retry, len(policy)) - 1]
    return policy


def _shown(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."
