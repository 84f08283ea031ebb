"""The slot-file name codec and the one way a holder is written."""

from __future__ import annotations

import os

from nbflow.machine_limits import Holder
from nbflow.machine_limits.slotfiles import parse_slot_name, slot_name, used_of
from nbflow.render import format_holder, holder_fields


def test_a_slot_name_reads_back_what_was_written():
    assert parse_slot_name(slot_name(0.5, (1, 3))) == (0.5, (1, 3), os.getpid())
    assert parse_slot_name(slot_name(2.0, ())) == (2.0, (), os.getpid())


def test_names_no_nbflow_process_wrote_count_for_nothing():
    assert parse_slot_name("notes.txt") == (0.0, (), 0)
    assert parse_slot_name("x_0_12_y") == (0.0, (0,), 12)
    assert used_of(["notes.txt", "1.5_0_7_a", "0.5__8_b"]) == 2.0


def test_a_holder_reads_the_same_in_views_and_in_messages():
    holder = Holder(pid=42, host="box", task="", amount=70e9, since=100.0, slots=(0, 1))
    assert format_holder(holder, "MEMORY", 175.0) == "pid 42@box task - holds 70 GB (slot 0,1) for 1 min 15 s"
    assert format_holder(holder, "MEMORY", exact=True) == "pid 42@box task '-' holds 7e+10 (slot 0,1)"
    assert holder_fields(holder, "MEMORY", exact=True) == ("42@box", "-", "7e+10")
    shown = {"pid": 42, "host": "box", "amount": 70e9, "since": 100.0}  # a hand-made snapshot's holder
    assert Holder.from_dict(shown) == Holder(42, "box", "", 70e9, 100.0)
