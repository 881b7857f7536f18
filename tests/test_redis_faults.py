"""Redis under the faults production brings: killed connections, paused holders, eviction,
restarts with and without persistence, a server that refuses or never answers.

Each test starts its own redis-server when it changes the server's configuration, and
asserts exact outcomes: who held the lock when, which fencing token each grant got.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cachelib import RedisCache
from flask import Flask
from flask_caching import Cache

import cachekit
import cachekit.redis.strategy
from cachekit.doctor import PROBLEM, WARNING, diagnose, diagnose_backend
from cachekit.redis.leases import RedisLeases
from cachekit.resolve import strategy_for
from cachekit.threadlocks import KEYS, LOCKS

from .conftest import use_settings
from .netfaults import BlackholeProxy
from .redisserver import RedisServer, free_port, redis_binary

FORK = mp.get_context("fork")
pytestmark = pytest.mark.timeout(120)


def open_cache(url: str, prefix: str) -> Any:
    return RedisCache(host=redis.Redis.from_url(url), key_prefix=prefix)


@pytest.fixture
def own_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A redis-server of this test's own; ``@pytest.mark.redis_args(...)`` adds arguments."""
    marker = request.node.get_closest_marker("redis_args")
    extra = tuple(marker.args) if marker else ()
    durable = bool(marker and marker.kwargs.get("durable"))
    server = RedisServer(tmp_path, binary=redis_binary(), extra=extra, durable=durable)
    server.start()
    yield server
    server.stop()


def hold(url: str, prefix: str, seconds: float, out: Any) -> None:
    """Hold lock "L" for ``seconds``; report entry (with the token), then how it ended."""
    cache = open_cache(url, prefix)
    try:
        with cachekit.lock(cache, "L", timeout=30) as handle:
            out.put(("entered", handle.token, time.time()))
            time.sleep(seconds)
            out.put(("held at the end", handle.is_held(), time.time()))
    except cachekit.LeaseLost:
        out.put(("lost", None, time.time()))
        return
    out.put(("left", None, time.time()))


def try_lock(url: str, prefix: str, wait: float, out: Any) -> None:
    cache = open_cache(url, prefix)
    try:
        with cachekit.lock(cache, "L", timeout=wait) as handle:
            out.put(("entered", handle.token, time.time()))
        out.put(("left", None, time.time()))
    except cachekit.LockTimeout:
        out.put(("timeout", None, time.time()))
    except cachekit.CachekitError as error:  # reported, never a silent death of the waiter
        out.put(("error", repr(error), time.time()))


def start(target: Any, *args: Any) -> tuple[Any, Any]:
    out = FORK.Queue()
    proc = FORK.Process(target=target, args=(*args, out))
    proc.start()
    return proc, out


