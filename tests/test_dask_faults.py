"""Dask engine under faults and across worker processes: SIGKILL of a worker, host limits."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import distributed
import pytest
from _dask_procs import DaskProcs, wait_until

import nbflow


@pytest.fixture
def procs(tmp_path, limits_dir):
    """A scheduler whose workers share the test's ``NBFLOW_LIMITS_DIR`` (the same machine's limits)."""
    procs = DaskProcs(tmp_path / "dask", env={"NBFLOW_LIMITS_DIR": str(limits_dir)})
    yield procs
    procs.close()


def gpu_job(marker_dir: str, seconds: float) -> str:
    """Record where this attempt runs, then work for ``seconds`` holding its GPU."""
    name = str(distributed.get_worker().name)
    Path(marker_dir, f"{name}-{uuid.uuid4().hex}").write_text(name)
    time.sleep(seconds)
    return name


def test_sigkill_of_a_worker_reruns_its_gpu_tasks_elsewhere_and_frees_resources(procs, tmp_path):
    victim = procs.worker("gpu-a", "GPU=2")
    procs.worker("gpu-b", "GPU=2")
    engine = nbflow.use("dask", address=procs.address)
    markers = tmp_path / "started"
    markers.mkdir()
    job = nbflow.task(gpu_job, resources={"GPU": 1}, name="infer")
    futs = [job.submit(str(markers), 3.0) for _ in range(4)]  # 4 GPUs in all: every task starts at once
    wait_until(lambda: sum(p.name.startswith("gpu-a") for p in markers.iterdir()) == 2, what="gpu-a busy")
    os.kill(victim.pid, signal.SIGKILL)
    assert sorted(nbflow.gather(futs, timeout=120)) == ["gpu-b"] * 4  # gpu-a's two were rerun on gpu-b
    assert all(f.status == "finished" for f in futs)
    snap = wait_until(lambda: _one_idle_worker(engine.occupancy()), what="gpu-b alone and idle")
    assert snap["workers"][0]["name"] == "gpu-b"
    assert snap["workers"][0]["resources"]["GPU"] == {"total": 2.0, "used": 0.0}
    assert snap["tasks"]["finished"] == 4


def _one_idle_worker(snap):
    (worker,) = snap["workers"] if len(snap["workers"]) == 1 else (None,)
    return snap if worker is not None and worker["running"] == 0 else None


def limited_job(seconds: float) -> tuple[str, float, float]:
    """Hold the host limit for ``seconds``; report (worker, start, end) measured inside the task."""
    start = time.time()
    time.sleep(seconds)
    return str(distributed.get_worker().name), start, time.time()


def test_host_limit_spans_all_worker_processes(procs):
    nbflow.limit("gpu-host", 1)  # the machine-wide limit both worker processes read
    procs.worker("w1", "GPU=2")
    procs.worker("w2", "GPU=2")
    nbflow.use("dask", address=procs.address)
    job = nbflow.task(limited_job, resources={"GPU": 1}, limits={"gpu-host": 1}, name="infer")
    runs = nbflow.gather([job.submit(0.2) for _ in range(8)], timeout=120)
    assert {worker for worker, _, _ in runs} == {"w1", "w2"}  # both processes took part
    intervals = sorted((start, end) for _, start, end in runs)
    for (_, end), (next_start, _) in zip(intervals, intervals[1:], strict=False):
        assert next_start >= end, f"two holders of gpu-host overlapped: {intervals}"
    (status,) = [s for s in nbflow.limits() if s.name == "gpu-host"]
    assert status.used == 0 and status.holders == []  # every holding was released
