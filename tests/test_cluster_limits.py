"""Cluster limits (``nbflow.limit(..., scope="cluster")``) against a real ``dask scheduler`` and ``dask worker``
processes: shared by two clients, FIFO, freed with the task or its worker, rates, occupancy."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import distributed
import pytest
from _dask_procs import DaskProcs, run_client, wait_until

import nbflow
from nbflow.engines.dask_scheduler_limits import _Limit

WAIT = 120.0  # seconds: generous deadlines for a loaded 2-core machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two workers with four threads each."""
    base = tmp_path_factory.mktemp("cluster-limits")
    procs = DaskProcs(base, env={"NBFLOW_LIMITS_DIR": str(base / "limits")})
    try:
        procs.worker("a", nthreads=4)
        procs.worker("b", nthreads=4)
        yield procs
    finally:
        procs.close()


@pytest.fixture
def out(tmp_path) -> Path:
    """Where this test's tasks leave their spans."""
    path = tmp_path / "spans"
    path.mkdir()
    return path


@pytest.fixture
def engine(cluster):
    return nbflow.use("dask", address=cluster.address)


# -- what the tasks run (on the workers, imported by name) ------------------------------------------------------


def span(out: str, hold: float) -> tuple[float, float]:
    """Hold for ``hold`` seconds; leave this task's start and end (epoch seconds) in a file of ``out``."""
    start = time.time()
    time.sleep(hold)
    end = time.time()
    Path(out, uuid.uuid4().hex).write_text(f"{start} {end}")
    return start, end


async def span_async(out: str, hold: float) -> tuple[float, float]:
    start = time.time()
    await asyncio.sleep(hold)
    end = time.time()
    Path(out, uuid.uuid4().hex).write_text(f"{start} {end}")
    return start, end


def mark_then_wait(out: str, event: str) -> float:
    """Leave this task's start time in a file of ``out``, then hold on until the Dask event ``event`` is set."""
    start = time.time()
    Path(out, uuid.uuid4().hex).write_text(f"{start} {start}")
    distributed.Event(event).wait(WAIT)
    return start


def naps(seconds: float) -> None:
    """Sleep in short naps, so that a stop lands soon (one in a long ``time.sleep`` waits for it to return)."""
    for _ in range(int(seconds / 0.05)):
        time.sleep(0.05)


def fail() -> None:
    raise ValueError("boom")


def spans_in(out: Path) -> list[tuple[float, float]]:
    return [tuple(map(float, p.read_text().split())) for p in out.iterdir()]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one time (an end before a start at the same instant)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    count = peak = 0
    for _, step in edges:
        count += step
        peak = max(peak, count)
    return peak


def cluster_limit(name: str) -> dict | None:
    return next((x for x in nbflow.occupancy()["limits"] if x["scope"] == "cluster" and x["name"] == name), None)


def waits(name: str, n: int, held: float | None = None):
    """A predicate: ``n`` tasks wait for cluster limit ``name`` (and ``held`` of it is taken, if given)."""

    def check():
        found = cluster_limit(name)
        return found is not None and found["waiting"] == n and (held is None or found["used"] == held)

    return check


def set_event(cluster: DaskProcs, name: str) -> None:
    distributed.Event(name, client=cluster.client).set()


CLIENT = """
import sys
import nbflow
from test_cluster_limits import {fn}
address, out, limit, count, hold = sys.argv[1:]
nbflow.use("dask", address=address)
futs = nbflow.task({fn}, limits={{limit: 1}}, name="shared").map([out] * int(count), [float(hold)] * int(count))
nbflow.gather(futs)
print("done", flush=True)
nbflow.use("local")
"""


def run_clients(cluster: DaskProcs, fn: str, out: Path, limit: str, count: int, hold: float) -> None:
    """Two more clients (two processes, as two kernels) each run ``count`` tasks ``fn(out, hold)`` at once."""
    procs = [run_client(cluster.address, CLIENT.format(fn=fn), out, limit, count, hold) for _ in range(2)]
    for proc in procs:
        output, _ = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0 and "done" in output, output


