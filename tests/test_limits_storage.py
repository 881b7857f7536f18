"""``cachekit://``, the Flask-Limiter storage: every strategy exact on every backend.

Threads here, real gunicorn workers in ``test_limits_gunicorn``. Each test
uses a fresh backend (a fresh directory, or a fresh key prefix on Redis).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_caching import Cache
from flask_limiter import Limiter
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import STRATEGIES

import cachekit
from cachekit.limits_storage import CachekitStorage

from .conftest import BACKENDS, clear_of_a_window_edge, clear_of_an_edge_for, use_settings
from .server import free_port

pytestmark = pytest.mark.timeout(120)

STRATEGY_NAMES = sorted(STRATEGIES)


def storage_for(backend: Any) -> CachekitStorage:
    storage = storage_from_string("cachekit://", cache=backend)
    assert isinstance(storage, CachekitStorage)
    return storage


def hit_concurrently(limiter: Any, item: Any, key: str, hits: int, threads: int) -> list[bool]:
    """``hits`` hits on ``key`` from ``threads`` threads started together."""
    results: list[bool] = []
    guard = threading.Lock()
    start = threading.Barrier(threads)

    def work(share: int) -> None:
        start.wait()
        mine = [limiter.hit(item, key) for _ in range(share)]
        with guard:
            results.extend(mine)

    workers = [
        threading.Thread(target=work, args=(hits // threads + (i < hits % threads),))
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_exactly_the_limit_of_concurrent_hits_gets_through(backend: Any, strategy: str) -> None:
    """100 per minute, 300 hits from 16 threads: exactly 100 let through, then stats agree."""
    limiter = STRATEGIES[strategy](storage_for(backend))
    item = RateLimitItemPerMinute(100)
    clear_of_an_edge_for(strategy, 60, 10)
    results = hit_concurrently(limiter, item, "client-a", 300, 16)
    assert results.count(True) == 100 and results.count(False) == 200
    assert not limiter.test(item, "client-a")
    reset, remaining = limiter.get_window_stats(item, "client-a")
    assert remaining == 0 and time.time() < reset <= time.time() + 61
    assert limiter.hit(item, "client-b")  # another key has its own window
    limiter.clear(item, "client-a")
    assert limiter.test(item, "client-a") and limiter.hit(item, "client-a")
    assert limiter.get_window_stats(item, "client-a")[1] == 99


@pytest.mark.parametrize("kind", ["FileSystemCache", "LMDBCache", "RedisCache"])
def test_windows_end(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    """A spent 1-second limit lets hits through again once its window has passed."""
    storage = storage_for(BACKENDS[kind](request, tmp_path))
    item = RateLimitItemPerSecond(3)
    clear_of_a_window_edge(1, 0.5)
    for strategy in STRATEGY_NAMES:
        limiter = STRATEGIES[strategy](storage)
        assert [limiter.hit(item, strategy) for _ in range(5)] == [True] * 3 + [False] * 2
    time.sleep(2.05)  # (a sliding window counter weighs the previous window for one more)
    for strategy in STRATEGY_NAMES:
        assert STRATEGIES[strategy](storage).hit(item, strategy), strategy


def test_a_cost_larger_than_the_limit_is_refused_and_changes_nothing(backend: Any) -> None:
    clear_of_a_window_edge(60, 5)
    for strategy in ("moving-window", "sliding-window-counter"):
        limiter = STRATEGIES[strategy](storage_for(backend))
        item = RateLimitItemPerMinute(5)
        assert not limiter.hit(item, "k", cost=6)
        assert limiter.hit(item, "k", cost=5) and not limiter.hit(item, "k")


def test_reset_forgets_every_limit(backend: Any) -> None:
    storage = storage_for(backend)
    item = RateLimitItemPerMinute(2)
    limiters = {name: STRATEGIES[name](storage) for name in STRATEGY_NAMES}
    clear_of_a_window_edge(60, 5)
    for limiter in limiters.values():
        assert [limiter.hit(item, "k") for _ in range(3)] == [True, True, False]
    assert storage.check()
    storage.reset()
    for limiter in limiters.values():
        assert limiter.hit(item, "k")


def test_bad_uri_options_and_keys_are_refused(tmp_path: Path) -> None:
    backend = BACKENDS["FileSystemCache"](None, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(cachekit.ConfigurationError, match="takes no options but 'cache'"):
        storage_from_string("cachekit://", cache=backend, colour="red")
    with pytest.raises(cachekit.ConfigurationError, match="just 'cachekit://'"):
        storage_from_string("cachekit://elsewhere", cache=backend)
    with pytest.raises(cachekit.InvalidArgument):
        storage_for(backend).incr("", 60)
    with pytest.raises(cachekit.ConfigurationError, match="inside an app context"):
        storage_from_string("cachekit://").incr("k", 60)


def test_odd_keys_are_refused_on_every_backend_before_anything_else(backend: Any) -> None:
    """A key UTF-8 cannot encode is cachekit's InvalidArgument (Flask-Limiter's storage error)."""
    storage = storage_for(backend)
    for call in (
        lambda: storage.incr("\ud800", 60),
        lambda: storage.acquire_entry("\ud800", 5, 60, amount=6),  # (past the limit too)
        lambda: storage.acquire_sliding_window_entry("\ud800", 5, 60),
        lambda: storage.get_moving_window("\ud800", 5, 60),
    ):
        with pytest.raises(cachekit.InvalidArgument):
            call()
    assert STRATEGIES["fixed-window"](storage).hit(RateLimitItemPerMinute(1), "\u00e9\u6f22#:*")


def test_a_fixed_window_counts_costs(backend: Any) -> None:
    limiter = STRATEGIES["fixed-window"](storage_for(backend))
    item = RateLimitItemPerMinute(5)
    assert limiter.hit(item, "k", cost=3) and not limiter.hit(item, "k", cost=3)
    assert not limiter.hit(item, "k")
    assert limiter.get_window_stats(item, "k")[1] == 0
    assert limiter.hit(item, "other", cost=5) and not limiter.hit(item, "other")


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_redis_windows_ignore_the_hosts_clock(
    tmp_path: Path, strategy: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts whose clocks differ by 2 minutes share one window: the server's clock rules."""
    storage = storage_for(BACKENDS["RedisCache"](request, tmp_path))
    limiter = STRATEGIES[strategy](storage)
    item = RateLimitItemPerMinute(5)
    clear_of_an_edge_for(strategy, 60, 5)
    hits = [limiter.hit(item, "k") for _ in range(3)]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)
    hits += [limiter.hit(item, "k") for _ in range(3)]
    assert hits == [True] * 5 + [False]


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_durable_writes_make_every_hit_wait_for_replicas(
    redis_url: str, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CACHEKIT_REDIS_DURABLE_WRITES a hit counts once the replicas have it (a failover
    then loses no hit let through: the nemesis's Sentinel and Cluster cases check that). A
    server with no replica cannot confirm one: every hit raises, none is let through untold.
    """
    import redis
    from cachelib import RedisCache

    use_settings(monkeypatch, durable_writes=1)
    backend = RedisCache(host=redis.Redis.from_url(redis_url), key_prefix=uuid.uuid4().hex[:8])
    limiter = STRATEGIES[strategy](storage_for(backend))
    with pytest.raises(cachekit.StorageError, match="did not replicate a write in time"):
        limiter.hit(RateLimitItemPerMinute(5), "k")


def test_redis_keys_are_cachekits_own_and_reset_leaves_the_apps(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    backend = BACKENDS["RedisCache"](request, tmp_path)
    storage = storage_for(backend)
    backend.set("limits:mine", "the app's")
    item = RateLimitItemPerMinute(5)
    for name in STRATEGY_NAMES:
        assert STRATEGIES[name](storage).hit(item, "k")
    limit = item.key_for("k")
    client, prefix = backend._write_client, backend.key_prefix
    keys = sorted(key.decode() for key in client.scan_iter(match=f"{prefix}*limits:*"))
    assert keys == sorted(
        [f"{prefix}limits:mine"]
        + [f"{prefix}cachekit:limits:{limit}#{kind}" for kind in ("fixed", "moving", "sliding")]
    )
    assert storage.reset() == 3
    assert backend.get("limits:mine") == "the app's"


def use_in_a_fork(backend: Any, out: Any) -> None:
    try:
        STRATEGIES["fixed-window"](storage_for(backend)).hit(RateLimitItemPerMinute(10), "k")
    except cachekit.PerProcessBackend as error:
        out.put(str(error))
    else:
        out.put("counted")


def test_a_simple_cache_used_by_a_fork_is_refused(tmp_path: Path) -> None:
    """SimpleCache under several processes: the usual clear error, not a count per process."""
    import multiprocessing

    backend = BACKENDS["SimpleCache"](None, tmp_path)  # type: ignore[arg-type]
    assert STRATEGIES["fixed-window"](storage_for(backend)).hit(RateLimitItemPerMinute(10), "k")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=use_in_a_fork, args=(backend, out))
    child.start()
    message = out.get(timeout=20)
    child.join(20)
    assert "a fork of it" in message


def make_app(tmp_path: Path, strategy: str, **config: Any) -> Flask:
    """An app with Flask-Limiter set up first, CacheKit after: the scheme is there anyway."""
    app = Flask(__name__)
    (tmp_path / "cache").mkdir(mode=0o700, exist_ok=True)
    app.config.update(
        CACHE_TYPE="FileSystemCache",
        CACHE_DIR=str(tmp_path / "cache"),
        CACHE_THRESHOLD=0,
        CACHE_DEFAULT_TIMEOUT=0,
        RATELIMIT_STORAGE_URI="cachekit://",
        RATELIMIT_STRATEGY=strategy,
        RATELIMIT_HEADERS_ENABLED=True,
    )
    app.config.update(config)
    limiter = Limiter(lambda: "everyone", app=app)
    cache = Cache(app)
    cachekit.CacheKit(cache, app)

    @app.get("/limited")
    @limiter.limit("5 per minute")
    def limited() -> dict[str, str]:
        return {"ok": "yes"}

    return app


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_flask_limiter_answers_429_with_its_headers(tmp_path: Path, strategy: str) -> None:
    client = make_app(tmp_path, strategy).test_client()
    clear_of_an_edge_for(strategy, 60, 5)
    answers = [client.get("/limited") for _ in range(7)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    assert [a.headers["X-RateLimit-Remaining"] for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert all(a.headers["X-RateLimit-Limit"] == "5" for a in answers)
    retry_after = int(answers[-1].headers["Retry-After"])
    assert 0 <= retry_after <= 60
    reset = int(answers[-1].headers["X-RateLimit-Reset"])
    assert time.time() - 1 <= reset <= time.time() + 61


@pytest.mark.parametrize("swallow", [False, True])
def test_an_unreachable_redis_answers_503_or_lets_through_as_asked(
    tmp_path: Path, swallow: bool
) -> None:
    """Redis down: a clear 503 (CACHEKIT_JSON_ERRORS), or through if Flask-Limiter swallows."""
    app = make_app(
        tmp_path,
        "moving-window",
        CACHE_TYPE="RedisCache",
        CACHE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        CACHE_OPTIONS={"socket_timeout": 1},
        CACHEKIT_JSON_ERRORS=True,
        RATELIMIT_SWALLOW_ERRORS=swallow,
    )
    answer = app.test_client().get("/limited")
    if swallow:
        assert answer.status_code == 200 and answer.json == {"ok": "yes"}
    else:
        assert answer.status_code == 503
        assert answer.json is not None and answer.json["error"] == "StorageError"


def test_rate_limit_statistics_are_counted(tmp_path: Path) -> None:
    app = make_app(tmp_path, "moving-window")
    client = app.test_client()
    for _ in range(7):
        client.get("/limited")
    with app.app_context():
        figures = cachekit.statistics(app.extensions["cachekit"].kit.cache)
    assert figures["limit_hits"] == 7 and figures["limit_refusals"] == 2


def test_simple_cache_is_one_process_only(tmp_path: Path) -> None:
    """SimpleCache works in one process (threads, exact) like every other helper."""
    backend = BACKENDS["SimpleCache"](None, tmp_path)  # type: ignore[arg-type]
    limiter = STRATEGIES["fixed-window"](storage_for(backend))
    results = hit_concurrently(limiter, RateLimitItemPerMinute(10), uuid.uuid4().hex, 50, 8)
    assert results.count(True) == 10


def test_doctor_reports_a_per_process_limiter(tmp_path: Path) -> None:
    """The demo with Flask-Limiter's memory:// (its default): doctor says so, and the fix."""
    from .test_resources_and_cli import flask

    result = flask(tmp_path, "cachekit", "doctor", env={"FLASK_RATELIMIT_STORAGE_URI": "memory://"})
    assert result.returncode == 1
    assert "Flask-Limiter counts in memory://" in result.stdout
    assert "RATELIMIT_STORAGE_URI = 'cachekit://'" in result.stdout
    assert flask(tmp_path, "cachekit", "doctor").returncode == 0  # the demo's cachekit://
