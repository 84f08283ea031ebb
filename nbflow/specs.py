"""Parsing and validation of resource specs, limit names and durations, shared by every engine and the magics."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple, overload

from .errors import ResourceSpecError

NAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid limit/resource name, else raise ``ResourceSpecError``."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 40 else repr(name[:40] + "...")
        raise ResourceSpecError(f"invalid limit/resource name {shown}: use 1-128 characters from A-Z a-z 0-9 _ . : @ -")
    return name


def check_amount(name: str, amount: object) -> float:
    """Return ``amount`` as a float > 0, else raise ``ResourceSpecError``.

    Any real number is accepted (``numpy.int64(2)``, ``Fraction``), since amounts are often computed;
    bools and strings are refused rather than read as 1 or parsed.
    """
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise ResourceSpecError(f"amount of {name!r} must be a number > 0, got {amount!r}")
    try:
        value = float(amount)
    except OverflowError:  # an int like 10**400
        value = math.inf
    if not math.isfinite(value) or value <= 0:
        raise ResourceSpecError(f"amount of {name!r} must be a finite number > 0, got {_shown(amount)}")
    return value


MAX_SECONDS = 1e7  # about 116 days: a longer duration is a typo (and overflows thread waits)
_WITH_UNIT = re.compile(r"\s*(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?\s*[A-Za-z]+\s*", re.IGNORECASE)


@overload
def duration(
    value: object, what: str | None = ..., *, zero_ok: bool = ..., forever_ok: Literal[False] = ..., text: bool = ...
) -> float: ...
@overload
def duration(
    value: object, what: str | None = ..., *, zero_ok: bool = ..., forever_ok: Literal[True], text: bool = ...
) -> float | None: ...
def duration(
    value: object, what: str | None = None, *, zero_ok: bool = False, forever_ok: bool = False, text: bool = False
) -> float | None:
    """``value`` as seconds: every timeout, delay, interval and expiration is read here, so all take the same forms.

    A number of seconds, or a string with a unit that Dask's ``parse_timedelta`` reads (``"90s"``,
    ``"5 minutes"``); with ``text`` (command-line text) a bare number string too. It must be > 0 (>= 0 with
    ``zero_ok``) and at most ``MAX_SECONDS``; with ``forever_ok``, None and infinity mean no bound (None is
    returned). Anything else — a byte size, NaN, a negative — is a one-line ``ResourceSpecError`` naming ``what``.
    """
    if value is None and forever_ok:
        return None
    if isinstance(value, str):
        number = _parse_duration(value, text)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        number = math.nan
    else:
        try:
            number = float(value)
        except OverflowError:  # an int like 10**400: too long (only ``math.inf`` means forever)
            number = math.nan
    if number == math.inf and forever_ok:
        return None
    if (number >= 0 if zero_ok else number > 0) and number <= MAX_SECONDS:  # NaN fails both
        return number
    expected = f"seconds {'>= 0' if zero_ok else '> 0'} and at most {MAX_SECONDS:g}"
    if forever_ok:
        expected = f"None or a number of {expected} (None and math.inf wait forever)"
    subject = f"{what} " if what else ""
    raise ResourceSpecError(
        f"{subject}must be {expected}, or a duration such as '90s' or '5 minutes', got {_shown(value)}"
    )


def _parse_duration(text: str, bare_ok: bool) -> float:
    """``text`` in seconds (NaN when malformed); Dask is imported only here, for a string with a unit."""
    if bare_ok:
        try:
            return float(text)
        except ValueError:
            pass
    if _WITH_UNIT.fullmatch(text):
        from dask.utils import parse_timedelta

        try:
            return float(parse_timedelta(text))
        except (KeyError, ValueError, OverflowError):  # an unknown unit; "1e400s" overflows int()
            pass
    return math.nan


def check_timeout(timeout: object) -> float | None:
    """A limit's ``timeout=``: a ``duration`` >= 0, or None to wait forever (also for ``math.inf``)."""
    return duration(timeout, "timeout", zero_ok=True, forever_ok=True)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_amount(name: str, text: str) -> float:
    """Parse ``2``, ``0.5``, ``100e9`` or ``70GB`` (Dask's ``parse_bytes``) into a float > 0."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        value = _parse_bytes(name, text)
    return check_amount(name, value)


def _parse_bytes(name: str, text: str) -> float:
    value = _bytes_with_unit(text)
    if math.isnan(value):
        raise ResourceSpecError(f"amount of {name!r} must be a number > 0 such as 2, 0.5, 100e9 or 70GB, got {text!r}")
    return value


def _bytes_with_unit(text: str) -> float:
    """``"70GB"``, ``"1.5 GiB"`` in bytes (Dask's ``parse_bytes``: decimal and binary units); NaN when malformed."""
    if re.fullmatch(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(e[0-9]+)?\s*[A-Za-z]{1,3}", text):
        from dask.utils import parse_bytes  # dask.utils is light; imported only for byte units

        try:
            return float(parse_bytes(text))
        except (ValueError, OverflowError):  # an unknown unit; "1e400GB" overflows int()
            pass
    return math.nan


MAX_BYTES = 10**15  # 1 PB: a larger memory bound is a typo


def byte_size(value: object, what: str | None = None) -> int:
    """``value`` as a whole number of bytes, 1 to ``MAX_BYTES``: an int (or any real number), or a string with a unit
    (``"200MB"``, ``"2GB"``, ``"1.5 GiB"``) or without (bytes). Anything else — a bool, NaN, a duration, 0 — is a
    one-line ``ResourceSpecError`` naming ``what``."""
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = _bytes_with_unit(text)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        number = math.nan
    else:
        try:
            number = float(value)
        except OverflowError:  # an int like 10**400
            number = math.inf
    if 1 <= number <= MAX_BYTES:  # NaN fails
        return int(number)
    subject = f"{what} " if what else ""
    raise ResourceSpecError(
        f"{subject}must be a number of bytes from 1 to 1e15, or a size such as '200MB', '2GB' or '1.5 GiB',"
        f" got {_shown(value)}"
    )


_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def size_text(count: float) -> str:
    """``count`` bytes for people, in the decimal units a bound is usually given in: ``412 MB``, ``1.5 GB``."""
    value, unit = float(count), 0
    while value >= 999.5 and unit < len(_SIZE_UNITS) - 1:
        value /= 1000
        unit += 1
    return f"{value:.3g} {_SIZE_UNITS[unit]}"


def parse_resources(spec: Mapping[str, object] | Iterable[str] | str | None) -> dict[str, float]:
    """Normalise ``{"GPU": 1}``, ``"GPU=1,MEMORY=2GB"`` or ``["GPU=1", "MEMORY=2GB"]`` to ``{name: float}``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        out: dict[str, float] = {}
        for name, amount in spec.items():
            name = check_name(name)
            out[name] = parse_amount(name, amount) if isinstance(amount, str) else check_amount(name, amount)
        return out
    items = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    out = {}
    for item in items:
        name, sep, amount = str(item).partition("=")
        if not sep or not name.strip():
            raise ResourceSpecError(f"resource {item!r} must look like NAME=AMOUNT, e.g. GPU=1 or MEMORY=2GB")
        name = check_name(name.strip())
        out[name] = parse_amount(name, amount)
    return out


_PERIODS = dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0)
_PERIODS |= dict.fromkeys(("min", "mins", "minute", "minutes"), 60.0)
_PERIODS |= dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0)
_UNITS = {1.0: "s", 60.0: "min", 3600.0: "h"}  # how a rate is shown
_RATE_RE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*/\s*([a-z]+)\s*", re.IGNORECASE)


class Rate(NamedTuple):
    """A rate limit: ``count`` starts per ``period`` seconds; ``text`` is how it is shown (``"60/min"``)."""

    count: float
    period: float
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two starts at this rate."""
        return self.period / self.count


def parse_rate(value: object) -> Rate:
    """``"10/s"``, ``"60/min"``, ``"5000/h"`` (also ``sec``, ``minute``, ``hour``, plurals; a count may be
    fractional: ``"0.5/s"``) as a ``Rate``, else ``ResourceSpecError``."""
    match = _RATE_RE.fullmatch(value) if isinstance(value, str) else None
    period = _PERIODS.get(match.group(2).lower()) if match else None
    count = float(match.group(1)) if match else math.nan
    if period is None or not (math.isfinite(count) and count > 0 and 1e-9 <= period / count <= MAX_SECONDS):
        raise ResourceSpecError(
            "rate must be a string such as '10/s', '60/min' or '5000/h', from one start every 10,000,000 s (about"
            f" 116 days) to 1,000,000,000 a second, got {_shown(value)}"
        )
    return Rate(count, period, f"{count:g}/{_UNITS[period]}")


def check_burst(burst: object) -> int:
    """A rate limit's ``burst`` (how many starts may come at once after a pause): a whole number >= 1."""
    if isinstance(burst, bool) or not isinstance(burst, numbers.Integral) or not 1 <= int(burst) <= 1_000_000:
        raise ResourceSpecError(f"burst must be a whole number from 1 to 1,000,000, got {_shown(burst)}")
    return int(burst)
