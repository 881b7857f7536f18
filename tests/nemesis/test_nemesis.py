"""The fault suite: workloads across processes and gunicorn workers while faults strike.

Every run is checked exactly (:mod:`.checker`) and every anomaly printed with
the history around it. ``make test`` runs each case for ``NEMESIS_SECONDS``
(default 8); ``make nemesis`` runs them for longer.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ..conftest import use_settings
from ..redisserver import RedisServer, redis_binary
from ..server import get_ok, gunicorn
from .checker import check, report, summary
from .history import OK, Op
from .runner import Target, run_http, run_processes
from .workloads import KINDS, OPENING, open_cache

SECONDS = float(os.environ.get("NEMESIS_SECONDS", "6"))
LEASE = 1.5
pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SECONDS * 6 + 120))]


def final_state(spec: str) -> dict[str, Any]:
    cache = open_cache(spec)
    return {key: cache.get(key) for key in ("counter", "log", "acct:a", "acct:b", "guarded")}


def verify(
    name: str, history: list[Op], target: Target, spec: str, wanted: list[str], out: Path
) -> None:
    """Check the run exactly; also that it did something and suffered every fault asked for."""
    faults = target.done
    anomalies = check(history, final_state(spec), 2 * OPENING, target.excuses)
    errors = Counter(str(op.value)[:90] for op in history if op.outcome != OK)
    figures = {
        "case": name,
        "faults": faults,
        "outcomes": summary(history),
        "errors": dict(errors.most_common(8)),
    }
    (out / "nemesis-summary.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    assert not anomalies, report(history, anomalies)
    assert set(faults) == set(wanted), f"faults injected: {faults}"
    kinds = {op.kind for op in history if op.outcome == OK}
    assert kinds == {op.kind for op in history}, figures  # every workload made progress


@pytest.fixture
def nemesis_redis(tmp_path: Path) -> Any:
    """A durable Redis that evicts only keys with a TTL once past 16 MB."""
    server = RedisServer(
        tmp_path / "redis",
        binary=redis_binary(),
        durable=True,
        extra=("--maxmemory", "16mb", "--maxmemory-policy", "volatile-lru"),
    )
    (tmp_path / "redis").mkdir()
    server.start()
    yield server
    server.stop()


def test_processes_on_a_directory_spelled_four_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real" / "cache"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "link").symlink_to(real)
    specs = [str(real), str(tmp_path / "link"), str(tmp_path / "real" / ".." / "link"), str(real)]
    history, target = run_processes(specs, tmp_path / "history", SECONDS, ["kill9", "pause"])
    verify("processes/FileSystemCache", history, target, str(real), ["kill9", "pause"], tmp_path)


def test_processes_on_lmdb_spelled_four_ways(tmp_path: Path) -> None:
    """kill -9 at any point (inside a write transaction too) and SIGSTOP, on LMDBCache."""
    real = tmp_path / "real" / "lmdb"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "link").symlink_to(real)
    spellings = [real, tmp_path / "link", tmp_path / "real" / ".." / "link", real]
    specs = [f"lmdb:{path}" for path in spellings]
    history, target = run_processes(specs, tmp_path / "history", SECONDS, ["kill9", "pause"])
    verify("processes/LMDBCache", history, target, f"lmdb:{real}", ["kill9", "pause"], tmp_path)


def test_processes_on_redis(
    tmp_path: Path, nemesis_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, lease=LEASE, redis_timeout=2.0)
    spec = f"{nemesis_redis.url}|n:"
    wanted = ["kill9", "pause", "client_kill", "restart", "memory"]
    history, target = run_processes(
        [spec] * 4, tmp_path / "history", SECONDS, wanted, server=nemesis_redis, lease=LEASE
    )
    verify("processes/RedisCache", history, target, spec, wanted, tmp_path)


def test_locks_on_a_redis_that_persists_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart erases every lease: a second holder may enter, and the first is told."""
    use_settings(monkeypatch, lease=LEASE, redis_timeout=2.0)
    server = RedisServer(tmp_path, binary=redis_binary())
    server.start()
    try:
        spec = f"{server.url}|v:"
        wanted = ["restart", "pause", "client_kill"]
        history, target = run_processes(
            [spec] * 4, tmp_path / "history", SECONDS, wanted, server=server, kinds=("section",)
        )
        verify("processes/RedisCache without persistence", history, target, spec, wanted, tmp_path)
    finally:
        server.stop()


def gunicorn_master(tmp_path: Path) -> int:
    for log in tmp_path.glob("gunicorn-*.log"):
        for line in log.read_text().splitlines():
            if "Listening at" in line:
                return int(line.split("[")[2].split("]")[0])
    raise AssertionError("no gunicorn master pid in the log")


def test_gunicorn_sync_workers_recycled_killed_and_reloaded(tmp_path: Path) -> None:
    real = tmp_path / "cache"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    env = {"FLASK_CACHE_DIR": str(tmp_path / "link")}
    args = ("-w", "4", "--max-requests", "40", "--max-requests-jitter", "20")
    with gunicorn(tmp_path, *args, env=env, app="tests.nemesis.webapp:app") as base:
        master = gunicorn_master(tmp_path)
        history, target = run_http(base, master, SECONDS, ["kill9", "reload"])
        get_ok(base + "/")
    verify(
        "gunicorn sync/FileSystemCache", history, target, str(real), ["kill9", "reload"], tmp_path
    )


def test_gunicorn_gevent_preload_workers_on_lmdb(tmp_path: Path) -> None:
    """The master opens the store before forking; workers are killed, reloaded and paused."""
    env = {"FLASK_CACHE_TYPE": "cachekit.LMDBCache"}
    args = ("-w", "2", "-k", "gevent", "--preload", "--worker-connections", "100")
    wanted = ["kill9", "reload", "pause"]
    with gunicorn(
        tmp_path, *args, "--timeout", "30", env=env, app="tests.nemesis.webapp:app"
    ) as base:
        master = gunicorn_master(tmp_path)
        history, target = run_http(base, master, SECONDS, wanted, lease=LEASE, kinds=KINDS)
        get_ok(base + "/")
    spec = f"lmdb:{tmp_path / 'cache'}"
    verify("gunicorn gevent --preload/LMDBCache", history, target, spec, wanted, tmp_path)


def test_gunicorn_gevent_preload_workers_on_redis(
    tmp_path: Path, nemesis_redis: RedisServer
) -> None:
    env = {
        "FLASK_CACHE_TYPE": "RedisCache",
        "FLASK_CACHE_REDIS_URL": nemesis_redis.url,
        "FLASK_CACHE_KEY_PREFIX": "g:",
        "FLASK_CACHEKIT_LEASE": str(LEASE),
        "FLASK_CACHEKIT_REDIS_TIMEOUT": "2",
    }
    args = (
        "-w",
        "2",
        "-k",
        "gevent",
        "--preload",
        "--worker-connections",
        "100",
        "--timeout",
        "30",
    )
    wanted = ["kill9", "reload", "client_kill", "pause"]
    with gunicorn(tmp_path, *args, env=env, app="tests.nemesis.webapp:app") as base:
        master = gunicorn_master(tmp_path)
        began = time.monotonic()
        history, target = run_http(
            base, master, SECONDS, wanted, server=nemesis_redis, lease=LEASE, kinds=KINDS
        )
        assert time.monotonic() - began < SECONDS + 100
    verify(
        "gunicorn gevent --preload/RedisCache",
        history,
        target,
        f"{nemesis_redis.url}|g:",
        wanted,
        tmp_path,
    )
