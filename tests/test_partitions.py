"""A client cut off from Redis by a partition that drops packets (no reset, no close).

The only way to reach the paths where a release, a renewal or a read cannot get
through and nothing says so: the client waits for a reply that never comes.
Each test checks the partition bit (bytes were swallowed) and asserts what the
README promises: a holder cut off past its lease is overtaken only after its
lease and told ``LeaseLost``; a helper raises ``StorageError`` within
``CACHEKIT_REDIS_TIMEOUT`` + 1 s; memoized calls fail open with one bounded
wait per process; once the partition heals, service resumes within 2 s.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from cachelib import RedisCache

import cachekit
from cachekit.resolve import strategy_for

from .conftest import use_settings
from .netfaults import BlackholeProxy
from .redisserver import RedisServer
from .test_redis_faults import start, try_lock

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

LEASE = 2.0
REPLY_WAIT = 1.0


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[BlackholeProxy]:
    proxy = BlackholeProxy(redis_server.port)
    yield proxy
    proxy.swallowing.clear()
    proxy.close()


@pytest.fixture
def cut(proxy: BlackholeProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A RedisCache that reaches the server only through ``proxy``, its strategy made."""
    use_settings(monkeypatch, lease=LEASE, redis_timeout=REPLY_WAIT, fail_open_pause=5.0)
    cache = RedisCache(
        host=redis.Redis(port=proxy.port, socket_timeout=REPLY_WAIT),
        key_prefix=f"cut-{uuid.uuid4().hex[:6]}:",
    )
    strategy_for(cache)  # made (and the server checked) before the partition
    yield cache


def test_a_holder_cut_off_past_its_lease_is_overtaken_only_after_it_and_told(
    cut: Any, proxy: BlackholeProxy, redis_url: str
) -> None:
    with pytest.raises(cachekit.LeaseLost):
        with cachekit.lock(cut, "L", timeout=5):
            granted = time.time()
            proxy.swallowing.set()
            waiter, waited = start(try_lock, redis_url, cut._get_prefix(), 3 * LEASE)
            what, _, entered = waited.get(timeout=30)
            assert proxy.swallowed > 0, "the partition never bit: no renewal was dropped"
            assert what == "entered"
            assert entered - granted >= LEASE - 0.1  # never before the lease ran out
            waiter.join(10)
            proxy.swallowing.clear()  # healed: leaving the block finds the lease taken


def test_a_helper_cut_off_fails_within_the_reply_wait_and_resumes_once_healed(
    cut: Any, proxy: BlackholeProxy
) -> None:
    assert cachekit.incr(cut, "n") == 1
    proxy.swallowing.set()
    for helper in (
        lambda: cachekit.incr(cut, "n"),
        lambda: cachekit.update(cut, "d", lambda d: {**(d or {}), "n": 1}),
        lambda: cachekit.get_or_compute(cut, "g", lambda: 1),
    ):
        began = time.monotonic()
        with pytest.raises(cachekit.StorageError):
            helper()
        assert time.monotonic() - began < REPLY_WAIT + 1.0
    assert proxy.swallowed > 0
    proxy.swallowing.clear()
    healed = time.monotonic()
    while True:
        try:
            value = cachekit.incr(cut, "n")
            break
        except cachekit.StorageError:
            assert time.monotonic() - healed < 2.0, "service did not resume within 2 s"
            time.sleep(0.05)
    assert time.monotonic() - healed < 2.0
    assert value in (2, 3)  # the incr cut off may or may not have been applied


def test_memoized_calls_fail_open_with_one_bounded_wait_per_process(
    cut: Any, proxy: BlackholeProxy
) -> None:
    calls: list[int] = []

    @cachekit.memoize(cut, timeout=60, name="partitioned")
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    assert square(3) == 9 and calls == [3]
    proxy.swallowing.set()
    began = time.monotonic()
    results: list[int] = []

    def caller() -> None:
        for _ in range(25):
            results.append(square(4))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - began
    assert proxy.swallowed > 0
    assert results == [16] * 200  # every call answered, uncached
    # One bounded wait (the calls already in flight wait it together), not one per call.
    assert elapsed < REPLY_WAIT + 1.0, elapsed
    figures = cachekit.statistics(cut, merged=False)["memo"]["partitioned"]
    assert figures["errors"] == 200
    proxy.swallowing.clear()