def test_killed_connections_do_not_let_a_second_holder_in(
    redis_server: RedisServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLIENT KILL of every client (a proxy idle-kill, a blip, a failover) is no proof of death."""
    use_settings(monkeypatch, lease=0.6)  # renewed every 0.2 s: through the kills
    prefix = f"kill-{uuid.uuid4().hex[:6]}:"
    admin = redis.Redis.from_url(redis_url)
    holder, held = start(hold, redis_url, prefix, 3.0)
    assert held.get(timeout=20)[0] == "entered"
    waiter, waited = start(try_lock, redis_url, prefix, 2.0)
    for _ in range(10):  # kill every connection, again and again, while both run
        admin.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.2)
    assert waited.get(timeout=20)[0] == "timeout"
    assert held.get(timeout=20)[:2] == ("held at the end", True)
    assert held.get(timeout=20)[0] == "left"
    for proc in (holder, waiter):
        proc.join(10)


def test_a_paused_holder_is_overtaken_and_told_with_a_lower_token(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, lease=0.5)
    prefix = f"pause-{uuid.uuid4().hex[:6]}:"
    holder, held = start(hold, redis_url, prefix, 1.0)
    _, first_token, _ = held.get(timeout=20)
    os.kill(holder.pid, signal.SIGSTOP)  # a GC or VM pause, longer than the lease
    try:
        waiter, waited = start(try_lock, redis_url, prefix, 10.0)
        kind, second_token, entered_at = waited.get(timeout=20)
        assert kind == "entered"
        assert second_token > first_token  # fencing: the newer holder's token is larger
        assert waited.get(timeout=20)[0] == "left"
        waiter.join(10)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    assert held.get(timeout=20)[:2] == ("held at the end", False)
    assert held.get(timeout=20)[0] == "lost"  # LeaseLost on leaving the block
    holder.join(10)


#: A lock holder in a container (pid 1 of a pid namespace of its own): holds lock "L" with a
#: lease of ``argv[3]`` s until its input says so, renewing it; prints its token.
CONTAINER_HOLDER = """
import dataclasses, sys
import redis
import cachekit, cachekit.settings
from cachelib import RedisCache
settings = cachekit.settings
settings.DEFAULTS = dataclasses.replace(settings.DEFAULTS, lease=float(sys.argv[3]))
cache = RedisCache(host=redis.Redis.from_url(sys.argv[1]), key_prefix=sys.argv[2])
with cachekit.lock(cache, "L", timeout=30) as handle:
    print("held", handle.token, flush=True)
    sys.stdin.readline()
print("left", flush=True)
"""


def test_a_holder_in_another_container_is_waited_for_not_judged_dead(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder's death is proven through /proc only on its own machine and pid namespace.
    A holder in a container is pid 1 there; on the host pid 1 is init, started at another
    time: judged by pid alone it would look like a pid reused, its live lease taken. It is
    waited for: while alive (renewing) never overtaken; killed, overtaken only once its
    lease has run out, with a larger fencing token."""
    from .pidnamespaces import in_a_container, inner_pid

    use_settings(monkeypatch, lease=1.5)
    prefix = f"container-{uuid.uuid4().hex[:6]}:"
    holder = in_a_container(CONTAINER_HOLDER, redis_url, prefix, "1.5")
    try:
        assert holder.stdout is not None
        said = holder.stdout.readline().split()
        assert said[0] == "held", said
        cache = open_cache(redis_url, prefix)
        with pytest.raises(cachekit.LockTimeout):  # alive, renewing past its lease: waited for
            with cachekit.lock(cache, "L", timeout=4.0):
                pass
        leases = strategy_for(cache)._locks
        assert isinstance(leases, RedisLeases)
        key = leases.key(leases.stripe(LOCKS, "L"))
        admin = redis.Redis.from_url(redis_url)
        os.kill(inner_pid(holder), signal.SIGKILL)  # the container's pid 1: all of it dies
        killed = time.monotonic()
        lease = admin.get(key)
        assert isinstance(lease, bytes)
        expiry, token = lease.split(b" ", 1)  # "<expiry, server ms> <token>"
        seconds, micros = admin.time()
        left = (int(expiry) - (seconds * 1000 + micros // 1000)) / 1000
        assert token.decode().split(".")[1] == "1" and left > 0  # pid 1's lease, still on
        with cachekit.lock(cache, "L", timeout=30) as handle:
            granted = time.monotonic()
            assert handle.token > int(said[1])
        assert granted >= killed + left - 0.05  # not before its lease ran out: no proof
        assert granted <= killed + 1.5 + 5  # and then soon (generous on a busy machine)
    finally:
        holder.kill()
        holder.communicate(timeout=30)


def test_fencing_tokens_increase_across_processes_and_a_lost_counter(redis_url: str) -> None:
    prefix = f"fence-{uuid.uuid4().hex[:6]}:"
    cache = open_cache(redis_url, prefix)
    tokens = []
    for _ in range(3):
        proc, out = start(try_lock, redis_url, prefix, 5.0)
        tokens.append(out.get(timeout=20)[1])
        proc.join(10)
    with cachekit.lock(cache, "L") as handle:
        tokens.append(handle.token)
    redis.Redis.from_url(redis_url).delete(
        *redis.Redis.from_url(redis_url).keys("cachekit:fence:*")
    )
    with cachekit.lock(cache, "L") as handle:  # the counter was lost: the clock keeps it growing
        tokens.append(handle.token)
    assert tokens == sorted(set(tokens)) and len(tokens) == 5


@pytest.mark.redis_args("--maxmemory", "20mb", "--maxmemory-policy", "allkeys-lru")
def test_an_allkeys_policy_is_refused_at_start_up_first_use_and_by_doctor(
    own_server: RedisServer,
) -> None:
    cache = open_cache(own_server.url, "evict:")
    with pytest.raises(cachekit.ConfigurationError, match="maxmemory-policy allkeys-lru"):
        cachekit.incr(cache, "n")
    assert cache.get("n") is None
    app = Flask(__name__)
    Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": own_server.url})
    findings = diagnose(app)
    assert findings[0].level == PROBLEM and "maxmemory-policy" in findings[0].what
    app = Flask(__name__)
    shared = Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": own_server.url})
    with pytest.raises(cachekit.ConfigurationError, match="maxmemory-policy"):
        cachekit.CacheKit(shared, app)  # at start-up: the app is never served


@pytest.mark.parametrize(
    "policy", ["volatile-lru", "volatile-lfu", "volatile-ttl", "volatile-random"]
)
def test_volatile_eviction_spares_state_and_leases(
    tmp_path: Path, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory pressure evicts only keys with a TTL: not counters, not a held lease."""
    server = RedisServer(
        tmp_path,
        binary=redis_binary(),
        extra=("--maxmemory", "8mb", "--maxmemory-policy", policy),
    )
    server.start()
    try:
        use_settings(monkeypatch, lease=0.6)
        cache = open_cache(server.url, "v:")
        for _ in range(100):
            cachekit.incr(cache, "counter")
        holder, held = start(hold, server.url, "v:", 3.0)
        assert held.get(timeout=20)[0] == "entered"
        admin = redis.Redis.from_url(server.url)
        junk = b"x" * 20000
        i = 0
        while int(admin.info("stats")["evicted_keys"]) < 200:  # well past full, many evictions
            cache.set(f"junk-{i}", junk, timeout=300)
            i += 1
            assert i < 20000, "the server never evicted"
        waiter, waited = start(try_lock, server.url, "v:", 1.0)
        assert waited.get(timeout=20)[0] == "timeout"  # the lease survived the evictions
        assert cachekit.incr(cache, "counter") == 101
        assert held.get(timeout=20)[:2] == ("held at the end", True)
        assert held.get(timeout=20)[0] == "left"
        for proc in (holder, waiter):
            proc.join(10)
    finally:
        server.stop()


@pytest.mark.redis_args("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
def test_a_full_noeviction_server_fails_writes_clearly_and_keeps_values(
    own_server: RedisServer,
) -> None:
    cache = open_cache(own_server.url, "full:")
    assert cachekit.incr(cache, "n") == 1
    client = redis.Redis.from_url(own_server.url)
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        for i in range(100000):
            client.set(f"fill-{i}", b"x" * 500)
    landed = refused = 0
    for i in range(20):  # refused while memory is over the limit: each outcome is known
        try:
            cachekit.incr(cache, "n")
            landed += 1
        except cachekit.StorageError as error:
            assert "out of memory" in str(error) and "nothing was written" in str(error)
            refused += 1
        with pytest.raises(cachekit.StorageError, match="out of memory"):
            cachekit.update(cache, f"doc-{i}", lambda d: {**d, "big": "x" * 100000}, {})
    assert refused > 0
    assert cache.get("n") == 1 + landed


@pytest.mark.redis_args("--save", "")
def test_doctor_warns_when_redis_persists_nothing(own_server: RedisServer) -> None:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "doctor"  # (values signed: no warning about that)
    Cache(
        app,
        config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_HOST": "127.0.0.1",  # (Flask-Caching 2.3 drops CACHE_OPTIONS with a URL)
            "CACHE_REDIS_PORT": own_server.port,
            "CACHE_DEFAULT_TIMEOUT": 0,
            "CACHE_OPTIONS": {"socket_timeout": 5},
        },
    )
    findings = diagnose(app)
    assert [f.level for f in findings] == [WARNING]
    assert "persists nothing" in findings[0].what


def restart_case(durable: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Hold a lock across a restart of the server; return how the holder's block ended."""
    use_settings(monkeypatch, lease=1.0)
    server = RedisServer(tmp_path, binary=redis_binary(), durable=durable)
    server.start()
    try:
        cache = open_cache(server.url, "r:")
        assert cachekit.incr(cache, "n") == 1
        holder, held = start(hold, server.url, "r:", 3.0)
        _, token, _ = held.get(timeout=20)
        server.stop()
        server.start()
        waiter, waited = start(try_lock, server.url, "r:", 1.5)
        kind, second, _ = waited.get(timeout=20)
        if durable:
            assert kind == "timeout"  # the lease was kept: exclusion holds across the restart
            assert cachekit.incr(cache, "n") == 2
        else:
            assert kind == "entered" and second > token  # the lease was erased: told below
            assert cachekit.incr(cache, "n") == 1  # (and doctor warns about such a server)
        ending = held.get(timeout=20)
        if ending[0] == "held at the end":
            ending = held.get(timeout=20)
        for proc in (holder, waiter):
            proc.join(10)
        return str(ending[0])
    finally:
        server.stop()


def test_a_restart_with_persistence_keeps_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert restart_case(True, tmp_path, monkeypatch) == "left"


def test_a_restart_without_persistence_tells_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert restart_case(False, tmp_path, monkeypatch) == "lost"


def test_a_refused_connection_fails_within_a_second() -> None:
    cache = RedisCache(host=redis.Redis(port=free_port()), key_prefix="gone:")
    for call in (
        lambda: cachekit.incr(cache, "n"),
        lambda: cachekit.update(cache, "d", lambda d: d),
        lambda: cachekit.lock(cache, "x").__enter__(),
    ):
        began = time.monotonic()
        with pytest.raises(cachekit.StorageError, match="unreachable"):
            call()
        assert time.monotonic() - began < 1


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server, a black hole)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_fails_within_the_timeout(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, redis_timeout=0.5)
    cache = RedisCache(host=redis.Redis(port=silent_server), key_prefix="silent:")
    began = time.monotonic()
    with pytest.raises(cachekit.StorageError, match="no answer in time"):
        cachekit.incr(cache, "n")
    assert time.monotonic() - began < 1.5


def test_doctor_is_quick_when_redis_never_answers(tmp_path: Path, silent_server: int) -> None:
    """The command a user runs when things are wrong: one bounded wait, not one per check."""
    from .test_resources_and_cli import flask

    env = {"FLASK_CACHE_TYPE": "RedisCache",
           "FLASK_CACHE_REDIS_URL": f"redis://127.0.0.1:{silent_server}/0"}  # fmt: skip
    began = time.monotonic()
    result = flask(tmp_path, "cachekit", "doctor", env=env)
    elapsed = time.monotonic() - began
    assert result.returncode == 1 and "Redis does not answer" in result.stdout
    assert elapsed < 8, elapsed  # CACHEKIT_CHECK_TIMEOUT (2 s) and starting Python


def test_the_default_wait_for_a_silent_server_is_bounded(silent_server: int) -> None:
    app = Flask(__name__)
    cache = Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_PORT": silent_server})
    began = time.monotonic()
    with app.app_context(), pytest.raises(cachekit.StorageError):
        cachekit.incr(cache, "n")
    assert time.monotonic() - began < 5.5  # CACHEKIT_REDIS_TIMEOUT's default, 5 s


def test_the_timeout_setting_comes_from_the_app_config(silent_server: int) -> None:
    app = Flask(__name__)
    app.config["CACHEKIT_REDIS_TIMEOUT"] = 0.3
    cache = Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_PORT": silent_server})
    began = time.monotonic()
    with app.app_context(), pytest.raises(cachekit.StorageError):
        cachekit.incr(cache, "n")
    assert time.monotonic() - began < 1.2


def test_a_paused_server_mid_operation_is_a_clear_error_then_service_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, redis_timeout=0.5)
    server = RedisServer(tmp_path, binary=redis_binary())
    server.start()
    try:
        cache = open_cache(server.url, "p:")
        assert cachekit.incr(cache, "n") == 1
        server.pause()
        try:
            with pytest.raises(cachekit.StorageError, match="may or may not"):
                cachekit.incr(cache, "n")
            # A lease grant in doubt is released in the background, not on the caller's time.
            began = time.monotonic()
            with pytest.raises(cachekit.StorageError, match="no answer in time"):
                with cachekit.lock(cache, "L"):
                    pytest.fail("a lock on a server that does not answer")
            assert time.monotonic() - began < 0.9  # one timeout, not two
        finally:
            server.resume()
        assert cachekit.incr(cache, "n") in (2, 3)  # the write in doubt may have landed
    finally:
        server.stop()


def test_the_renewer_survives_an_unexpected_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, lease=0.6)
    original = RedisLeases._renew_once
    failures = iter([True])  # one round fails; a dead renewer would let the lease run out

    def flaky(self: RedisLeases) -> bool:
        if next(failures, False):
            raise RuntimeError("not a Redis error")
        return original(self)

    monkeypatch.setattr(RedisLeases, "_renew_once", flaky)
    prefix = f"renew-{uuid.uuid4().hex[:6]}:"
    cache = open_cache(redis_url, prefix)
    with cachekit.lock(cache, "L") as handle:
        time.sleep(0.3)  # the first renewal failed
        waiter, waited = start(try_lock, redis_url, prefix, 1.5)
        assert waited.get(timeout=20)[0] == "timeout"
        waiter.join(10)
        assert handle.is_held()


def test_doctor_reads_the_live_backend_however_configured(
    tmp_path: Path, silent_server: int
) -> None:
    """Configuration passed to Cache() or init_app(), not app.config: doctor still sees it."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "doctor"  # (values signed: no warning about that)
    Cache(app, config={"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 0})
    assert [f.level for f in diagnose(app)] == [PROBLEM]
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "doctor"  # (values signed: no warning about that)
    Cache().init_app(
        app,
        config={
            "CACHE_TYPE": "FileSystemCache",
            "CACHE_DIR": str(tmp_path / "c"),
            "CACHE_THRESHOLD": 0,
            "CACHE_DEFAULT_TIMEOUT": 0,
        },
    )
    os.chmod(tmp_path / "c", 0o700)
    assert diagnose(app) == []
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "doctor"  # (values signed: no warning about that)
    Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_PORT": silent_server})
    began = time.monotonic()
    findings = diagnose(app)
    assert time.monotonic() - began < 4
    assert findings[0].level == PROBLEM and "does not answer" in findings[0].what


def test_statistics_stay_valid_json_after_a_very_long_wait(redis_url: str) -> None:
    cache = open_cache(redis_url, f"stats-{uuid.uuid4().hex[:6]}:")
    strategy = strategy_for(cache)
    strategy.stats.waited(3600.0)
    figures = cachekit.statistics(cache, merged=False)
    json.dumps(figures, allow_nan=False)
    assert figures["lock_waits_over_10s"] == 1 and figures["lock_wait_p99_at_most_ms"] is None


def test_a_holder_cut_off_for_part_of_its_lease_keeps_it(
    redis_server: RedisServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packets dropped for 1.6 s of a 3 s lease: the renewal lost is tried again in time."""
    use_settings(monkeypatch, lease=3.0, redis_timeout=1.5)
    proxy = BlackholeProxy(redis_server.port)
    prefix = f"cut-{uuid.uuid4().hex[:6]}:"
    holder = open_cache(f"redis://127.0.0.1:{proxy.port}/0", prefix)
    try:
        with cachekit.lock(holder, "L") as handle:
            time.sleep(0.9)
            proxy.swallowing.set()  # the renewal due at 1 s is lost
            waiter, waited = start(try_lock, redis_url, prefix, 3.5)
            time.sleep(1.6)
            proxy.swallowing.clear()
            assert waited.get(timeout=20)[0] == "timeout"
            waiter.join(10)
            assert handle.is_held()
    finally:
        proxy.close()


def test_an_update_whose_lease_is_taken_over_stops_at_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cachekit.redis.strategy, "OPTIMISTIC_ATTEMPTS", 1)
    cache = open_cache(redis_url, f"spin-{uuid.uuid4().hex[:6]}:")
    locks: Any = strategy_for(cache)._locks
    lease_key = locks.key(locks.stripe(KEYS, "k"))
    client = redis.Redis.from_url(redis_url)
    calls = []

    def fn(value: int | None) -> int:
        calls.append(value)
        if len(calls) == 1:
            cache.set("k", 100, timeout=0)  # a plain writer: the first try loses, and leases
        elif len(calls) == 2:  # while leased, another holder takes the lease over
            client.set(lease_key, f"{int(time.time() * 1000) + 60000} other.1.1.x")
        return (value or 0) + 1

    began = time.monotonic()
    with pytest.raises(cachekit.LeaseLost, match="'k'"):
        cachekit.update(cache, "k", fn)
    assert len(calls) == 2 and time.monotonic() - began < 1
    assert cache.get("k") == 100