# -- the tests ------------------------------------------------------------------------------------------------


def test_two_clients_never_hold_more_than_a_shared_cluster_limit(engine, cluster, out):
    nbflow.limit("db", 2, scope="cluster")
    run_clients(cluster, "span", out, "db", 8, 0.15)
    spans = spans_in(out)
    assert len(spans) == 16
    assert most_at_once(spans) == 2  # never more than 2 (and the limit was used: 16 tasks on 8 threads)
    assert cluster_limit("db")["used"] == 0


def test_async_tasks_share_a_cluster_limit(engine, cluster, out):
    nbflow.limit("adb", 2, scope="cluster")
    nbflow.gather(nbflow.task(span_async, limits={"adb": 1}, name="a").map([str(out)] * 12, [0.1] * 12))
    assert most_at_once(spans_in(out)) == 2
    assert cluster_limit("adb")["used"] == 0


def test_150_async_waiters_on_two_workers_all_pass_one_at_a_time(engine, cluster, out):
    """About 75 waits per worker, more than ``RPC_RELEASE_BELOW`` (past which releases go on the worker's stream, so
    that they never wait behind the waits for a connection): none is lost or stuck, never two at once."""
    nbflow.limit("many", 1, scope="cluster")
    nbflow.gather(nbflow.task(span_async, limits={"many": 1}, name="m").map([str(out)] * 150, [0.0] * 150))
    spans = spans_in(out)
    assert len(spans) == 150 and most_at_once(spans) == 1
    assert cluster_limit("many")["used"] == 0


def test_a_second_client_installing_the_plugin_keeps_the_state(engine, cluster, out):
    nbflow.limit("keep", 1, scope="cluster")
    holder = nbflow.task(mark_then_wait, limits={"keep": 1}, name="holder").submit(str(out), "keep-go")
    wait_until(waits("keep", 0, held=1), WAIT, "the holder to take its slot")
    code = (
        "import sys, json, nbflow\n"
        "nbflow.use('dask', address=sys.argv[1])\n"
        "nbflow.engines.engine().cluster_limits.install()\n"
        "print(json.dumps([x for x in nbflow.occupancy()['limits'] if x['name'] == 'keep']), flush=True)\n"
        "nbflow.use('local')\n"
    )
    proc = run_client(cluster.address, code)
    output, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, output
    seen = __import__("json").loads(output.strip().splitlines()[-1])
    assert [(x["capacity"], x["used"], [h["task"] for h in x["holders"]]) for x in seen] == [(1.0, 1.0, ["holder"])]
    set_event(cluster, "keep-go")
    holder.result(WAIT)


def test_waiters_are_served_first_come_first_served(engine, cluster, out):
    nbflow.limit("fifo", 2, scope="cluster")
    (out / "x").mkdir()
    holder = nbflow.task(mark_then_wait, limits={"fifo": 1}, name="holder").submit(str(out / "x"), "fifo-go")
    wait_until(waits("fifo", 0, held=1), WAIT, "the holder")
    big_out, small_out = out / "big", out / "small"
    big_out.mkdir()
    small_out.mkdir()
    big = nbflow.task(span, limits={"fifo": 2}, name="big").submit(str(big_out), 0.3)
    wait_until(waits("fifo", 1), WAIT, "the big task to wait")
    smalls = []
    for i in range(3):  # one at a time, so that their order of arrival is known
        smalls.append(nbflow.task(span, limits={"fifo": 1}, name="small").submit(str(small_out), 0.1))
        wait_until(waits("fifo", 2 + i), WAIT, "a small task to wait")
    assert cluster_limit("fifo")["used"] == 1  # a slot is free, and the small ones did not overtake the big one
    set_event(cluster, "fifo-go")
    nbflow.gather([holder, big, *smalls])
    ((_, big_end),) = spans_in(big_out)
    assert all(start >= big_end for start, _ in spans_in(small_out))


