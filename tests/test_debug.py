"""``nbflow.debug`` and ``Future.replay`` in a plain Python process (no kernel), on local threads, local child
processes and a Dask LocalCluster: pdb opens where the task's code raised, with its locals (real ones on threads,
restored from a snapshot elsewhere, placeholders for what cannot travel), and a replay runs the failed attempt
again here with its inputs."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import types

import pytest
from limits_helpers import wait_for

import nbflow
from nbflow.debugging import worker_snapshot
from nbflow.debugging.worker_snapshot import Unavailable

WAIT = 120.0
THIS = os.path.basename(__file__)
NBFLOW_DIR = os.path.dirname(os.path.abspath(nbflow.__file__)) + os.sep
ENGINES = ["threads", "processes", "dask"]


# --- the tasks (module level: child processes and Dask workers import them from this file) ------------------------


def helper(x):
    y = 21 * 2  # noqa: F841 (a local to look at in the debugger)
    return x / 0


def job(x):
    outer_local = "outer"  # noqa: F841 (a local to look at in the debugger)
    return helper(x)


def holds_resources(path):
    lock = threading.Lock()
    gen = (i for i in range(3))
    handle = open(path)
    raise ValueError(f"holding {lock!r} {gen!r} {handle.name}")


def fail_on_load():
    raise RuntimeError("this value cannot be rebuilt here")


class RefusesToLoad:
    """Pickles fine where it is made; unpickling it raises."""

    def __reduce__(self):
        return (fail_on_load, ())


def with_unloadable_locals():
    module = types.ModuleType("nbflow_test_child_only")  # exists only in the process that ran the task
    exec("class Thing:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    thing = module.Thing()
    refuses = RefusesToLoad()
    kept = 5  # noqa: F841 (a local to look at in the debugger)
    raise ValueError(f"unloadable locals {thing!r} {refuses!r}")


def outer_frame(size):
    outer_blob = b"o" * size
    outer_small = 1
    return inner_frame(size) + len(outer_blob) + outer_small


def inner_frame(size):
    inner_blob = b"i" * size
    raise ValueError(f"over the bound ({len(inner_blob)} bytes)")


def over_the_bound(bound, size):
    """In a child: lower the child's own snapshot bound, then fail with two big locals, one per frame."""
    from nbflow.debugging import worker_snapshot as in_child

    in_child.LOCALS_BOUND = bound
    return outer_frame(size)


def big_local():
    blob = b"b" * 1_000_000
    small = 7  # noqa: F841 (a local to look at in the debugger)
    raise ValueError(f"big local of {len(blob)} bytes")


def upstream_fails():
    up_local = "from upstream"
    raise KeyError(f"upstream broke ({up_local})")


def passes_on(value):
    return value


def flaky():
    attempt_seen = nbflow.current().attempt
    raise ValueError(f"attempt {attempt_seen} failed")


def needs_file(path):
    with open(path) as f:
        return f.read()


def produce():
    return 41


def consume(value, path):
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return value + 1


def limited(path):
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    held = {status.name: (status.used, [h.pid for h in status.holders]) for status in nbflow.limits()}
    return dict(nbflow.current().resources), held["x"], os.getpid()


def succeeds(x):
    return x + 1


def odd_text():
    raw = b"\xff\xfe"  # noqa: F841 (a local to look at in the debugger)
    lone = "\udcff"  # noqa: F841 (a local to look at in the debugger)
    raise ValueError("bad byte \udcff in \xff text")


def recurse(n):
    depth_here = n  # noqa: F841 (a local to look at in the debugger)
    return recurse(n + 1)


def sleeper():
    """Outlives its timeout (a thread cannot be stopped), then ends: no test leaves a thread behind."""
    end = time.monotonic() + 3
    while time.monotonic() < end:
        time.sleep(0.01)


def dies():
    os._exit(3)


# --- helpers ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """One worker process with two threads, shared by this module's Dask tests (each test connects anew)."""
    import distributed  # (here, not at the top: a child process importing this module stays without Dask)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("NBFLOW_LIMITS_DIR", str(tmp_path_factory.mktemp("dask-limits")))
        cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            host="127.0.0.1",
            protocol="tcp://",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0", "dashboard": False},
        )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    kind = request.param
    if kind == "threads":
        nbflow.use("local", workers=2)
    elif kind == "processes":
        nbflow.use("local", workers=2, processes=True)
    else:
        nbflow.use("dask", address=request.getfixturevalue("dask_cluster").scheduler_address)
    return kind