def test_sentinel_keeps_the_database_and_never_hangs(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis.sentinel

    use_settings(monkeypatch, redis_timeout=0.5)
    sentinel_server = RedisServer(tmp_path, binary=redis_binary(), sentinel_of=redis_server.port)
    sentinel_server.start()
    try:
        sentinel: Any = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            [("127.0.0.1", sentinel_server.port)]
        )
        cache = RedisCache(host=sentinel.master_for("mymaster", db=3), key_prefix="s3:")
        assert cachekit.incr(cache, "n") == 1
        assert redis.Redis(port=redis_server.port, db=3).get("s3:n") == b"1"
        sentinel_server.pause()  # the sentinel stops answering
        fresh = RedisCache(host=sentinel.master_for("mymaster", db=3), key_prefix="s4:")
        began = time.monotonic()
        with pytest.raises(cachekit.StorageError):
            cachekit.incr(fresh, "n")
        assert time.monotonic() - began < 3
    finally:
        sentinel_server.stop()


def test_an_unreachable_cluster_is_a_storage_error(tmp_path: Path) -> None:
    from flask_caching.backends import RedisClusterCache

    server = RedisServer(tmp_path, binary=redis_binary(), cluster=True)
    server.start()
    cache = RedisClusterCache(cluster=f"127.0.0.1:{server.port}", key_prefix="{c}:")
    server.stop()
    with pytest.raises(cachekit.StorageError, match="unreachable"):
        cachekit.incr(cache, "n")
    findings = diagnose_backend(cache)
    assert findings[0].level == PROBLEM and "does not answer" in findings[0].what
    cache._write_client.close()


