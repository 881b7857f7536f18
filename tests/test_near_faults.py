"""The near cache under faults: none of them may leave a replaced value served.

Each case: a process with the near cache serves a memoized value from memory;
the fault strikes; another host replaces the value; the process must not serve
the old one past the bound the module states (at once when the tracking
connection is closed; ``max_silence`` when it goes silent).

- ``CLIENT KILL`` of the tracking connection;
- a Redis restart (the process's connections all broken);
- ``FLUSHALL`` (one invalidation for every key);
- a partition of the tracking connection only: its bytes dropped both ways,
  no reset, no close, while the data connections still answer.

Not here (left undone): a Sentinel failover and a Cluster slot migration (the
near cache refuses Cluster).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask_caching import Cache

import cachekit
from cachekit.redis.near import NearCache
from cachekit.resolve import strategy_for

from .netfaults import BlackholeProxy
from .redisserver import RedisServer, redis_binary

pytestmark = pytest.mark.timeout(60)

SILENCE = 0.25


class TrackingBlackhole(BlackholeProxy):
    """A proxy that can swallow the bytes of the tracking connections alone.

    A connection is a tracking one once its client has sent ``SUBSCRIBE``;
    while ``swallowing`` is set, bytes of those connections (both ways) are
    dropped, and every other connection is forwarded as usual.
    """

    def __init__(self, port: int) -> None:
        self.tracking: set[int] = set()
        super().__init__(port)

    def cut_off(self, pair: int, from_client: bool, data: bytes) -> bool:
        if from_client and b"SUBSCRIBE" in data:
            self.tracking.add(pair)
        return self.swallowing.is_set() and pair in self.tracking


def host(url: str, prefix: str, source: redis.Redis) -> tuple[Flask, Cache, Any]:
    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="RedisCache",
        CACHE_REDIS_URL=url,
        CACHE_KEY_PREFIX=prefix,
        CACHE_DEFAULT_TIMEOUT=300,
        CACHEKIT_NEAR_CACHE={"max_silence": SILENCE},
        CACHEKIT_REDIS_TIMEOUT=1.0,
        CACHE_OPTIONS={"socket_timeout": 2},
    )
    cache = Cache(app)

    @cachekit.memoize(cache, timeout=0, tags=["v"], fail_open=False)
    def value() -> int:
        return int(source.get(f"{prefix}source") or 0)

    return app, cache, value


def near_of(app: Flask, cache: Cache) -> NearCache:
    with app.app_context():
        near = strategy_for(cache)._near  # type: ignore[attr-defined]
    assert isinstance(near, NearCache)
    return near


def served_from_memory(app: Flask, cache: Cache, value: Any, expected: int) -> None:
    """Make sure the next call is a near hit of ``expected``."""
    near = near_of(app, cache)
    deadline = time.monotonic() + 5
    with app.app_context():
        while True:
            before = near.figures["hits"]
            assert value() == expected
            if near.figures["hits"] > before:
                return
            assert time.monotonic() < deadline, f"never served from memory: {near.figures}"
            time.sleep(0.01)


def replace(url: str, prefix: str, source: redis.Redis, new: int) -> None:
    """Another host replaces the value: the source changes and the tag is invalidated."""
    source.set(f"{prefix}source", new)
    app = Flask("other")
    app.config.update(CACHE_TYPE="RedisCache", CACHE_REDIS_URL=url, CACHE_KEY_PREFIX=prefix)
    cache = Cache(app)
    with app.app_context():
        cachekit.invalidate(cache, "v")


@pytest.fixture
def prefix() -> str:
    return f"nf-{uuid.uuid4().hex[:8]}:"


def test_client_kill_of_the_tracking_connection(redis_url: str, prefix: str) -> None:
    source = redis.Redis.from_url(redis_url)
    app, cache, value = host(redis_url, prefix, source)
    source.set(f"{prefix}source", 1)
    served_from_memory(app, cache, value, 1)
    near = near_of(app, cache)
    killed = source.client_kill_filter(_type="pubsub")
    assert killed >= 1
    # Invalidations sent now would be lost: the value is replaced right after the kill.
    replace(redis_url, prefix, source, 2)
    with app.app_context():
        assert value() == 2  # the kill was seen before the hit: never the old value
    assert near.figures["resets"] >= 1
    served_from_memory(app, cache, value, 2)  # a new tracking connection, hits again


def reading_connections(source: redis.Redis, near: NearCache) -> list[int]:
    """The ids of the connections that read for ``near`` with tracking on (its tracking
    connection's name, ``-r``)."""
    tracking = near._tracking
    assert tracking is not None
    return [
        int(client["id"])
        for client in source.client_list()
        if client.get("name") == tracking.reader_name.decode()
        and int(client.get("redir", -1)) == tracking.id
    ]


@pytest.mark.parametrize("how", ["client kill", "reconnected", "idle timeout"])
def test_the_connection_that_read_a_value_closed(redis_url: str, prefix: str, how: str) -> None:
    """Redis forgets what a connection read when it closes: no invalidation will ever come.

    Found here: the near cache kept serving the old value for good after the
    connection it had read the value on was closed (``CLIENT KILL`` of it, or
    the server's idle ``timeout``), while its tracking connection was fine.
    """
    source = redis.Redis.from_url(redis_url)
    app, cache, value = host(redis_url, prefix, source)
    source.set(f"{prefix}source", 1)
    served_from_memory(app, cache, value, 1)
    near = near_of(app, cache)
    readers = reading_connections(source, near)
    assert readers, "no connection reads with tracking on"
    resets = near.figures["resets"]
    if how == "client kill":
        for reader in readers:
            assert source.client_kill_filter(_id=str(reader)) == 1
    elif how == "reconnected":  # redis-py opens a closed connection again at its next command
        tracking = near._tracking
        assert tracking is not None
        tracking.reader.disconnect()
    else:  # the server closes clients idle for a second (a reader kept busy is not closed)
        previous = str(source.config_get("timeout")["timeout"])
        source.config_set("timeout", 1)
        try:
            time.sleep(3)
        finally:
            source.config_set("timeout", previous)
    replace(redis_url, prefix, source, 2)
    time.sleep(2 * SILENCE)
    with app.app_context():
        assert value() == 2
    if how != "idle timeout":
        assert near.figures["resets"] > resets  # the loss was seen, not missed
    served_from_memory(app, cache, value, 2)
    replace(redis_url, prefix, source, 3)  # and invalidations work again after it
    time.sleep(2 * SILENCE)
    with app.app_context():
        assert value() == 3


def test_flushall(redis_url: str, prefix: str) -> None:
    source = redis.Redis.from_url(redis_url)
    app, cache, value = host(redis_url, prefix, source)
    source.set(f"{prefix}source", 1)
    served_from_memory(app, cache, value, 1)
    source.flushall()
    source.set(f"{prefix}source", 5)
    time.sleep(0.01)  # (the flush's invalidation travels like any other)
    with app.app_context():
        assert value() == 5
    assert near_of(app, cache).figures["flushes"] >= 1


def test_a_redis_restart(tmp_path: Path, prefix: str) -> None:
    server = RedisServer(tmp_path, binary=redis_binary())
    server.start()
    try:
        source = redis.Redis.from_url(server.url)
        app, cache, value = host(server.url, prefix, source)
        source.set(f"{prefix}source", 1)
        served_from_memory(app, cache, value, 1)
        near = near_of(app, cache)
        server.stop()
        server.start()  # empty: no data file kept
        source.set(f"{prefix}source", 7)
        with app.app_context():
            # The tracking connection's close is seen before any hit. The data
            # connection was cut too; a read may fail once, then Redis is read.
            deadline = time.monotonic() + 5
            while True:
                try:
                    assert value() == 7
                    break
                except cachekit.StorageError:
                    assert time.monotonic() < deadline
        assert near.figures["resets"] >= 1
        served_from_memory(app, cache, value, 7)
    finally:
        server.stop()


@pytest.fixture
def blackhole(redis_server: RedisServer) -> Iterator[TrackingBlackhole]:
    proxy = TrackingBlackhole(redis_server.port)
    yield proxy
    proxy.swallowing.clear()
    proxy.close()


def test_a_partition_of_the_tracking_connection_only(
    blackhole: TrackingBlackhole, redis_url: str, prefix: str
) -> None:
    url = f"redis://127.0.0.1:{blackhole.port}/0"
    source = redis.Redis.from_url(redis_url)
    app, cache, value = host(url, prefix, source)
    source.set(f"{prefix}source", 1)
    served_from_memory(app, cache, value, 1)
    near = near_of(app, cache)
    blackhole.swallowing.set()
    replace(redis_url, prefix, source, 2)  # its invalidation is dropped
    written = time.monotonic()
    stale_until = written
    with app.app_context():
        while time.monotonic() - written < 1.0:
            got = value()  # the data connections still answer
            if got == 1:
                stale_until = time.monotonic()
            else:
                assert got == 2
            time.sleep(0.001)
    assert blackhole.swallowed > 0, "the partition never bit"
    # Served old for at most max_silence (plus a heartbeat's scheduling), never after.
    assert stale_until - written <= SILENCE + 0.1, stale_until - written
    assert near.figures["resets"] >= 1
    blackhole.swallowing.clear()
    served_from_memory(app, cache, value, 2)  # healed: a new tracking connection
