"""The near cache (``CACHEKIT_NEAR_CACHE``, :mod:`cachekit.redis.near`) on real servers.

Hits are served from the process's memory; a write by another host (another
strategy, its own connections) is seen once its invalidation arrived, a write
by this process at once; a fork starts empty; memory stays within its bounds;
the race of ``tests/nearrace.py`` (3,000 rounds here, 10,000 in ``make bench``)
finds no stale read after an invalidation arrived. Faults are in ``test_near_faults.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from cachelib import RedisCache
from flask import Flask
from flask_caching import Cache

import cachekit
from cachekit.errors import ConfigurationError
from cachekit.redis.near import NearCache
from cachekit.resolve import strategy_for
from cachekit.settings import NearCacheLimits, Settings
from cachekit.strategy import Entry

from . import nearrace
from .redisserver import RedisServer

pytestmark = pytest.mark.timeout(60)

NEAR = {"max_entries": 10_000, "max_bytes": 8 * 1024 * 1024}


def app_on(config: dict[str, Any]) -> tuple[Flask, Cache]:
    app = Flask(__name__)
    app.config.update(CACHE_DEFAULT_TIMEOUT=300, **config)
    return app, Cache(app)


def near_of(app: Flask, cache: Cache) -> NearCache:
    with app.app_context():
        near = strategy_for(cache)._near  # type: ignore[attr-defined]
    assert isinstance(near, NearCache)
    return near


def eventually(check: Callable[[], bool], within: float = 2.0) -> float:
    """Seconds until ``check()`` held (fails the test if it does not within ``within``)."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < within, "did not happen in time"
        time.sleep(0.0005)
    return time.monotonic() - began


def until_hit(near: NearCache, call: Callable[[], Any], expected: Any) -> None:
    """Call until a call is a near hit (the tracking connection opens in the background)."""
    deadline = time.monotonic() + 5
    while True:
        before = near.figures["hits"]
        assert call() == expected
        if near.figures["hits"] > before:
            return
        assert time.monotonic() < deadline, f"never served from memory: {near.figures}"
        time.sleep(0.005)


@pytest.fixture(params=["redis", "valkey"])
def server_url(request: pytest.FixtureRequest) -> str:
    if request.param == "valkey":
        server: RedisServer = request.getfixturevalue("valkey_server")
        return server.url
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def two_hosts(server_url: str) -> Iterator[tuple[Any, Any, redis.Redis]]:
    """Two apps (two "hosts": their own strategies, near caches, connections) on one server."""
    prefix = f"near-{uuid.uuid4().hex[:8]}:"
    config = {
        "CACHE_TYPE": "RedisCache",
        "CACHE_REDIS_URL": server_url,
        "CACHE_KEY_PREFIX": prefix,
        "CACHEKIT_NEAR_CACHE": NEAR,
    }
    raw = redis.Redis.from_url(server_url)
    raw.set(f"{prefix}source", 1)
    hosts = []
    for _ in range(2):
        app, cache = app_on(config)

        @cachekit.memoize(cache, timeout=0, tags=["prices"])
        def price() -> int:
            return int(raw.get(f"{prefix}source") or 0)

        hosts.append((app, cache, price))
    yield hosts[0], hosts[1], raw
    raw.close()


def test_the_setting_is_read_and_checked() -> None:
    assert Settings().near_cache is None
    limits = Settings.from_config({"CACHEKIT_NEAR_CACHE": {"max_bytes": 1000}}).near_cache
    assert limits == NearCacheLimits(max_bytes=1000)
    assert Settings.from_config({"CACHEKIT_NEAR_CACHE": True}).near_cache == NearCacheLimits()
    assert Settings.from_config({"CACHEKIT_NEAR_CACHE": "off"}).near_cache is None
    for wrong in ({"max_entries": 0}, {"max_entrys": 5}, {"max_silence": 0}, 3):
        with pytest.raises(ConfigurationError, match="CACHEKIT_NEAR_CACHE"):
            Settings.from_config({"CACHEKIT_NEAR_CACHE": wrong})


def test_hits_come_from_memory_and_writes_elsewhere_are_seen_once_they_arrive(
    two_hosts: tuple[Any, Any, redis.Redis],
) -> None:
    (app_a, cache_a, price_a), (app_b, cache_b, price_b), raw = two_hosts
    prefix = app_a.config["CACHE_KEY_PREFIX"]
    with app_a.app_context():
        near = near_of(app_a, cache_a)
        until_hit(near, price_a, 1)
        before = near.figures["hits"]
        for _ in range(100):
            assert price_a() == 1
        assert near.figures["hits"] - before == 100  # no round trip
    raw.set(f"{prefix}source", 2)
    with app_b.app_context():
        cachekit.invalidate(cache_b, "prices")  # another host invalidates
    with app_a.app_context():
        eventually(lambda: price_a() == 2, within=0.5)
    raw.set(f"{prefix}source", 3)
    with app_b.app_context():
        price_b.forget()  # another host forgets (the tag is unchanged)
    with app_a.app_context():
        eventually(lambda: price_a() == 3, within=0.5)