def failed(fn, *args, **options) -> nbflow.Future:
    """Submit ``fn`` as a task and wait until it has failed."""
    fut = nbflow.task(fn, **options).submit(*args)
    nbflow.wait([fut], timeout=WAIT)
    assert fut.done() and fut.exception() is not None, fut.status
    return fut


def debug(fut: nbflow.Future, capsys, *commands: str) -> str:
    """What ``nbflow.debug(fut, commands)`` prints."""
    capsys.readouterr()
    nbflow.debug(fut, commands=list(commands))
    return capsys.readouterr().out


def answers(out: str) -> dict[str, str]:
    """Each echoed pdb command with the text it answered."""
    result = {}
    for part in out.split("(Pdb) ")[1:]:
        command, _, answer = part.partition("\n")
        result[command] = answer.rstrip("\n")
    return result


def stack_entries(where: str) -> list[str]:
    """The frames ``where`` lists: their ``file(line)function()`` lines."""
    return [line.lstrip("> ").strip() for line in where.splitlines() if not line.startswith("->")]


# --- pdb where the task raised --------------------------------------------------------------------------------------


def test_pdb_opens_in_the_raising_frame_with_its_locals_stack_and_source(engine, capsys):
    fut = failed(job, 1)
    out = debug(fut, capsys, "p y", "p x", "where", "up", "p outer_local", "ll", "list")
    first = out.split("(Pdb) ")[0]
    assert "post-mortem of task 'job'" in first and "ZeroDivisionError: division by zero" in first
    assert re.search(rf"> .*{THIS}\(\d+\)helper\(\)\n-> return x / 0", first)
    got = answers(out)
    assert got["p y"] == "42" and got["p x"] == "1"
    frames = stack_entries(got["where"])
    assert len(frames) == 2, got["where"]  # the task's own frames only: nbflow's are left out
    assert re.fullmatch(rf".*{THIS}\(\d+\)job\(\)", frames[0])
    assert re.fullmatch(rf".*{THIS}\(\d+\)helper\(\)", frames[1])
    assert "-> return helper(x)" in got["where"] and "-> return x / 0" in got["where"]
    assert NBFLOW_DIR not in out
    assert re.search(rf"{THIS}\(\d+\)job\(\)\n-> return helper\(x\)", got["up"])
    assert got["p outer_local"] == "'outer'"
    assert "def job(x):" in got["ll"] and 'outer_local = "outer"' in got["ll"]
    assert re.search(r"->\s+return helper\(x\)", got["ll"])
    assert re.search(r"->\s+return helper\(x\)", got["list"]) and "def job(x):" in got["list"]


