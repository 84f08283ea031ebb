"""Rate limits across real processes: six processes hammering one rate, holders and waiters SIGKILLed at random,
tasks of the local engine (threads and child processes), the CLI and the ``%nbflow limit`` magic."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from limits_helpers import assert_nothing_held, wait_for

import nbflow
from nbflow.machine_limits import limits

# A process that takes the limit in a loop and appends the monotonic time of each admission to its own file
# (one line per admission, written at once, so a SIGKILLed process leaves every admission it had).
TAKER = textwrap.dedent("""\
    import os, sys, time
    from nbflow.machine_limits import acquire
    name, out, start, end, hold = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, b"ready\\n")
    time.sleep(max(0.0, start - time.monotonic()))
    while time.monotonic() < end:
        with acquire(name):
            os.write(fd, b"%r\\n" % time.monotonic())
            if hold:
                time.sleep(hold)
""")


def start_taker(tmp_path, i: int, name: str, start: float, end: float, hold: float = 0.0) -> subprocess.Popen:
    script = tmp_path / "taker.py"
    if not script.exists():
        script.write_text(TAKER)
    out = tmp_path / f"taker-{i}.txt"
    return subprocess.Popen([sys.executable, str(script), name, str(out), repr(start), repr(end), repr(hold)])


def admissions(tmp_path) -> list[float]:
    times = []
    for path in tmp_path.glob("taker-*.txt"):
        times += [float(line) for line in path.read_text().split() if line != "ready"]
    return sorted(times)


def ready(tmp_path, n: int) -> bool:
    return sum(p.read_text().startswith("ready") for p in tmp_path.glob("taker-*.txt")) >= n


WINDOW = 0.95  # seconds: an admission is logged when its taker wakes, up to ``1 - WINDOW`` s after its due time on a
# loaded machine, so a window that short holds no more logged admissions than a 1-s window holds due times


def busiest_window(times: list[float], width: float = WINDOW) -> int:
    """The most admissions in any half-open window ``[t, t + width)`` that starts at an admission."""
    j, best = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + width:
            j += 1
        best = max(best, j - i)
    return best


def test_six_processes_hammering_50_per_second_for_10_s_admit_500(tmp_path):
    nbflow.limit("api", rate="50/s")
    start = time.monotonic() + 6.0  # every process is started and imported by then, even on a loaded box
    end = start + 10.0
    procs = [start_taker(tmp_path, i, "api", start, end) for i in range(6)]
    wait_for(lambda: ready(tmp_path, 6), timeout=60, what="six takers started")
    for p in procs:
        assert p.wait(timeout=60) == 0
    times = [t for t in admissions(tmp_path) if start <= t < end]
    assert 490 <= len(times) <= 510, len(times)
    assert busiest_window(times) <= 50 + 1
    assert all(t >= start for t in admissions(tmp_path))


def test_sigkilled_holders_and_waiters_never_over_admit(tmp_path):
    nbflow.limit("api", 2, rate="20/s", burst=2)
    rng = random.Random(7)
    start = time.monotonic() + 3.0
    end = start + 5.0
    procs = [start_taker(tmp_path, i, "api", start, end + 60, hold=0.03) for i in range(5)]
    count = len(procs)
    wait_for(lambda: ready(tmp_path, 5), timeout=60, what="five takers started")
    time.sleep(max(0.0, start - time.monotonic()))
    killed = 0
    while time.monotonic() < end:  # the timing is the test: kill whoever is holding or waiting at that moment
        time.sleep(rng.uniform(0.05, 0.3))
        victim = procs.pop(rng.randrange(len(procs)))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        killed += 1
        procs.append(start_taker(tmp_path, count, "api", start, end + 60, hold=0.03))
        count += 1
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    times = admissions(tmp_path)
    assert killed >= 10
    assert busiest_window(times) <= 20 + 2
    assert len(times) >= 20  # it kept admitting while its takers were killed
    wait_for(lambda: status_of("api").used == 0, timeout=30, what="the killed holders' slots freed")
    assert_nothing_held(os.environ["NBFLOW_LIMITS_DIR"])


def status_of(name: str):
    (found,) = [s for s in limits() if s.name == name]
    return found


@pytest.mark.parametrize("processes", [False, True])
@pytest.mark.parametrize("capacity", [3, None], ids=["capacity", "rate-only"])
def test_tasks_of_the_local_engine_obey_the_rate(processes, capacity):
    nbflow.use("local", workers=4, processes=processes)
    nbflow.limit("api", capacity, rate="10/s", burst=2)

    @nbflow.task
    def warm(i):
        time.sleep(0.5)  # four at once: each worker has started its child process before the rate is measured

    @nbflow.task(limits={"api": 1})
    def call(i):
        return time.monotonic()

    nbflow.gather([warm.submit(i) for i in range(4)], timeout=120)
    times = sorted(nbflow.gather([call.submit(i) for i in range(15)], timeout=120))
    assert busiest_window(times) <= 10 + 2
    assert times[-1] - times[0] >= (15 - 2) / 10 - 0.05  # 15 starts: 2 at once, then one every 0.1 s
    assert status_of("api").used == 0


CLI = [sys.executable, "-m", "nbflow"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_cli_sets_shows_and_removes_rates():
    done = cli("limits", "set", "api", "--rate", "10/s")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = cli("limit", "gpu", "2", "--rate", "60/min", "--burst", "3")
    assert (done.returncode, done.stderr) == (0, "")
    assert {(s.name, s.capacity, s.rate, s.burst) for s in limits()} == {
        ("api", None, "10/s", 1),
        ("gpu", 2, "60/min", 3),
    }
    listing = [line.split() for line in cli("limits", "ls").stdout.splitlines()]
    assert listing == [["NAME", "CAPACITY", "RATE", "BURST", "NEXT", "START"], ["api", "-", "10/s", "1", "now"],
                       ["gpu", "2", "60/min", "3", "now"]]  # fmt: skip
    nbflow.machine_limits.acquire("gpu").release()
    status = cli("status").stdout.splitlines()
    assert status[0].split()[:5] == ["LIMIT", "USED", "CAPACITY", "RATE", "NEXT"]
    assert status[2].split()[:4] == ["gpu", "0", "2", "60/min"]
    assert cli("limits", "rm", "api").returncode == 0
    assert [s.name for s in limits()] == ["gpu"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["limit", "api", "--rate", "fast"], "rate must be a string such as '10/s'"),
        (["limits", "set", "api", "--rate", "0/s"], "to 1,000,000,000 a second, got '0/s'"),
        (["limit", "api", "--rate", "10/s", "--burst", "0"], "burst must be a whole number"),
        (["limit", "api", "--rate", "10/s", "--burst", "1.5"], "invalid int value: '1.5'"),
        (["limit", "api"], "needs a capacity, --rate or both"),
        (["limits", "set", "api"], "needs a capacity, --rate or both"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    done = cli(*args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert limits() == []


def test_magic_sets_and_shows_a_rate(ip, capsys):
    from IPython.core.error import UsageError

    ip.run_line_magic("nbflow", "limit api --rate 10/s --burst 2")
    ip.run_line_magic("nbflow", "limit gpu 2 --rate 5/s")
    assert {(s.name, s.capacity, s.rate, s.burst) for s in limits()} == {("api", None, "10/s", 2), ("gpu", 2, "5/s", 1)}
    capsys.readouterr()
    ip.run_line_magic("nbflow", "limits")
    shown = capsys.readouterr().out.splitlines()
    assert shown == [
        "api: 0/- used, rate 10/s (burst 2), next start now, 0 waiting",
        "gpu: 0/2 used, rate 5/s, next start now, 0 waiting",
    ]
    for bad, message in [
        ("limit api --rate fast", "rate must be a string"),
        ("limit api --rate 1/s --burst 0", "burst must be a whole number"),
        ("limit api --rate 1/s --burst x", "invalid int value"),
        ("limit api", "give a CAPACITY, --rate or both"),
    ]:
        with pytest.raises(UsageError, match=message) as info:
            ip.run_line_magic("nbflow", bad)
        assert "\n" not in str(info.value)


def test_a_task_cancelled_while_its_grant_line_waits_for_a_token_takes_nothing():
    nbflow.use("local", workers=2)
    nbflow.limit("api", 1, rate="1/min")

    @nbflow.task(limits={"api": 1})
    def call(i):
        return i

    assert call.submit(0).result(timeout=60) == 0
    before = status_of("api").next_start  # about a minute
    late = call.submit(1)  # its token is due in a minute: the grant line sleeps for it, holding the slot
    wait_for(lambda: status_of("api").used == 1, timeout=30, what="the line to hold the slot while it waits")
    assert late.cancel()
    wait_for(lambda: status_of("api").used == 0, timeout=5, what="the slot released within a give-up poll")
    assert status_of("api").next_start <= before  # its token was given back (else the next start is 2 min away)
    t0 = time.monotonic()
    nbflow.use("local")  # closing the engine does not wait for the minute
    assert time.monotonic() - t0 < 10


def test_dask_tasks_obey_a_machine_rate_and_a_stopped_one_gives_up_its_token_wait():
    nbflow.use("dask", n_workers=1, threads_per_worker=4, processes=False)
    nbflow.limit("api", rate="5/s")

    @nbflow.task(limits={"api": 1})
    def call(i):
        return time.monotonic()

    times = sorted(nbflow.gather([call.submit(i) for i in range(8)], timeout=120))
    assert busiest_window(times) <= 5 + 1
    assert times[-1] - times[0] >= (8 - 1) / 5 - 0.05
    nbflow.limit("api", rate="1/min")  # the next start is a minute away: a task now waits for its token
    late = call.submit(99)
    wait_for(lambda: status_of("api").next_start > 90, timeout=60, what="the task to reserve its token, 2 min away")
    t0 = time.monotonic()
    late.stop()
    wait_for(lambda: late.done(), timeout=30, what="the stopped task to end")
    assert time.monotonic() - t0 < 0.5 + 10  # noticed within a give-up poll, not after the minutes
    wait_for(lambda: status_of("api").next_start <= 60, timeout=30, what="its token given back (a give-up poll)")


def test_a_task_stopped_while_its_grant_sleeps_for_a_token_frees_its_slot_at_once(monkeypatch):
    """Its grant holds the slot while it sleeps for the token; a stop wakes it at once (not at the end of its turn,
    made 30 s long here), so the slot is free right after the wait for the stopped task."""
    monkeypatch.setattr("nbflow.machine_limits.wake.GIVE_UP_POLL", 30.0)
    nbflow.use("local", workers=2)
    nbflow.limit("st", 1, rate="1/min")

    @nbflow.task(limits={"st": 1})
    def f(i):
        return i

    assert f.submit(0).result(timeout=60) == 0  # spends the token: the next start is a minute away
    sleeper = f.submit(1)
    wait_for(lambda: status_of("st").used == 1, timeout=60, what="the grant to hold the slot, sleeping for a token")
    t0 = time.monotonic()
    assert sleeper.stop()
    nbflow.wait([sleeper], timeout=60)
    wait_for(lambda: status_of("st").used == 0, timeout=20, what="the slot freed")
    assert time.monotonic() - t0 < 25  # not the 30 s turn
    assert sleeper.status == "cancelled"
