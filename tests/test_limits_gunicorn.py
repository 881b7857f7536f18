"""The demo's ``/limited`` under real gunicorn workers: Flask-Limiter on ``cachekit://``.

A limit of 100 per minute and 300 concurrent requests from 16 clients through
4 workers: exactly 100 answers 200 and 200 answers 429, for each strategy and
backend. (Flask-Limiter's ``memory://`` let 142 to 200 of them through.)
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from .conftest import clear_of_an_edge_for
from .server import concurrently, gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")


def fetch(url: str) -> tuple[int, dict[str, str]]:
    """GET ``url``: the status and the headers (a 429's body is Flask-Limiter's HTML)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def backend_env(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    prefix = f"{{limits-{uuid.uuid4().hex[:6]}}}:"
    if kind == "LMDBCache":
        return {"FLASK_CACHE_TYPE": "cachekit.LMDBCache"}
    if kind == "RedisCache":
        url = request.getfixturevalue("redis_url")
        return {
            "FLASK_CACHE_TYPE": kind,
            "FLASK_CACHE_REDIS_URL": url,
            "FLASK_CACHE_KEY_PREFIX": prefix,
        }
    if kind == "RedisSentinelCache":
        sentinel = request.getfixturevalue("redis_sentinel")
        return {
            "FLASK_CACHE_TYPE": kind,
            "FLASK_CACHE_REDIS_SENTINELS": f'[["127.0.0.1", {sentinel.port}]]',
            "FLASK_CACHE_REDIS_SENTINEL_MASTER": "mymaster",
            "FLASK_CACHE_KEY_PREFIX": prefix,
        }
    if kind == "RedisClusterCache":
        cluster = request.getfixturevalue("redis_cluster")
        return {
            "FLASK_CACHE_TYPE": kind,
            "FLASK_CACHE_REDIS_CLUSTER": f"127.0.0.1:{cluster.port}",
            "FLASK_CACHE_KEY_PREFIX": prefix,
        }
    return {}  # FileSystemCache, the demo's default


CASES = [
    *(
        (kind, strategy)
        for kind in ("FileSystemCache", "LMDBCache", "RedisCache")
        for strategy in STRATEGIES
    ),
    ("RedisSentinelCache", "sliding-window-counter"),
    ("RedisClusterCache", "moving-window"),
]


@pytest.mark.parametrize(("kind", "strategy"), CASES)
def test_exactly_the_limit_gets_through_four_workers(
    tmp_path: Path, kind: str, strategy: str, request: pytest.FixtureRequest
) -> None:
    env = {
        **backend_env(kind, request),
        "FLASK_RATELIMIT_STRATEGY": strategy,
        "FLASK_DEMO_LIMIT": "100 per minute",
    }
    with gunicorn(tmp_path, "-w", "4", "-k", "gthread", "--threads", "4", env=env) as base:
        clear_of_an_edge_for(strategy, 60, 8)
        answers = concurrently(16, [lambda: fetch(base + "/limited")] * 300)
    statuses = [status for status, _ in answers]
    assert statuses.count(200) == 100 and statuses.count(429) == 200, sorted(set(statuses))
    for status, headers in answers:
        assert headers["X-RateLimit-Limit"] == "100"
        assert 0 <= int(headers["X-RateLimit-Remaining"]) <= 99
        if status == 429:
            assert headers["X-RateLimit-Remaining"] == "0"
            assert 0 <= int(headers["Retry-After"]) <= 60
