"""The Dask key of each attempt of a task, written by the client and read back on the worker."""

from __future__ import annotations


def attempt_key(key: str, attempt: int) -> str:
    """The Dask key of an attempt: the task's key, then ``<key>-retry<N>`` for the retries."""
    return key if attempt == 0 else f"{key}-retry{attempt}"


def task_key(dask_key: str) -> tuple[str, int]:
    """The task's key and the attempt number, from an attempt's Dask key (``attempt_key`` reversed)."""
    key, sep, number = dask_key.rpartition("-retry")
    return (key, int(number)) if sep and number.isdigit() else (dask_key, 0)
