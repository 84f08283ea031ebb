"""Parsing and validation of resource specs and limit names, shared by every engine and the magics."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping

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


def check_timeout(timeout: object) -> float | None:
    """Return ``timeout`` in seconds as a float >= 0, or None to wait forever (also for ``math.inf``).

    A negative, NaN, bool or non-number timeout raises ``ResourceSpecError`` (a ``ValueError``).
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise ResourceSpecError(f"timeout must be None or a number of seconds >= 0, got {_shown(timeout)}")
    try:
        value = float(timeout)
    except OverflowError:  # an int like 10**400: longer than any wait, or below -1e308
        value = math.inf if timeout > 0 else -math.inf
    if not value >= 0:
        raise ResourceSpecError(f"timeout must be None or a number of seconds >= 0, got {_shown(timeout)}")
    return None if value == math.inf else value


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
    if re.fullmatch(r"[0-9.]+(e[0-9]+)?\s*[A-Za-z]{1,3}", text):
        from dask.utils import parse_bytes  # dask.utils is light; imported only for byte units

        try:
            return float(parse_bytes(text))
        except ValueError:
            pass
    raise ResourceSpecError(f"amount of {name!r} must be a number > 0 such as 2, 0.5, 100e9 or 70GB, got {text!r}")


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