def test_this_process_sees_its_own_writes_at_once(
    two_hosts: tuple[Any, Any, redis.Redis],
) -> None:
    (app, cache, price), _, raw = two_hosts
    prefix = app.config["CACHE_KEY_PREFIX"]
    with app.app_context():
        for round_number in range(2, 50):
            assert price() == round_number - 1
            price()  # a near hit
            raw.set(f"{prefix}source", round_number)
            if round_number % 2:
                cachekit.invalidate(cache, "prices")
            else:
                price.forget()
            assert price() == round_number  # no wait: the commit dropped the copies


def test_a_forked_child_starts_empty(two_hosts: tuple[Any, Any, redis.Redis]) -> None:
    (app, cache, price), _, _ = two_hosts
    near = near_of(app, cache)
    with app.app_context():
        until_hit(near, price, 1)
    assert near.size()[0] >= 2
    ctx = mp.get_context("fork")
    answers = ctx.Queue()

    def child() -> None:
        answers.put((near.size(), near._tracking is None))
        with app.app_context():
            until_hit(near, price, 1)
        answers.put((near._tracking is not None and near._pid == os.getpid(),))

    process = ctx.Process(target=child)
    process.start()
    (size, unconnected) = answers.get(timeout=20)
    (own,) = answers.get(timeout=20)
    process.join(10)
    assert size == (0, 0) and unconnected
    assert own  # it opened its own tracking connection
    assert near.size()[0] >= 2  # the parent's is untouched


@pytest.mark.slow  # (a long run: CI's newest leg has it)
def test_memory_stays_within_max_bytes_with_a_million_keys(redis_url: str) -> None:
    max_bytes = 16 * 1024 * 1024
    backend = RedisCache(host=redis.Redis.from_url(redis_url), key_prefix="mem:")
    settings = Settings(near_cache=NearCacheLimits(max_entries=10**7, max_bytes=max_bytes))
    from cachekit.resolve import create

    strategy = create(backend, settings)
    near: NearCache = strategy._near  # type: ignore[attr-defined]
    began = time.monotonic()
    for number in range(1_000_000):
        value = ("cachekit.computed/1", number * 1.5, 0.0, 0.0, (("t", number),))
        raw = b"!" + os.urandom(40)
        with near._lock:
            near._store(f"mem:fn:module.price:{number:08d}", Entry(value, -1, raw))
    print(f"1,000,000 stores in {time.monotonic() - began:.1f} s")
    entries, counted = near.size()
    assert counted <= max_bytes
    assert 10_000 < entries < 1_000_000  # the least recently used went
    seen: set[int] = set()
    used = sys.getsizeof(near._entries) + sum(
        deep_size(key, seen) + deep_size(slot, seen) for key, slot in near._entries.items()
    )
    used += 56 * entries  # the order links of an OrderedDict (a C struct per key)
    print(f"{entries} entries kept, {counted} bytes counted, {used} bytes in memory")
    assert used <= max_bytes, f"{used} bytes in memory for a bound of {max_bytes}"
    assert near._entries.popitem(last=True)[0].endswith("00999999")  # the newest stayed


