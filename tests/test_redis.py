"""What is specific to RedisCache: stored form, leases, fencing, retries, restarts."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from cachelib import RedisCache
from flask import Flask
from flask_caching import Cache
from flask_caching.backends import RedisClusterCache

import cachekit
import cachekit.redis.strategy
from cachekit.resolve import strategy_for
from cachekit.threadlocks import KEYS, LOCKS, stripe_of

from .conftest import use_settings
from .redisserver import RedisServer, redis_binary, skip_without_tls

FORK = mp.get_context("fork")


@pytest.fixture
def rcache(redis_url: str) -> Any:
    return RedisCache(
        host=redis.Redis.from_url(url=redis_url), key_prefix=f"t{uuid.uuid4().hex[:6]}:"
    )


def raw_client(cache: Any) -> redis.Redis:
    return cache._write_client  # type: ignore[no-any-return]


def lock_key(cache: Any, domain: int, name: str) -> str:
    return strategy_for(cache)._locks.key(stripe_of(domain, name))  # type: ignore[attr-defined,no-any-return]


def test_values_keep_cachelib_form_and_flask_caching_prefix(redis_url: str) -> None:
    app = Flask(__name__)
    cache = Cache(
        app,
        config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": "app1_",
        },
    )
    with app.app_context():
        cache.delete("hits")
        assert cachekit.incr(cache, "hits", 5) == 5
        cachekit.update(cache, "doc", lambda _: {"a": 1})
        client = redis.Redis.from_url(redis_url)
        assert client.get("app1_hits") == b"5"  # plain ASCII: INCRBY and cache.get agree
        assert cache.get("hits") == 5 and cache.get("doc") == {"a": 1}
        assert cache.cache.inc("hits") == 6  # Flask-Caching's own native inc still works
        assert cachekit.incr(cache, "hits") == 7


def test_a_foreign_value_is_an_error_not_a_reset(rcache: Any) -> None:
    raw_client(rcache).set(rcache._get_prefix() + "k", b"!not a pickle")
    with pytest.raises(cachekit.CorruptValue, match="'k'"):
        cachekit.update(rcache, "k", lambda v: v)
    assert raw_client(rcache).get(rcache._get_prefix() + "k") == b"!not a pickle"


def test_a_live_holder_is_not_overtaken_when_its_lease_runs_out(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, lease=0.6)
    prefix = f"lease-{uuid.uuid4().hex[:6]}:"
    holder = RedisCache(host=redis.Redis.from_url(redis_url), key_prefix=prefix)
    with cachekit.lock(holder, "job"):
        time.sleep(0.1)
        out = FORK.Queue()
        proc = FORK.Process(target=try_lock, args=(redis_url, prefix, 2.0, out))
        proc.start()
        assert out.get(timeout=20) == "timeout"  # 2 s = more than three leases
        proc.join(10)
    out = FORK.Queue()
    proc = FORK.Process(target=try_lock, args=(redis_url, prefix, 2.0, out))
    proc.start()
    assert out.get(timeout=20) == "taken"
    proc.join(10)


def try_lock(url: str, prefix: str, timeout: float, out: Any) -> None:
    cache = RedisCache(host=redis.Redis.from_url(url), key_prefix=prefix)
    try:
        with cachekit.lock(cache, "job", timeout=timeout):
            out.put("taken")
    except cachekit.LockTimeout:
        out.put("timeout")


def test_a_holder_whose_lease_was_taken_is_told_and_frees_nothing(rcache: Any) -> None:
    key = lock_key(rcache, LOCKS, "job")
    client = raw_client(rcache)
    someone_else = f"{int(time.time() * 1000) + 60000} other.1.1.abc"
    with pytest.raises(cachekit.LeaseLost, match="'job'"):
        with cachekit.lock(rcache, "job") as handle:
            assert handle.is_held()
            client.set(key, someone_else)  # as if our lease ran out and another took it
            assert not handle.is_held()
            with pytest.raises(cachekit.LeaseLost):
                handle.check()
    assert client.get(key) == someone_else.encode()


def test_a_transaction_whose_lease_was_lost_writes_nothing(rcache: Any) -> None:
    client = raw_client(rcache)
    with pytest.raises(cachekit.LeaseLost):
        with cachekit.transaction(rcache, "a", "b") as txn:
            txn["a"], txn["b"] = 1, 2
            client.set(lock_key(rcache, KEYS, "b"), "someone-else")
    assert rcache.get("a") is None and rcache.get("b") is None


def test_update_gives_up_after_bounded_attempts(
    rcache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cachekit.redis.strategy, "MAX_ATTEMPTS", 3)
    rcache.set("k", 0, timeout=0)
    calls = []

    def interfered(value: int) -> int:
        calls.append(value)
        rcache.set("k", value + 100, timeout=0)  # a plain writer changes it every time
        return value + 1

    with pytest.raises(cachekit.ConcurrentUpdateError, match="3 attempts") as raised:
        cachekit.update(rcache, "k", interfered)
    assert raised.value.attempts == 3 and len(calls) == 3
    assert rcache.get("k") == 300  # only the interfering writes


def test_update_waits_for_a_transaction_on_its_key(rcache: Any) -> None:
    entered, results = threading.Event(), []

    def transact() -> None:
        with cachekit.transaction(rcache, "n") as txn:
            entered.set()
            time.sleep(0.3)
            txn["n"] = 100

    thread = threading.Thread(target=transact)
    thread.start()
    assert entered.wait(5)
    results.append(cachekit.update(rcache, "n", lambda n: n + 1, 0))
    thread.join()
    assert results == [101]


def test_a_transaction_never_overwrites_a_concurrent_native_incr(rcache: Any) -> None:
    """incr is a bare INCRBY that takes no lease: the commit sees the change and writes nothing."""
    with pytest.raises(cachekit.ConcurrentUpdateError, match="'n'"):
        with cachekit.transaction(rcache, "n", "log") as txn:
            txn["n"] = txn.get("n", 0) + 1
            txn["log"] = ["n was bumped"]
            threading.Thread(target=cachekit.incr, args=(rcache, "n", 5)).start()
            time.sleep(0.3)
    assert rcache.get("n") == 5
    assert rcache.get("log") is None


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, durable=True, binary=redis_binary())
    server.start()
    yield server
    server.stop()


def test_a_redis_restart_is_a_clear_error_then_service_resumes(durable_redis: RedisServer) -> None:
    cache = RedisCache(
        host=redis.Redis.from_url(durable_redis.url, socket_timeout=2), key_prefix="r:"
    )
    assert cachekit.incr(cache, "n") == 1
    with cachekit.transaction(cache, "doc") as txn:
        txn["doc"] = {"items": [1]}
    durable_redis.stop()
    for call in (
        lambda: cachekit.incr(cache, "n"),
        lambda: cachekit.update(cache, "doc", lambda d: d),
        lambda: cachekit.transaction(cache, "doc").__enter__(),
        lambda: cachekit.lock(cache, "x").__enter__(),
    ):
        with pytest.raises(cachekit.StorageError, match="unreachable"):
            call()
    durable_redis.start()
    assert cachekit.incr(cache, "n") == 2
    assert cachekit.update(cache, "doc", lambda d: {"items": d["items"] + [2]}) == {"items": [1, 2]}


def appended(items: list[Any], item: Any) -> list[Any]:
    return items + [item]


def test_updates_that_lose_races_lease_the_key_and_stay_exact(
    rcache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one optimistic try, every lost race goes through the leased path."""
    monkeypatch.setattr(cachekit.redis.strategy, "OPTIMISTIC_ATTEMPTS", 1)
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait(10)
        for j in range(40):
            cachekit.update(rcache, "items", partial(appended, item=(i, j)), [])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(rcache.get("items")) == [(i, j) for i in range(8) for j in range(40)]


