"""Bad input to limits: one clear error of the class the README names, and nothing left held."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import threading
from fractions import Fraction

import numpy as np
import pytest
from limits_helpers import assert_nothing_held, wait_for

from nbflow.errors import LimitsDirError, NoSuchLimit, ResourceSpecError, Unsatisfiable
from nbflow.machine_limits import acquire, acquire_all, acquire_async, concurrency, limit, limits, remove_limit
from nbflow.specs import parse_resources

BAD_NAMES = ["a/b", "..", ".", "../escape", "a\0b", "x" * 129, "", "sp ace", 3, None]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_malformed_names(tmp_path, limits_dir, name):
    calls = [
        lambda: limit(name, 1),
        lambda: acquire(name),
        lambda: concurrency(name),
        lambda: acquire_all({name: 1}),
        lambda: remove_limit(name),
    ]
    for call in calls:
        with pytest.raises(ResourceSpecError, match="invalid limit/resource name") as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "escape").exists()
    assert not limits_dir.exists() or os.listdir(limits_dir) in ([], [".flock-probe"])


def test_name_of_128_characters_is_fine(limits_dir):
    name = "n" * 128
    limit(name, 1)
    with acquire(name):
        assert limits()[0].used == 1


@pytest.mark.parametrize("amount", [0, -1, float("nan"), float("inf"), True, "1", None], ids=repr)
def test_bad_amounts(limits_dir, amount):
    limit("X", 2)
    with pytest.raises(ResourceSpecError, match="amount of 'X' must be"):
        acquire("X", amount)
    with pytest.raises(ResourceSpecError):
        concurrency("X", occupy=amount)
    with pytest.raises(ResourceSpecError):
        acquire_all({"X": amount})
    with pytest.raises(ResourceSpecError):
        limit("Y", amount)
    assert [s.name for s in limits()] == ["X"] and limits()[0].used == 0
    assert_nothing_held(str(limits_dir))


@pytest.mark.parametrize("amount", [10**400, -(10**400), np.bool_(True), 1e400], ids=repr)
def test_huge_or_odd_amounts_are_resource_spec_errors(limits_dir, amount):
    for call in (
        lambda: limit("GPU", amount),
        lambda: acquire("CPU", amount),
        lambda: concurrency("CPU", occupy=amount),
        lambda: parse_resources({"GPU": amount}),
    ):
        with pytest.raises(ResourceSpecError, match="amount of '(GPU|CPU)' must be a") as info:
            call()
        assert "\n" not in str(info.value) and len(str(info.value)) < 200
    assert limits() == [] or all(s.used == 0 for s in limits())


def test_numpy_and_other_real_numbers_are_accepted(limits_dir):
    limit("GPU", np.int64(2))
    limit("MEM", np.float32(0.5))
    assert {(s.name, s.capacity) for s in limits()} == {("GPU", 2.0), ("MEM", 0.5)}
    assert type(limits()[0].capacity) is float
    with acquire("GPU", np.int64(1), timeout=np.float64(5)) as one, acquire("GPU", Fraction(1, 1)) as two:
        assert (one.slots, two.slots) == ((0,), (1,)) and type(one.amount) is float
    with concurrency("MEM", occupy=np.float32(0.25)):
        [quarter] = acquire_all({"MEM": np.float16(0.25)}, timeout=5)
        assert [s.used for s in limits() if s.name == "MEM"] == [0.5]
        quarter.release()
    assert parse_resources({"GPU": np.uint8(1)}) == {"GPU": 1.0}
    assert_nothing_held(str(limits_dir))


@pytest.mark.parametrize("timeout", [-1, -0.5, "1", float("nan"), True, np.float64("nan"), -(10**400)], ids=repr)
def test_bad_timeout(limits_dir, timeout):
    limit("X", 1)
    for call in (
        lambda: acquire("X", timeout=timeout),
        lambda: concurrency("X", timeout=timeout),  # refused when made, not at the first `with`
        lambda: acquire_all({"X": 1}, timeout=timeout),
        lambda: asyncio.run(acquire_async("X", timeout=timeout)),
    ):
        with pytest.raises(ResourceSpecError, match="timeout must be None or a number of seconds >= 0") as info:
            call()
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert_nothing_held(str(limits_dir))


@pytest.mark.parametrize("timeout", [math.inf, None], ids=["inf", "None"])
def test_infinite_timeout_waits_without_a_bound(limits_dir, timeout):
    limit("X", 1)
    hog = acquire("X")
    granted = threading.Event()
    waiter = threading.Thread(target=lambda: (acquire("X", timeout=timeout).release(), granted.set()))
    waiter.start()
    wait_for(lambda: next(s for s in limits() if s.name == "X").waiting == 1, what="the waiter to queue")
    hog.release()
    waiter.join(timeout=30)
    assert granted.is_set()
    assert_nothing_held(str(limits_dir))


def test_directory_in_place_of_the_capacity_file(limits_dir):
    limit("C", 2)
    path = limits_dir / "C" / "capacity"
    path.unlink()
    path.mkdir()
    with pytest.raises(LimitsDirError, match=f"corrupted limits state file {path} .*or delete it"):
        acquire("C")
    assert_nothing_held(str(limits_dir))


def test_occupy_above_capacity_is_unsatisfiable_at_once(limits_dir):
    limit("GPU", 2)
    with pytest.raises(Unsatisfiable, match=r"limit 'GPU' has capacity 2, so 3 can never be granted"):
        acquire("GPU", 3)
    with pytest.raises(Unsatisfiable):
        with concurrency("GPU", occupy=2.5):
            raise AssertionError("granted")
    with pytest.raises(Unsatisfiable):
        acquire_all({"GPU": 1, "CPU": 10_000})
    assert limits()[0].used == 0
    assert_nothing_held(str(limits_dir))


@pytest.mark.parametrize("content", ["garbage", "", "-2", "nan", "inf", "0"])
def test_corrupted_capacity_file(limits_dir, content):
    limit("C", 2)
    path = limits_dir / "C" / "capacity"
    path.write_text(content)
    for call in (lambda: acquire("C"), limits):
        with pytest.raises(LimitsDirError, match=f"corrupted limits state file {path} .*nbflow limits set C N"):
            call()
    assert_nothing_held(str(limits_dir))
    limit("C", 1)  # the fix the message names
    with acquire("C", timeout=5):
        assert limits()[0].capacity == 1


def make_unwritable(path) -> None:
    """Root writes anywhere, except into an immutable directory (``chattr +i``); others: chmod 0500."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o500)