def test_a_killed_workers_slot_and_wait_are_gone_within_2_s(engine, cluster, out):
    cluster.worker("victim", resources="VICTIM=2")
    nbflow.limit("kill", 1, scope="cluster")
    pinned = nbflow.task(mark_then_wait, limits={"kill": 1}, resources={"VICTIM": 1}, name="pinned")
    holding = pinned.submit(str(out), "kill-never")
    wait_until(waits("kill", 0, held=1), WAIT, "the victim to hold the slot")
    victim_waits = pinned.submit(str(out), "kill-never")  # queued first, on the worker that will die
    wait_until(waits("kill", 1), WAIT, "a task on the victim to wait")
    assert [h["task"] for h in cluster_limit("kill")["holders"]] == ["pinned"]
    next_out = out / "next"
    next_out.mkdir()
    follower = nbflow.task(span, limits={"kill": 1}, name="next").submit(str(next_out), 0.0)
    wait_until(waits("kill", 2), WAIT, "the next task to wait")
    killed = time.time()
    cluster.workers.pop("victim").kill()
    follower.result(WAIT)
    ((start, _),) = spans_in(next_out)
    assert start - killed < 2.0  # the victim's slot is free and its waiter, ahead in the queue, is gone
    wait_until(waits("kill", 0, held=0), WAIT, "the follower's lease to go")
    holding.cancel()  # (both wait for a VICTIM worker that is gone)
    victim_waits.cancel()


def test_raising_the_capacity_wakes_waiters(engine, cluster, out):
    nbflow.limit("grow", 1, scope="cluster")
    holder = nbflow.task(mark_then_wait, limits={"grow": 1}, name="holder").submit(str(out), "grow-go")
    wait_until(waits("grow", 0, held=1), WAIT, "the holder")
    waiter = nbflow.task(span, limits={"grow": 1}, name="waiter").submit(str(out), 0.0)
    wait_until(waits("grow", 1), WAIT, "the waiter")
    nbflow.limit("grow", 2, scope="cluster")
    waiter.result(WAIT)  # while the holder still holds
    assert cluster_limit("grow")["used"] == 1
    set_event(cluster, "grow-go")
    holder.result(WAIT)


def test_leases_of_failed_timed_out_and_stopped_tasks_are_freed(engine, cluster, out):
    nbflow.limit("free", 1, scope="cluster")
    with pytest.raises(ValueError):
        nbflow.task(fail, limits={"free": 1}, name="fails").submit().result(WAIT)
    with pytest.raises(nbflow.TaskTimeout):
        nbflow.task(naps, limits={"free": 1}, timeout=0.5, name="slow").submit(60).result(WAIT)
    wait_until(waits("free", 0, held=0), WAIT, "the failed and timed-out tasks' leases to go")
    running = nbflow.task(mark_then_wait, limits={"free": 1}, name="held").submit(str(out), "free-never")
    wait_until(waits("free", 0, held=1), WAIT, "a task to hold the slot")
    waiting = nbflow.task(span, limits={"free": 1}, name="waits").submit(str(out), 0.0)
    cancelled = nbflow.task(span, limits={"free": 1}, name="cancelled").submit(str(out), 0.0)
    wait_until(waits("free", 2), WAIT, "two tasks to wait")
    assert waiting.stop()  # stopped while it waits (the worker withdraws the wait)
    cancelled.dask.cancel()  # cancelled on the cluster while it waits (the scheduler forgets its key)
    wait_until(waits("free", 0, held=1), WAIT, "the withdrawn waiters to leave the queue")
    assert running.stop()  # and the holder stopped while it holds
    wait_until(waits("free", 0, held=0), WAIT, "the stopped holder's lease to go")
    wait_until(lambda: waiting.status == "cancelled" and running.status == "cancelled", WAIT, "the stops")
    assert cancelled.dask.status == "cancelled"
    assert len(spans_in(out)) == 1  # only the holder ever started


