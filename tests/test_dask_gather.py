"""``nbflow.gather`` on a real LocalCluster: values in order, the first error by position, futures of several
engines and already-done ones in one call, one ``client.gather`` per cluster however the futures complete."""

from __future__ import annotations

import threading

import distributed
import pytest

import nbflow
from nbflow.engines import bind, create


@pytest.fixture(scope="module")
def client():
    """One cluster of 2 worker processes x 2 threads for the module; each test selects it with ``nbflow.use``."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, host="127.0.0.1", dashboard_address=None, protocol="tcp"
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def fetches(client, monkeypatch) -> list[int]:
    """How many keys each ``client.gather`` call of ``client`` asked for, in call order."""
    calls: list[int] = []
    real = client.gather

    def counted(futures, *args, **kwargs):
        calls.append(len(futures))
        return real(futures, *args, **kwargs)

    monkeypatch.setattr(client, "gather", counted)
    return calls


def double(x: int) -> int:
    return 2 * x


def fail_at_7_and_15(x: int) -> int:
    if x == 7:
        raise ValueError("bad input 7")
    if x == 15:
        raise KeyError(15)
    return x


def test_a_large_batch_comes_back_in_order_in_one_client_gather(client, fetches):
    nbflow.use(client)
    futures = nbflow.task(double).map(range(3000))
    assert nbflow.gather(futures, timeout=120) == [2 * x for x in range(3000)]
    assert fetches == [3000]  # however the 3,000 tasks finished: one round trip for every value
    assert [f.result() for f in futures[:3]] == [0, 2, 4] and fetches == [3000]  # kept here, not fetched again


def test_the_first_error_by_position_is_raised(client):
    nbflow.use(client)
    futures = nbflow.task(fail_at_7_and_15).map(range(20))
    with pytest.raises(ValueError, match="bad input 7"):
        nbflow.gather(futures, timeout=120)
    assert nbflow.gather(futures[:7], timeout=120) == list(range(7))
    with pytest.raises(KeyError):
        nbflow.gather(futures[8:], timeout=120)


def test_done_futures_and_futures_of_other_engines_mix_with_dask_ones(client, fetches):
    """Already-done futures (what a cached hit gives), a local engine's and a second cluster's come back in place;
    each cluster is asked once, for its own values only."""
    nbflow.use(client)
    done = nbflow.Future("done")
    done.set_result("from the cache")
    local = create("local", workers=2)
    other = create("dask", n_workers=1, threads_per_worker=2, processes=False)
    previous = bind(local)
    try:
        here = nbflow.task(double).map([100, 101])
        bind(other)
        there = nbflow.task(double).map([200, 201])
    finally:
        bind(previous)
    try:
        ours = nbflow.task(double).map(range(4))
        mixed = [ours[0], done, here[0], there[0], ours[1], ours[2], there[1], done, here[1], ours[3]]
        assert nbflow.gather(mixed, timeout=120) == [0, "from the cache", 200, 400, 2, 4, 402, "from the cache", 202, 6]
        assert fetches == [4]  # the second cluster's two values came through its own client
    finally:
        local.close()
        other.close()


def test_timeout_bounds_the_whole_call(client):
    """Each future alone is done within ``timeout``; all of them are not, so ``TimeoutError``."""
    first, second = nbflow.Future("first"), nbflow.Future("second")
    timers = [threading.Timer(1.6, first.set_result, (1,)), threading.Timer(3.2, second.set_result, (2,))]
    for timer in timers:
        timer.start()
    try:
        with pytest.raises(TimeoutError):
            nbflow.gather([first, second], timeout=2)
    finally:
        for timer in timers:
            timer.cancel()


def test_a_nested_list_is_refused_with_what_to_pass(client):
    nbflow.use(client)
    futures = nbflow.task(double).map(range(2))
    with pytest.raises(TypeError, match=r"item 1 is a list.*flat list of futures"):
        nbflow.gather([futures[0], futures[1:]])
