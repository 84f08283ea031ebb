"""The ``nbflow`` command and ``python -m nbflow``, run as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from limits_helpers import assert_nothing_held

from nbflow.machine_limits import acquire, limits

SCRIPT = os.path.join(os.path.dirname(sys.executable), "nbflow")
COMMANDS = {"module": [sys.executable, "-m", "nbflow"], "script": [SCRIPT]}


def run(how: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMANDS[how], *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("how", COMMANDS)
def test_set_ls_rm(limits_dir, how):
    assert run(how, "limits", "ls").stdout.startswith("no limits on this machine yet")
    for name, cap in [("GPU", "2"), ("gpu:host-1", "0.5"), ("MEM", "70GB")]:
        done = run(how, "limits", "set", name, cap)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert {(s.name, s.capacity) for s in limits()} == {("GPU", 2), ("gpu:host-1", 0.5), ("MEM", 70e9)}
    listing = run(how, "limits", "ls").stdout.splitlines()
    assert listing[0].split() == ["NAME", "CAPACITY", "RATE", "BURST", "NEXT", "START"]
    no_rate = ["-", "-", "-"]
    assert [line.split() for line in listing[1:]] == [
        ["GPU", "2", *no_rate],
        ["MEM", "7e+10", *no_rate],
        ["gpu:host-1", "0.5", *no_rate],
    ]
    assert run(how, "limits", "rm", "MEM").returncode == 0
    assert [s.name for s in limits()] == ["GPU", "gpu:host-1"]


@pytest.mark.parametrize("how", COMMANDS)
def test_status_shows_holders_and_waiters(limits_dir, how):
    assert run(how, "limits", "set", "GPU", "2").returncode == 0
    with acquire("GPU", 1, task="infer"):
        out = run(how, "status").stdout.splitlines()
    head = ["LIMIT", "USED", "CAPACITY", "RATE", "NEXT", "START", "WAITING", "HOLDER", "TASK", "AMOUNT", "SINCE"]
    assert out[0].split() == head
    row = out[1].split()
    assert row[:9] == ["GPU", "1", "2", "-", "-", "0", f"{os.getpid()}@{os.uname().nodename}", "infer", "1"]
    idle = run(how, "status").stdout.splitlines()[1].split()
    assert idle == ["GPU", "0", "2", "-", "-", "0", "-"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["limits", "set", "a/b", "2"], "invalid limit/resource name 'a/b'"),
        (["limits", "set", "..", "2"], "invalid limit/resource name '..'"),
        (["limits", "set", "x" * 129, "2"], "invalid limit/resource name"),
        (["limits", "set", "GPU", "-1"], "amount of 'GPU' must be a finite number > 0"),
        (["limits", "set", "GPU", "0"], "amount of 'GPU' must be a finite number > 0"),
        (["limits", "set", "GPU", "abc"], "amount of 'GPU' must be a number > 0 such as 2"),
        (["limits", "set", "GPU"], "limit 'GPU' needs a capacity, --rate or both"),
        (["limits", "rm", "nope"], "no capacity or rate is set for limit 'nope'"),
        (["limits", "frob"], "invalid choice: 'frob'"),
        (["frob"], "invalid choice: 'frob' (choose from 'limits', 'limit', 'status', 'cache')"),
        ([], "the following arguments are required"),
    ],
)
def test_errors_are_one_line_and_exit_2(limits_dir, args, message):
    done = run("module", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("nbflow: error: ")
    assert message in done.stderr
    assert limits() == []
    assert_nothing_held(str(limits_dir))


def test_corrupted_state_and_bad_dir(limits_dir, tmp_path):
    assert run("script", "limits", "set", "C", "1").returncode == 0
    (limits_dir / "C" / "capacity").write_text("garbage")
    done = run("script", "status")
    assert done.returncode == 2 and "corrupted limits state file" in done.stderr and done.stderr.count("\n") == 1
    afile = tmp_path / "afile"
    afile.write_text("")
    env = {**os.environ, "NBFLOW_LIMITS_DIR": str(afile)}
    done = subprocess.run([SCRIPT, "limits", "ls"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and f"limits directory {afile} cannot be created" in done.stderr
