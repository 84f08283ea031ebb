"""GPU ids are never invented nor duplicated: a ``GPU`` limit above the devices ``CUDA_VISIBLE_DEVICES`` lists is
refused, a list naming a device twice is refused, and each engine reads the list once, so a task that changes
``os.environ`` changes no other task's ids. No GPU here: fake device lists through ``CUDA_VISIBLE_DEVICES``."""

from __future__ import annotations

import os
import threading

import pytest

import nbflow
from nbflow.devices import visible
from nbflow.machine_limits.detect import gpu_count

WAIT = 60  # seconds: generous for a loaded 2-core machine


def holds_device(started: threading.Event, go: threading.Event) -> str:
    """A GPU task that holds its device until ``go``; returns the id it was given."""
    ids = nbflow.current().cuda_visible_devices
    started.set()
    assert go.wait(WAIT)
    return ids


def sets_the_environment(changed: threading.Event, go: threading.Event) -> str:
    """A GPU task that points ``CUDA_VISIBLE_DEVICES`` at another device, as code starting a tool may."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "7"
    changed.set()
    assert go.wait(WAIT)
    return nbflow.current().cuda_visible_devices


def reads_after(changed: threading.Event) -> tuple:
    """A GPU task that asks for its device only after another task changed the environment."""
    assert changed.wait(WAIT)
    ctx = nbflow.current()
    return ctx.gpus, ctx.cuda_visible_devices


def device_ids() -> str:
    return nbflow.current().cuda_visible_devices


def plain() -> str:
    return "ran"


def test_a_gpu_limit_above_the_devices_listed_is_refused_at_submit(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    nbflow.limit("GPU", 4)
    nbflow.use("local", workers=8)
    step = nbflow.task(holds_device, resources={"GPU": 1})
    with pytest.raises(nbflow.Unsatisfiable, match=r"capacity 4 .* lists 2 devices \('3,5'\)") as refused:
        step.submit(threading.Event(), threading.Event())
    assert "\n" not in str(refused.value) and 'nbflow.limit("GPU", 2)' in str(refused.value)
    assert nbflow.limits()[0].used == 0  # nothing held
    nbflow.limit("GPU", 2)
    started, go = threading.Event(), threading.Event()
    go.set()
    assert step.submit(started, go).result(timeout=WAIT) == "3"


def test_a_limit_raised_past_the_devices_while_tasks_wait_gives_them_no_invented_id(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    nbflow.limit("GPU", 2)
    nbflow.use("local", workers=8)
    step = nbflow.task(holds_device, resources={"GPU": 1})
    go = threading.Event()
    first = [threading.Event() for _ in range(4)]
    futures = [step.submit(started, go) for started in first]
    try:
        assert first[0].wait(WAIT) and first[1].wait(WAIT)  # slots 0 and 1 held; two tasks wait for GPU
        nbflow.limit("GPU", 4)  # set elsewhere, after they were submitted: slots 2 and 3 have no device
        late = [futures[2], futures[3]]
        for fut in late:
            with pytest.raises(nbflow.Unsatisfiable, match=r"GPU slot [23] has no device: .* lists 2 devices"):
                fut.result(timeout=WAIT)
    finally:
        go.set()
    assert sorted(fut.result(timeout=WAIT) for fut in futures[:2]) == ["3", "5"]


def test_a_device_listed_twice_is_refused_and_only_gpu_tasks_care(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,0")
    nbflow.limit("GPU", 2)
    nbflow.use("local", workers=4)
    assert nbflow.task(plain).submit().result(timeout=WAIT) == "ran"
    with pytest.raises(nbflow.ResourceSpecError, match=r"lists device '0' twice") as refused:
        nbflow.task(holds_device, resources={"GPU": 1}).submit(threading.Event(), threading.Event())
    assert "\n" not in str(refused.value)


def test_a_task_that_changes_the_environment_changes_no_other_tasks_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    nbflow.limit("GPU", 2)
    nbflow.use("local", workers=4)
    changed, go = threading.Event(), threading.Event()
    changer = nbflow.task(sets_the_environment, resources={"GPU": 1}).submit(changed, go)
    try:
        gpus, ids = nbflow.task(reads_after, resources={"GPU": 1}).submit(changed).result(timeout=WAIT)
    finally:
        go.set()
    own = changer.result(timeout=WAIT)
    assert {own, ids} == {"3", "5"}  # distinct devices of the list the engine started with
    assert ids == "3,5".split(",")[gpus[0]]


@pytest.mark.parametrize(
    ("listed", "ids"),
    [
        ("3,5", ["3", "5"]),
        (" GPU-8a1b , MIG-GPU-8a1b/1/0 ,2", ["GPU-8a1b", "MIG-GPU-8a1b/1/0", "2"]),
        ("0,-1,2", ["0"]),  # CUDA stops at the first invalid entry
        ("0,,2", ["0"]),
        ("", []),
    ],
)
def test_one_parser_counts_and_names_the_devices(monkeypatch, listed, ids):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible() == ids
    assert gpu_count() == len(ids)  # the detected GPU capacity counts exactly the devices handed out


@pytest.mark.parametrize("listed", ["1, 0 ,1", "1,0,01"])  # CUDA reads "01" as device 1
def test_the_detected_gpu_capacity_refuses_a_device_listed_twice(monkeypatch, listed):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    with pytest.raises(nbflow.ResourceSpecError, match=rf"CUDA_VISIBLE_DEVICES='{listed}' lists device '0?1' twice"):
        gpu_count()


def test_a_dask_worker_with_more_gpu_resource_than_devices_listed_refuses_gpu_tasks(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    nbflow.use("dask", n_workers=1, threads_per_worker=4, processes=False, resources={"GPU": 4})
    step = nbflow.task(device_ids, resources={"GPU": 1})
    with pytest.raises(nbflow.Unsatisfiable, match=r"GPU resource has capacity 4 but .* lists 2 devices \('3,5'\)"):
        step.submit().result(timeout=WAIT)
    assert nbflow.task(plain).submit().result(timeout=WAIT) == "ran"