def test_async_task_stopped_while_it_waits_leaves_the_queue(engine, cluster, out):
    nbflow.limit("astop", 1, scope="cluster")
    holder = nbflow.task(mark_then_wait, limits={"astop": 1}, name="holder").submit(str(out), "astop-go")
    wait_until(waits("astop", 0, held=1), WAIT, "the holder")
    waiter = nbflow.task(span_async, limits={"astop": 1}, name="async-waiter").submit(str(out), 0.0)
    wait_until(waits("astop", 1), WAIT, "the async task to wait")
    assert waiter.stop()
    wait_until(waits("astop", 0, held=1), WAIT, "the async waiter to leave the queue")
    wait_until(lambda: waiter.status == "cancelled", WAIT, "the stop")
    set_event(cluster, "astop-go")
    holder.result(WAIT)
    assert len(spans_in(out)) == 1


def test_a_cluster_rate_holds_across_two_clients_and_two_workers(engine, cluster, out):
    burst = 3
    nbflow.limit("rate", rate="20/s", burst=burst, scope="cluster")
    run_clients(cluster, "span", out, "rate", 115, 0.0)
    starts = sorted(start for start, _ in spans_in(out))
    assert len(starts) == 230
    busiest = max(sum(1 for t in starts[i:] if t < s + 1.0) for i, s in enumerate(starts))
    assert busiest <= 20 + burst
    in_ten = sum(1 for t in starts if t < starts[0] + 10.0)
    assert 185 <= in_ten <= 200 + burst  # close to the rate: the scheduler paces, nothing else does


def test_occupancy_shows_cluster_holders_and_waiters(engine, cluster, out):
    nbflow.limit("seen", 1, rate="1/min", burst=2, scope="cluster")
    holder = nbflow.task(mark_then_wait, limits={"seen": 1}, name="holder").submit(str(out), "seen-go")
    wait_until(waits("seen", 0, held=1), WAIT, "the holder")
    waiter = nbflow.task(span, limits={"seen": 1}, name="waiter").submit(str(out), 0.0)
    wait_until(waits("seen", 1), WAIT, "the waiter")
    found = cluster_limit("seen")
    ((holder_info,),) = [found["holders"]]
    workers = set(cluster.client.scheduler_info(n_workers=-1)["workers"])
    assert holder_info["worker"] in workers and holder_info["host"] == "127.0.0.1"
    assert (holder_info["task"], holder_info["amount"], holder_info["pid"]) == ("holder", 1.0, 0)
    assert abs(holder_info["since"] - time.time()) < WAIT
    assert (found["capacity"], found["rate"], found["burst"]) == (1.0, "1/min", 2)
    assert found["next_start"] == 0.0  # one start of a burst of 2 taken
    set_event(cluster, "seen-go")
    nbflow.gather([holder, waiter])
    assert 0.0 < cluster_limit("seen")["next_start"] <= 60.0  # the burst is spent: the next start is a minute away