def deep_size(value: Any, seen: set[int] | None = None) -> int:
    """The memory of ``value`` and of everything it holds (tuples, strings, numbers)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, tuple):
        size += sum(deep_size(item, seen) for item in value)
    return size


def test_max_entries_bounds_the_count(redis_url: str) -> None:
    from cachekit.resolve import create

    backend = RedisCache(host=redis.Redis.from_url(redis_url), key_prefix="count:")
    strategy = create(backend, Settings(near_cache=NearCacheLimits(max_entries=100)))
    near: NearCache = strategy._near  # type: ignore[attr-defined]
    with near._lock:
        for number in range(1000):
            near._store(f"k{number}", Entry(("cachekit.computed/1", 1, 0.0, 0.0, ()), -1, b"x"))
    assert near.size()[0] == 100


def test_a_mutable_value_is_decoded_again_on_each_hit(
    two_hosts: tuple[Any, Any, redis.Redis],
) -> None:
    (app, cache, _), _, _ = two_hosts

    @cachekit.memoize(cache, timeout=0)
    def listing() -> list[int]:
        return [1, 2]

    with app.app_context():
        near = near_of(app, cache)
        until_hit(near, listing, [1, 2])
        listing().append(3)
        got = listing()
        got.append(4)
        assert listing() == [1, 2]
        assert near.figures["hits"] >= 3


def test_sentinel_and_a_cluster_refuse_the_near_cache_at_start_up(
    redis_sentinel: RedisServer, redis_cluster: RedisServer
) -> None:
    """Under Sentinel a switch-over would leave hits stale for seconds; a Cluster needs a
    tracking connection per node: both refused when the app is created, and at first use."""
    from cachekit import CacheKit

    for config, named in (
        (
            {
                "CACHE_TYPE": "RedisSentinelCache",
                "CACHE_REDIS_SENTINELS": [("127.0.0.1", redis_sentinel.port)],
                "CACHE_REDIS_SENTINEL_MASTER": "mymaster",
            },
            "Sentinel",
        ),
        (
            {
                "CACHE_TYPE": "RedisClusterCache",
                "CACHE_REDIS_CLUSTER": f"127.0.0.1:{redis_cluster.port}",
            },
            "Cluster",
        ),
    ):
        app, cache = app_on({**config, "CACHEKIT_NEAR_CACHE": NEAR, "SECRET_KEY": "s"})
        with pytest.raises(ConfigurationError, match=named):
            CacheKit(cache, app)
        with app.app_context(), pytest.raises(ConfigurationError, match=named):
            cachekit.incr(cache, "n")


def test_gevent(redis_url: str) -> None:
    pytest.importorskip("gevent")
    script = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        import gevent, redis, cachekit
        from flask import Flask
        from flask_caching import Cache
        app = Flask("g")
        app.config.update(CACHE_TYPE="RedisCache", CACHE_REDIS_URL={redis_url!r},
                          CACHE_KEY_PREFIX="g-{uuid.uuid4().hex[:6]}:", CACHEKIT_NEAR_CACHE=True)
        cache = Cache(app)
        source = [1]
        @cachekit.memoize(cache, timeout=0, tags=["g"])
        def value():
            return source[0]
        def reader(seen):
            with app.app_context():
                for _ in range(500):
                    seen.append(value())
                    gevent.sleep(0)
        with app.app_context():
            assert value() == 1
        seen = []
        readers = [gevent.spawn(reader, seen) for _ in range(8)]
        gevent.sleep(0.01)
        source[0] = 2
        with app.app_context():
            cachekit.invalidate(cache, "g")
        gevent.joinall(readers, timeout=20)
        with app.app_context():
            assert value() == 2
            from cachekit.resolve import strategy_for
            near = strategy_for(cache)._near
            assert near.figures["hits"] > 1000, near.figures
        print("ok", len(seen))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


#: Rounds of the race; ``make nemesis`` runs 10,000 (``NEAR_RACE_ROUNDS``), as does
#: ``make bench`` (bench/on_near.py).
RACE_ROUNDS = int(os.environ.get("NEAR_RACE_ROUNDS", "3000"))


@pytest.mark.timeout(600)
def test_the_race_finds_no_stale_read_after_an_invalidation_arrived(redis_url: str) -> None:
    outcome = nearrace.run(redis_url, rounds=RACE_ROUNDS, readers=3, kill_every=500)
    print(nearrace.describe(outcome))
    assert outcome.violations == 0, outcome.first_violation
    assert outcome.hits > outcome.reads / 2  # the near cache served most reads
    assert outcome.kill_rounds == RACE_ROUNDS // 500
    # Nearly every invalidation was charged to the write that caused it (one not placed is
    # judged by the older, stricter rule): at most one per reader and kill is not.
    assert outcome.unattributed <= 3 * outcome.kill_rounds, outcome.unattributed


def test_the_race_charges_an_invalidation_to_the_write_that_caused_it() -> None:
    """Issue 24's false stale reads: an older write's invalidation, applied late, after round
    130 began, was taken for round 130's; the reader had read the key again before round 130
    ran (g128) and served it while round 130's own invalidation was on its way."""
    record, tag = "p:r", "p:cachekit:tag:t"
    writes = [
        (128, 1.000, 1.001, tag, 127, 128),
        (129, 1.002, 1.003, record, 129, 128),
        (130, 1.004, 1.010, tag, 129, 130),
    ]
    seen: list[nearrace.Seen] = [(b"t", 127, 126), (b"t", 129, 128), (b"t", 129, 130)]
    arrivals: list[tuple[float, str | None, bytes | None]] = [
        (1.0050, tag, b"t"),  # round 128's (it replaced g126), applied late
        (1.0051, record, b"t"),  # round 129's
        (1.0102, tag, b"t"),  # round 130's
    ]
    figures = {"hits": 2}
    in_flight = [(1.0101, 129, 128)]  # after round 130 returned, before its invalidation
    outcome = nearrace._judge(3, writes, [(in_flight, arrivals, figures, seen, (record, tag))], 0)
    assert (outcome.violations, outcome.in_flight, outcome.unattributed) == (0, 1, 0)
    stale = [(1.0103, 129, 128)]  # after round 130's invalidation was applied
    outcome = nearrace._judge(3, writes, [(stale, arrivals, figures, seen, (record, tag))], 0)
    assert outcome.violations == 1, outcome
