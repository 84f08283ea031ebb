"""The deadline thread behind timeouts and retry delays survives what a task or a caller throws at it."""

from __future__ import annotations

import threading

from nbflow.engines.timers import Timers


def test_a_failing_callback_or_a_huge_delay_does_not_stop_later_deadlines(capsys):
    timers = Timers("test")
    fired = threading.Event()

    def broken():
        raise OverflowError("a callback that fails")

    timers.call_later(1e9, lambda: None)  # longer than a thread wait can take in one piece
    timers.call_later(0, broken)
    timers.call_later(0.01, fired.set)
    assert fired.wait(30)
    assert "OverflowError: a callback that fails" in capsys.readouterr().err


def test_the_thread_ends_when_no_deadline_is_armed():
    timers = Timers("test-idle")
    fired = threading.Event()
    entry = timers.call_later(3600, fired.set)
    timers.call_later(0, fired.set)
    assert fired.wait(30)
    (thread,) = [t for t in threading.enumerate() if t.name == "test-idle-timers"]
    timers.cancel(entry)
    thread.join(30)
    assert not thread.is_alive()