def test_bad_inputs(engine, cluster, out):
    with pytest.raises(nbflow.ResourceSpecError, match="amount of 'x'"):
        nbflow.limit("x", float("nan"), scope="cluster")
    with pytest.raises(nbflow.ResourceSpecError):
        nbflow.limit("x", True, scope="cluster")
    with pytest.raises(nbflow.ResourceSpecError, match="rate"):
        nbflow.limit("x", rate="fast", scope="cluster")
    for capacity in (float("inf"), -1, 0, "4", 10**400):
        with pytest.raises(nbflow.ResourceSpecError):
            nbflow.limit("x", capacity, scope="cluster")
    for burst in (0, True, 2.5, "3"):
        with pytest.raises(nbflow.ResourceSpecError, match="burst"):
            nbflow.limit("x", rate="1/s", burst=burst, scope="cluster")
    with pytest.raises(nbflow.ResourceSpecError, match="needs a capacity, a rate or both"):
        nbflow.limit("x", scope="cluster")
    with pytest.raises(nbflow.ResourceSpecError, match="scope"):
        nbflow.limit("x", 1, scope="galaxy")
    with pytest.raises(nbflow.NoSuchLimit, match="no cluster limit named 'never-set'"):
        nbflow.remove_limit("never-set", scope="cluster")
    nbflow.limit("small", 2, scope="cluster")
    with pytest.raises(nbflow.Unsatisfiable, match="cluster limit 'small' has capacity 2"):
        nbflow.task(span, limits={"small": 3}, name="big").submit(str(out), 0.0)
    # another client raises it: the cached capacity is read again before a submit is refused
    code = "import sys, nbflow\nnbflow.use('dask', address=sys.argv[1])\nnbflow.limit('small', 3, scope='cluster')\n"
    proc = run_client(cluster.address, code)
    assert proc.wait(WAIT) == 0, proc.stdout.read()
    nbflow.task(span, limits={"small": 3}, name="big").submit(str(out), 0.0).result(WAIT)
    # neither a cluster limit nor one of the worker's machine: the task fails as before
    with pytest.raises(nbflow.NoSuchLimit):
        nbflow.task(span, limits={"nowhere": 1}, name="lost").submit(str(out), 0.0).result(WAIT)
    assert "x" not in [x["name"] for x in nbflow.occupancy()["limits"]]  # nothing half-set by the refusals


def test_removing_a_cluster_limit_sends_its_waiters_to_the_machine_limits(engine, cluster, out):
    nbflow.limit("gone", 1, scope="cluster")
    holder = nbflow.task(mark_then_wait, limits={"gone": 1}, name="holder").submit(str(out), "gone-go")
    wait_until(waits("gone", 0, held=1), WAIT, "the holder")
    waiter = nbflow.task(span, limits={"gone": 1}, name="waiter").submit(str(out), 0.0)
    wait_until(waits("gone", 1), WAIT, "the waiter")
    nbflow.remove_limit("gone", scope="cluster")
    assert cluster_limit("gone") is None
    with pytest.raises(nbflow.NoSuchLimit):  # no machine limit of that name on the worker either
        waiter.result(WAIT)
    set_event(cluster, "gone-go")
    holder.result(WAIT)


def test_lowering_a_capacity_below_a_waiter_fails_it_and_serves_those_behind(engine, cluster, out):
    nbflow.limit("low", 3, scope="cluster")
    holder = nbflow.task(mark_then_wait, limits={"low": 2}, name="holder").submit(str(out), "low-go")
    wait_until(waits("low", 0, held=2), WAIT, "the holder")
    big = nbflow.task(span, limits={"low": 2}, name="big").submit(str(out), 0.0)
    wait_until(waits("low", 1), WAIT, "the big waiter")
    small = nbflow.task(span, limits={"low": 1}, name="small").submit(str(out), 0.0)
    wait_until(waits("low", 2), WAIT, "the small one behind it")
    nbflow.limit("low", 1, scope="cluster")  # below the big waiter's 2: it can never be served now
    with pytest.raises(nbflow.Unsatisfiable, match="capacity 1"):
        big.result(WAIT)
    set_event(cluster, "low-go")
    holder.result(WAIT)
    small.result(WAIT)  # not stuck behind it
    wait_until(waits("low", 0, held=0), WAIT, "everything released")