def test_what_cannot_travel_is_a_placeholder_naming_its_type_and_threads_keep_real_objects(engine, capsys, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("data")
    fut = failed(holds_resources, str(path))
    got = answers(debug(fut, capsys, "p lock", "p gen", "p handle", "p handle.name"))
    if engine == "threads":
        assert got["p lock"].startswith("<unlocked _thread.lock object")
        assert got["p gen"].startswith("<generator object")
        assert got["p handle"].startswith("<_io.TextIOWrapper name=") and "not restored" not in got["p handle"]
        assert got["p handle.name"] == repr(str(path))
        debug(fut, capsys, "handle.close()")
    else:
        assert got["p lock"].startswith("<_thread.lock not restored (cannot be pickled")
        assert got["p gen"].startswith("<builtins.generator not restored (cannot be pickled")
        assert got["p handle"].startswith("<_io.TextIOWrapper not restored (cannot be pickled: an open file")
        assert str(path) in got["p handle"]  # its repr, for the user to see which file it was
        assert "AttributeError" in got["p handle.name"]


@pytest.mark.parametrize("engine", ["processes", "dask"], indirect=True)
def test_a_local_that_cannot_be_unpickled_here_is_a_placeholder_and_the_rest_is_restored(engine, capsys):
    fut = failed(with_unloadable_locals)
    got = answers(debug(fut, capsys, "p kept", "p thing", "p refuses", "p module"))
    assert got["p kept"] == "5"
    assert "not restored (cannot be rebuilt here: ModuleNotFoundError" in got["p thing"]
    assert "not restored (cannot be rebuilt here: RuntimeError: this value cannot be rebuilt here" in got["p refuses"]
    assert "not restored" in got["p module"]


# --- the bound on a snapshot's locals -----------------------------------------------------------------------------


def snapshot_of(fn, *args) -> worker_snapshot.Snapshot:
    try:
        fn(*args)
    except Exception as exc:
        return worker_snapshot.take(exc.__traceback__.tb_next)  # (from ``fn`` on: this frame is left out)
    raise AssertionError("it did not raise")


def test_over_the_bound_the_innermost_locals_are_kept_and_outer_ones_become_placeholders(monkeypatch):
    monkeypatch.setattr(worker_snapshot, "LOCALS_BOUND", 6000)
    snapshot = snapshot_of(outer_frame, 4000)
    assert [frame.name for frame in snapshot.frames] == ["outer_frame", "inner_frame"]
    outer, inner = (frame.locals for frame in snapshot.frames)
    import cloudpickle

    assert cloudpickle.loads(inner["inner_blob"]) == b"i" * 4000
    assert cloudpickle.loads(inner["size"]) == 4000
    assert isinstance(outer["outer_blob"], Unavailable) and "over the" in outer["outer_blob"].why
    assert outer["outer_blob"].type_name == "builtins.bytes"
    assert cloudpickle.loads(outer["outer_small"]) == 1  # what still fits after the inner frame is kept
    assert snapshot.locals_size() <= 6000


def test_a_child_over_its_bound_sends_the_innermost_locals_and_placeholders_for_the_rest(capsys):
    nbflow.use("local", workers=1, processes=True)
    fut = failed(over_the_bound, 60_000, 40_000)
    got = answers(debug(fut, capsys, "p len(inner_blob)", "up", "p outer_small", "p outer_blob"))
    assert got["p len(inner_blob)"] == "40000"
    assert got["p outer_small"] == "1"
    assert got["p outer_blob"].startswith("<builtins.bytes not restored (over the")


# --- Dask: big locals stay on the worker until debugged -------------------------------------------------------------


def test_dask_big_locals_are_fetched_from_the_worker_once(dask_cluster, capsys):
    nbflow.use("dask", address=dask_cluster.scheduler_address)
    fut = failed(big_local)
    snapshot = fut._failure.report["frames"]
    (frame,) = snapshot.frames
    assert snapshot.left is not None and isinstance(frame.locals["blob"], Unavailable)  # not sent with the error
    assert not isinstance(frame.locals["small"], Unavailable)  # a small one is
    got = answers(debug(fut, capsys, "p len(blob)", "p small", "p blob[:3]"))
    assert got == {"p len(blob)": "1000000", "p small": "7", "p blob[:3]": "b'bbb'"}
    assert snapshot.left is None

    def no_second_fetch(left):
        raise AssertionError(f"fetched again from {left}")

    fut._failure.report["fetch"] = no_second_fetch
    assert answers(debug(fut, capsys, "p len(blob)"))["p len(blob)"] == "1000000"


def test_dask_big_locals_of_a_worker_that_left_are_placeholders_saying_lost(capsys):
    engine = nbflow.use("dask", n_workers=1, threads_per_worker=2)
    killed = failed(big_local)
    closed = failed(big_local)
    address = killed._failure.report["frames"].left[0]
    pid = engine.client.run(os.getpid)[address]
    os.kill(pid, signal.SIGKILL)  # its nanny starts a new worker, at another address
    wait_for(lambda: address not in engine.client.scheduler_info()["workers"], WAIT, "the killed worker to leave")
    got = answers(debug(killed, capsys, "p blob", "p small", "where"))
    assert got["p blob"].startswith("<builtins.bytes not restored (lost: the worker"), got["p blob"]
    assert got["p small"] == "7"
    assert re.search(rf"{THIS}\(\d+\)big_local\(\)\n-> raise ValueError", got["where"])
    nbflow.use("local")  # the Dask engine closes, its cluster with it
    wait_for(lambda: engine.cluster.status.name == "closed", WAIT, "the cluster to close")
    got = answers(debug(closed, capsys, "p blob", "p small"))
    assert got["p blob"].startswith("<builtins.bytes not restored (lost: the Dask client is closed)"), got["p blob"]
    assert got["p small"] == "7"


# --- what debug refuses, and what it follows ------------------------------------------------------------------------


def test_debug_refuses_futures_that_did_not_fail_in_the_tasks_code(tmp_path):
    nbflow.use("local", workers=1)
    release = threading.Event()
    running = nbflow.task(release.wait, name="running").submit(WAIT)
    queued = nbflow.task(succeeds, name="queued").submit(1)
    with pytest.raises(nbflow.NbflowError, match="task 'running' has not failed: it is"):
        nbflow.debug(running)
    assert queued.cancel()
    with pytest.raises(nbflow.NbflowError, match="task 'queued' did not fail: it was cancelled"):
        nbflow.debug(queued)
    release.set()
    assert running.result(WAIT) is True
    with pytest.raises(nbflow.NbflowError, match="task 'running' did not fail: it finished"):
        nbflow.debug(running)
    with pytest.raises(nbflow.NbflowError, match="did not fail: it finished"):
        running.replay()
    for not_a_future in (None, "running", job):
        with pytest.raises(TypeError, match="expected an nbflow future"):
            nbflow.debug(not_a_future)


def test_a_task_whose_upstream_failed_debugs_the_upstream_failure_and_replays_only_that_one(engine, capsys):
    up = nbflow.task(upstream_fails).submit()
    down = nbflow.task(passes_on).submit(up)
    nbflow.wait([down], timeout=WAIT)
    assert isinstance(down.exception(), nbflow.UpstreamError)
    out = debug(down, capsys, "p up_local")
    assert "post-mortem of task 'upstream_fails'" in out
    assert answers(out)["p up_local"] == "'from upstream'"
    with pytest.raises(nbflow.NbflowError, match="never ran: its upstream task 'upstream_fails' failed; replay that"):
        down.replay()  # (replaying the upstream here would return its value as if it were this task's)
    with pytest.raises(KeyError, match="upstream broke"):
        up.replay()


def test_a_timed_out_task_has_no_frames_of_its_code_to_debug(engine):
    fut = failed(sleeper, timeout=0.5)
    assert isinstance(fut.exception(), nbflow.TaskTimeout)
    with pytest.raises(nbflow.NbflowError, match="raised by nbflow, not by the task's code") as err:
        nbflow.debug(fut)
    assert "\n" not in str(err.value)


def test_a_dead_child_process_has_no_frames_to_debug():
    nbflow.use("local", workers=1, processes=True)
    fut = failed(dies)
    assert isinstance(fut.exception(), nbflow.WorkerDied)
    with pytest.raises(nbflow.NbflowError, match="WorkerDied.*raised by nbflow, not by the task's code") as err:
        nbflow.debug(fut)
    assert "\n" not in str(err.value)
    with pytest.raises(nbflow.NbflowError, match="not replayed in the kernel: its process died") as err:
        fut.replay()  # (it would kill the kernel as it killed its child)
    assert "\n" not in str(err.value)


def test_after_retries_the_last_attempt_is_debugged(engine, capsys):
    fut = failed(flaky, retries=2)
    out = debug(fut, capsys, "p attempt_seen")
    assert "attempt 3: ValueError: attempt 2 failed" in out
    assert answers(out)["p attempt_seen"] == "2"


# --- replay ---------------------------------------------------------------------------------------------------------


def test_replay_raises_the_same_exception(engine):
    fut = failed(job, 1)
    with pytest.raises(ZeroDivisionError) as err:
        fut.replay()
    assert type(err.value) is type(fut.exception()) and str(err.value) == str(fut.exception())
    assert err.traceback[-1].name == "helper"  # it ran here: the frames are this process's


def test_replay_of_a_task_that_now_succeeds_returns_its_value(engine, tmp_path):
    path = tmp_path / "ready.txt"
    fut = failed(needs_file, str(path))
    assert isinstance(fut.exception(), FileNotFoundError)
    path.write_text("ready")
    assert fut.replay() == "ready"
    assert isinstance(fut.exception(), FileNotFoundError)  # the future keeps its outcome


def test_replay_passes_the_values_of_dependencies(engine, tmp_path):
    path = tmp_path / "go"
    up = nbflow.task(produce).submit()
    down = failed(consume, up, str(path))
    assert isinstance(down.exception(), FileNotFoundError)
    path.write_text("")
    assert down.replay() == 42


@pytest.mark.parametrize("engine", ["threads", "processes"], indirect=True)
def test_replay_holds_the_tasks_limits_like_a_direct_call(engine, tmp_path):
    nbflow.limit("x", 1)
    path = tmp_path / "go"
    fut = failed(limited, str(path), limits={"x": 1})
    assert all(status.used == 0 for status in nbflow.limits())
    path.write_text("")
    resources, (used, pids), pid = fut.replay()
    assert resources == {"x": 1.0} and used == 1.0 and pids == [os.getpid()] and pid == os.getpid()
    assert all(status.used == 0 for status in nbflow.limits())  # released after the replay