@pytest.mark.redis_args("--rename-command", "INFO", "", "--rename-command", "CONFIG", "")
def test_a_server_that_refuses_the_checks_is_said_so_and_used(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Managed services often refuse INFO or CONFIG: cachekit says it could not check, and works."""
    cache = open_cache(own_server.url, "refusing:")
    assert [cachekit.incr(cache, "n") for _ in range(3)] == [1, 2, 3]
    assert "could not check the Redis server" in caplog.text
    findings = diagnose_backend(cache)
    refusals = [f for f in findings if "refused a check" in f.what]
    assert refusals and all(f.level == WARNING for f in findings)


def test_an_old_server_is_refused_by_version() -> None:
    from cachekit.redis.server import ServerFacts, version_problem

    assert version_problem(ServerFacts(versions=("7.0.15",))) is None
    assert "6.0.16 is older than 6.2" in str(version_problem(ServerFacts(versions=("6.0.16",))))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_the_sentinel_client_keeps_tls_credentials_database_and_master_ip(tls: bool) -> None:
    """cachekit's own Sentinel client is the user's, but with bounded waits (no server needed)."""
    import redis.sentinel

    from cachekit.compat import bounded_redis_client

    sentinel: Any = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        [("127.0.0.1", 1)], sentinel_kwargs={"ssl": tls}, force_master_ip="10.9.9.9", ssl=tls
    )
    user = sentinel.master_for("mymaster", password="pw", db=3)
    own = bounded_redis_client(user, 2.0, 0.5)
    pool = own.connection_pool
    assert pool.connection_class is user.connection_pool.connection_class
    assert issubclass(pool.connection_class, redis.SSLConnection) == tls
    sentinels = pool.sentinel_manager.sentinels
    assert issubclass(sentinels[0].connection_pool.connection_class, redis.SSLConnection) == tls
    assert sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 2.0
    assert pool.sentinel_manager._force_master_ip == "10.9.9.9"
    assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == ("pw", 3)
    assert pool.connection_kwargs["socket_timeout"] == 2.0