def test_a_rate_counts_an_amounts_tokens_and_removing_it_frees_its_pacing_waiters(engine, cluster, out):
    nbflow.limit("tok", rate="5/s", burst=2, scope="cluster")
    with pytest.raises(nbflow.Unsatisfiable, match="burst 2"):  # 3 tokens at once: never (as on a machine)
        nbflow.task(span, limits={"tok": 3}, name="greedy").submit(str(out), 0.0)
    pairs = nbflow.gather(nbflow.task(span, limits={"tok": 2}, name="pairs").map([str(out)] * 3, [0.0] * 3))
    starts = sorted(start for start, _ in pairs)
    assert starts[2] - starts[0] >= 2 * 0.4 - 0.05  # 2 tokens each: one start every 0.4 s after the first
    nbflow.limit("slow", rate="1/h", scope="cluster")
    nbflow.task(span, limits={"slow": 1}, name="first").submit(str(out), 0.0).result(WAIT)
    paced = nbflow.task(span, limits={"slow": 1}, name="paced").submit(str(out), 0.0)
    wait_until(waits("slow", 1), WAIT, "a start an hour away")
    nbflow.remove_limit("slow", scope="cluster")
    with pytest.raises(nbflow.NoSuchLimit):  # it goes on to the worker's machine limit, which does not exist
        paced.result(WAIT)


def test_cluster_scope_needs_the_dask_engine():
    nbflow.use("local")
    with pytest.raises(nbflow.NbflowError, match=r"nbflow.use\('dask'"):
        nbflow.limit("db", 2, scope="cluster")


def test_a_preloaded_scheduler_has_the_limits_from_the_start(tmp_path):
    procs = DaskProcs(tmp_path, scheduler_args=["--preload", "nbflow.engines.dask_scheduler_limits"])
    try:
        client = procs.client
        assert client.sync(client.scheduler.nbflow_limits_status) == ()  # there before any nbflow client
        procs.worker("w", nthreads=2)
        nbflow.use("dask", address=procs.address)
        nbflow.limit("pre", 1, scope="cluster")
        out = tmp_path / "out"
        out.mkdir()
        nbflow.gather(nbflow.task(span, limits={"pre": 1}, name="p").map([str(out)] * 4, [0.1] * 4))
        assert most_at_once(spans_in(out)) == 1
        assert [x["name"] for x in client.sync(client.scheduler.nbflow_limits_status)] == ["pre"]
    finally:
        nbflow.use("local")
        procs.close()


def test_gcra_admits_a_burst_then_one_start_per_interval_and_an_amount_takes_that_many_tokens():
    lim = _Limit("r")
    lim.interval, lim.burst, lim.rate = 0.1, 3, "10/s"
    for _ in range(3):  # a burst of 3 at once
        assert lim.due(1, 100.0) <= 100.0
        lim.start(100.0, 1)
    assert lim.due(1, 100.0) == pytest.approx(100.1)  # then one every 0.1 s
    lim.start(100.5, 1)  # a start granted late (a busy scheduler) counts from when it was granted: no backlog
    assert lim.due(1, 100.5) == pytest.approx(100.5 + 0.1 - 0.2)
    assert lim.due(1, 200.0) <= 200.0  # after a pause, a start is due at once
    fresh = _Limit("amounts")
    fresh.interval, fresh.burst, fresh.rate = 0.1, 3, "10/s"
    assert fresh.due(3, 50.0) == pytest.approx(50.0)  # the whole burst at once
    fresh.start(50.0, 3)
    assert fresh.due(2, 50.0) == pytest.approx(50.2)  # two more tokens: two intervals
    assert fresh.refused(3) is None and "burst 3" in fresh.refused(4)


def test_a_scheduler_that_is_gone_is_scheduler_unreachable(tmp_path):
    procs = DaskProcs(tmp_path)
    try:
        nbflow.use("dask", address=procs.address)
        nbflow.limit("here", 1, scope="cluster")
        procs.procs[0].kill()  # the scheduler
        procs.procs[0].wait()
        with pytest.raises(nbflow.SchedulerUnreachable, match="did not answer about cluster limits"):
            nbflow.limit("here", 2, scope="cluster")
    finally:
        nbflow.use("local")
        procs.close()
