"""The local engine's process pool: notebook functions travel by value, GPU slots become CUDA_VISIBLE_DEVICES,
a timed-out or crashed child is replaced and its share freed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from limits_helpers import gpu_used, wait_for
from magics_nb.kernel import cell_text, run_notebook

import nbflow
from nbflow import WorkerDied


def child_pid(fut: nbflow.Future) -> int:
    return int(fut.worker.rsplit("pid ", 1)[1])


NOTEBOOK = [
    "import os, nbflow\nnbflow.use('local', workers=2, processes=True)",
    textwrap.dedent("""\
        offset = 100
        def make_adder(k):
            return lambda v: v + k
        add3 = make_adder(3)

        @nbflow.task
        def work(x, fn):
            return fn(x) + offset, os.getpid()
    """),
    "res = nbflow.gather(work.map([1, 2], [add3, lambda v: v * 10]), timeout=60)\n"
    "print([value for value, _ in res], any(pid == os.getpid() for _, pid in res))",
]


def test_functions_and_closures_defined_in_a_real_kernel_run_in_child_processes():
    nb = run_notebook(NOTEBOOK)
    assert cell_text(nb.cells[-1]) == "[104, 120] False\n"


SCRIPT = """
import os, nbflow
nbflow.use("local", workers=1, processes=True)
scale = 3
def make(k):
    @nbflow.task(name="scaled")
    def scaled(x):
        return (x * k * scale, os.getpid())
    return scaled
value, pid = make(2).submit(7).result(60)
print(value, pid != os.getpid())
"""


def test_a_task_defined_in_a_python_c_script_runs_in_a_child_process():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "42 True\n"


def rendezvous(i, folder, count):
    """Run in a child: announce this task, wait until ``count`` tasks are in at once, report the devices."""
    with open(os.path.join(folder, str(i)), "w"):
        pass
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), len(os.listdir(folder))


def test_concurrent_gpu_tasks_see_their_own_slots_as_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nbflow.use("local", workers=3, processes=True)
    nbflow.limit("GPU", 2)
    one = nbflow.task(resources={"GPU": 1})(rendezvous)
    both = nbflow.task(resources={"GPU": 2})(rendezvous)
    plain = nbflow.task(rendezvous)

    (tmp_path / "pair").mkdir()
    pair = [one.submit(i, str(tmp_path / "pair"), 2) for i in range(2)]
    seen = nbflow.gather(pair, timeout=90)
    assert [count for _, count in seen] == [2, 2]  # both ran at once
    assert sorted(devices for devices, _ in seen) == ["0", "1"]

    (tmp_path / "solo").mkdir()
    assert both.submit(0, str(tmp_path / "solo"), 1).result(60) == ("0,1", 1)
    (tmp_path / "free").mkdir()
    assert plain.submit(0, str(tmp_path / "free"), 1).result(60) == (None, 1)  # no slot, no variable
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and gpu_used() == 0


def test_a_timed_out_child_is_killed_its_share_freed_and_the_next_task_gets_a_new_child():
    nbflow.use("local", workers=1, processes=True)
    nbflow.limit("GPU", 1)

    @nbflow.task(resources={"GPU": 1}, timeout=1)
    def hang():
        time.sleep(120)

    @nbflow.task(resources={"GPU": 1})
    def pid():
        return os.getpid()

    fut = hang.submit()
    with pytest.raises(nbflow.TaskTimeout, match="timeout of 1 s"):
        fut.result(60)
    killed = child_pid(fut)
    wait_for(lambda: gpu_used() == 0)
    fresh = pid.submit().result(60)
    assert fresh not in (killed, os.getpid())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # killed and reaped


def test_errors_and_crashes_in_a_child_are_reported_and_the_pool_keeps_working():
    nbflow.use("local", workers=1, processes=True)

    @nbflow.task
    def fails():
        raise KeyError("missing")

    @nbflow.task
    def crashes():
        os._exit(3)

    @nbflow.task
    def fine():
        return "fine"

    err = fails.submit().exception(60)
    assert isinstance(err, KeyError) and "in fails" in str(err.__cause__)
    err = crashes.submit().exception(60)
    assert isinstance(err, WorkerDied) and "died with exit code 3" in str(err)
    assert fine.submit().result(60) == "fine"


ORPHAN_PARENT = """
import sys, time, nbflow
nbflow.use("local", processes=True)
nbflow.limit("GPU", 1)

@nbflow.task(resources={"GPU": 1})
def hold(path):
    import os, time
    beats = 0
    while True:  # a heartbeat until killed: the file names the child process running the task
        beats += 1
        with open(path + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {beats}")
        os.replace(path + ".tmp", path)
        time.sleep(0.01)

hold.submit(sys.argv[1])
time.sleep(600)
"""


def test_a_child_dies_with_its_kernel_and_its_share_is_freed_only_then(tmp_path):
    """The kernel alone is SIGKILLed (as the OOM killer does) while its child runs a GPU task."""
    import psutil

    beat_file = tmp_path / "beat"
    kernel = subprocess.Popen([sys.executable, "-c", ORPHAN_PARENT, str(beat_file)])
    try:
        wait_for(beat_file.exists, timeout=120, what="the task to start in the child")
        child = psutil.Process(int(beat_file.read_text().split()[0]))
        assert gpu_used() == 1
        kernel.kill()
        kernel.wait(30)
        with nbflow.concurrency("GPU", occupy=1, timeout=60):  # granted only once the task has stopped
            assert stopped(child), "the share was granted while the child still ran the task"
    finally:
        kernel.kill()
        kernel.wait(30)


def stopped(proc) -> bool:
    """Whether ``proc`` can no longer run code: gone, or exiting. On Linux an exiting process drops its memory
    before its files (and so its share), so a share freed by its exit always finds it with no memory left."""
    import psutil

    try:
        return proc.memory_info().vms == 0
    except psutil.NoSuchProcess:
        return True