def test_a_cluster_transaction_needs_its_keys_in_one_slot(redis_cluster: RedisServer) -> None:
    cache = RedisClusterCache(cluster=f"127.0.0.1:{redis_cluster.port}", key_prefix="slots:")
    with pytest.raises(cachekit.InvalidArgument, match="hash slot"):
        with cachekit.transaction(cache, "alice", "bob"):
            pytest.fail("a transaction across hash slots cannot commit atomically")
    with cachekit.transaction(cache, "{pair}alice", "{pair}bob") as txn:
        txn["{pair}alice"], txn["{pair}bob"] = 1, 2
    assert (cache.get("{pair}alice"), cache.get("{pair}bob")) == (1, 2)
    assert cachekit.incr(cache, "alice") == 1 and cachekit.incr(cache, "bob") == 1


def test_a_password_is_honoured_and_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    server = RedisServer(tmp_path, binary=redis_binary(), password=secret)
    server.start()
    try:
        app = Flask(__name__)
        cache = Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": server.url})
        with app.app_context():
            assert cachekit.incr(cache, "n") == 1
            with cachekit.transaction(cache, "doc") as txn, cachekit.lock(cache, "x"):
                txn["doc"] = {"by": "password"}
            assert cache.get("doc") == {"by": "password"}
        wrong = RedisCache(host=redis.Redis.from_url(server.url.replace(secret, "wrong-" + secret)))
        with pytest.raises(cachekit.StorageError) as raised:
            cachekit.incr(wrong, "n")
        assert secret not in str(raised.value) and secret not in caplog.text
    finally:
        server.stop()


def test_tls_connections_work(tmp_path: Path) -> None:
    skip_without_tls()
    server = RedisServer(tmp_path, binary=redis_binary(), tls=True)
    server.start()
    try:
        assert server.url.startswith("rediss://")
        client = redis.Redis.from_url(server.url, **server.client_options())
        cache = RedisCache(host=client, key_prefix="tls:")
        assert [cachekit.incr(cache, "n") for _ in range(3)] == [1, 2, 3]
        assert cachekit.update(cache, "doc", lambda d: {**d, "n": 1}, {}) == {"n": 1}
        with cachekit.transaction(cache, "doc") as txn:
            txn["doc"]["n"] += 1
        assert cache.get("doc") == {"n": 2}
        client.close()
    finally:
        server.stop()


def test_an_idle_holder_is_not_taken_for_dead(
    redis_server: RedisServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis closes idle clients after `timeout`; the holder's presence must survive it."""
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("timeout", 1)
    try:
        prefix = f"idle-{uuid.uuid4().hex[:6]}:"
        holder = RedisCache(host=redis.Redis.from_url(redis_url), key_prefix=prefix)
        with cachekit.lock(holder, "job"):
            time.sleep(2.5)  # longer than the idle timeout: the server has swept idle clients
            out = FORK.Queue()
            proc = FORK.Process(target=try_lock, args=(redis_url, prefix, 1.5, out))
            proc.start()
            assert out.get(timeout=20) == "timeout"
            proc.join(10)
    finally:
        admin.config_set("timeout", 0)
        admin.close()
