"""Durations — timeouts, delays, intervals, expirations — read the same way in the API, the magics and the panel:
seconds as numbers, or Dask's duration strings; never byte sizes, infinities, negatives or absurd values."""

from __future__ import annotations

import math

import pytest
from test_magics_errors import one_line_error

import nbflow
from nbflow.machine_limits import concurrency, limit
from nbflow.magics import args
from nbflow.panel import Monitor

GOOD = [(90, 90.0), (0.5, 0.5), ("90s", 90.0), ("5 minutes", 300.0), ("1.5h", 5400.0), ("250ms", 0.25)]
# a byte size, no unit, not a number, a negative, past the float range, past 10**7 s, no number, nonsense
BAD_TEXT = ["1kB", "5", "soon", "-5s", "1e400s", "200 days", "ms", "5 parsecs"]
BAD_NUMBERS = [math.inf, -math.inf, math.nan, -1, 1e12, 10**400, True]


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(("given", "seconds"), GOOD)
def test_task_durations_take_seconds_and_dask_strings(given, seconds):
    options = nbflow.task(timeout=given, retry_delay=given, cache_expiration=given)(abs).options
    assert options.timeout == options.retry_delay == options.cache_expiration == seconds


@pytest.mark.parametrize("bad", BAD_TEXT + BAD_NUMBERS, ids=lambda bad: repr(bad)[:12])
@pytest.mark.parametrize("option", ["timeout", "retry_delay", "cache_expiration"])
def test_bad_task_durations_are_one_line_naming_the_option(option, bad):
    with pytest.raises(nbflow.ResourceSpecError) as info:
        nbflow.task(**{option: bad})(abs)
    assert one_line(info).startswith(f"{option} must be seconds")


def test_a_limit_timeout_takes_dask_strings_and_refuses_byte_sizes_and_absurd_waits(limits_dir):
    limit("X", 1)
    assert concurrency("X", timeout="2 minutes").timeout == 120.0
    assert concurrency("X", timeout=math.inf).timeout is None  # waits forever, like None
    for bad in ("1kB", 1e12, "200 days", 10**400):  # a huge int is a typo, not "forever" (that is None or inf)
        with pytest.raises(nbflow.ResourceSpecError) as info:
            concurrency("X", timeout=bad)
        assert one_line(info).startswith("timeout must be None or a number of seconds >= 0")


def test_the_panel_interval_takes_dask_strings_and_refuses_byte_sizes():
    panel = Monitor(interval="2s", source=lambda: {"engine": "local", "time": 0.0, "workers": [], "limits": []})
    try:
        assert panel.interval == 2.0
    finally:
        panel.close()
    for bad in ("1kB", 1e12):
        with pytest.raises(nbflow.ResourceSpecError) as info:
            nbflow.monitor(interval=bad)
        assert one_line(info).startswith("monitor interval must be seconds > 0")


@pytest.mark.parametrize(("given", "seconds"), [("30", 30.0), ("0.5", 0.5), ("90s", 90.0), ("5minutes", 300.0)])
def test_magic_durations_take_bare_seconds_and_dask_strings(given, seconds):
    assert args.parse(args.task, f"--timeout {given}").timeout == seconds
    assert args.parse(args.monitor, f"--interval {given}").interval == seconds


def test_bad_magic_durations_are_one_line_usage_errors_in_a_kernel(kernel):
    for bad in ["1kB", "1e12", "inf", "nan", "-1", "0", "200days", "soon"]:
        shown = one_line_error(kernel, f"%%nbflow task --timeout {bad}\nx = 1")
        assert "argument --timeout: must be seconds > 0 and at most 1e+07, or a duration such as" in shown, shown
        assert f"got {bad!r}" in shown, shown
        shown = one_line_error(kernel, f"%nbflow monitor --interval {bad}")
        assert "argument --interval: must be seconds > 0" in shown, shown
    assert kernel.run("print(repr(x))").reply["status"] == "error"  # nothing was bound
    ok = kernel.run("%%nbflow task --timeout 5minutes --block\nx = 1")
    assert ok.reply["status"] == "ok", ok.messages