def test_unwritable_dir(tmp_path, monkeypatch):
    path = tmp_path / "frozen"
    path.mkdir()
    make_unwritable(path)
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(path))
    try:
        for call in (lambda: limit("X", 1), lambda: acquire("CPU"), limits):
            with pytest.raises(LimitsDirError, match=f"limits directory {path} is not writable.*NBFLOW_LIMITS_DIR"):
                call()
        assert os.listdir(path) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_file_in_place_of_the_dir(tmp_path, monkeypatch):
    path = tmp_path / "afile"
    path.write_text("not a directory")
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(path / "limits"))
    with pytest.raises(LimitsDirError, match="cannot be created or used"):
        acquire("CPU")
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(path))
    with pytest.raises(LimitsDirError, match="cannot be created or used"):
        limit("X", 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_foreign_owned_world_writable_dir(tmp_path, monkeypatch):
    path = tmp_path / "shared"
    path.mkdir()
    os.chown(path, 65534, 65534)
    path.chmod(0o777)
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(path))
    with pytest.raises(LimitsDirError, match=f"limits directory {path} is owned by uid 65534 and writable by others"):
        acquire("CPU")
    assert os.listdir(path) == []
    path.chmod(0o755)  # foreign-owned but not writable by others: accepted
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(path) + "/")  # a new path string: checked again
    with acquire("CPU", timeout=5):
        pass


def test_limits_dir_is_read_at_each_use(tmp_path, monkeypatch):
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(tmp_path / "one"))
    limit("X", 1)
    monkeypatch.setenv("NBFLOW_LIMITS_DIR", str(tmp_path / "two"))
    assert limits() == []
    with pytest.raises(NoSuchLimit):
        acquire("X")
    monkeypatch.delenv("NBFLOW_LIMITS_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    limit("X", 1)
    default = tmp_path / "state" / "nbflow" / "limits"
    assert (default / "X" / "capacity").exists()
    assert oct(default.stat().st_mode & 0o777) == oct(0o700)
