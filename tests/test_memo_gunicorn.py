"""Stampede-proof caching under real gunicorn workers: computations counted exactly.

The demo's ``/quote`` is a 0.3 s computation memoized with a timeout of 1 s
and 2 s of staleness (set through the environment); it counts its runs with
``cachekit.incr``, so the figures below are exact across workers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .server import concurrently, get_ok, gunicorn, post_ok
from .test_gunicorn import EMBEDDED, backend_env, worker_timeouts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

COMPUTATION = 0.3  # seconds
TIMEOUT = 1.0
STALE = 2.0
LOAD_SECONDS = 3.0
LOAD_CLIENTS = 32
QUOTE_ENV = {
    "DEMO_QUOTE_SECONDS": str(COMPUTATION),
    "DEMO_QUOTE_TIMEOUT": str(TIMEOUT),
    "DEMO_QUOTE_STALE": str(STALE),
}


def computations(base: str, symbol: str) -> int:
    return int(get_ok(f"{base}/quote/computations?symbol={symbol}")["computations"])


def cold_calls_compute_once(base: str, symbol: str, clients: int = 64) -> None:
    """``clients`` concurrent cold calls: one computation, and every caller gets its value."""
    results = concurrently(clients, [lambda: get_ok(f"{base}/quote?symbol={symbol}")] * clients)
    assert {result["computation"] for result in results} == {1}
    assert computations(base, symbol) == 1


def invalidate_computes_once(base: str, symbol: str, clients: int = 64) -> None:
    """After ``/quote/invalidate`` every caller sees a new value, computed once.

    A refresh started before the invalidation may still store its value (under
    the old generation, so never served): wait it out before counting.
    """
    time.sleep(2 * COMPUTATION)
    before = computations(base, symbol)
    post_ok(f"{base}/quote/invalidate")
    results = concurrently(clients, [lambda: get_ok(f"{base}/quote?symbol={symbol}")] * clients)
    assert {result["computation"] for result in results} == {before + 1}
    assert computations(base, symbol) == before + 1


def sustained_load(base: str, symbol: str) -> tuple[int, list[float]]:
    """Computations during LOAD_SECONDS of LOAD_CLIENTS closed-loop clients, and every latency."""
    get_ok(f"{base}/quote?symbol={symbol}")  # warm: the cold miss is the other test's
    before = computations(base, symbol)
    end = time.monotonic() + LOAD_SECONDS

    def client() -> list[float]:
        latencies = []
        while time.monotonic() < end:
            began = time.monotonic()
            get_ok(f"{base}/quote?symbol={symbol}")
            latencies.append(time.monotonic() - began)
        return latencies

    latencies = [x for chunk in concurrently(LOAD_CLIENTS, [client] * LOAD_CLIENTS) for x in chunk]
    return computations(base, symbol) - before, latencies


@pytest.mark.parametrize("backend", [*sorted(EMBEDDED), "RedisCache"])
def test_memoize_under_gthread_workers(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    env = {**backend_env(backend, request), **QUOTE_ENV}
    with gunicorn(tmp_path, "-w", "4", "-k", "gthread", "--threads", "8", env=env) as base:
        cold_calls_compute_once(base, "COLD")
        views = concurrently(64, [lambda: get_ok(base + "/page?b=2&a=1")] * 64)
        assert {view["renders"] for view in views} == {1}

        ran, latencies = sustained_load(base, "HOT")
        # One computation per timeout at most (plus one), while calls keep coming.
        assert 1 <= ran <= LOAD_SECONDS / TIMEOUT + 1, ran
        slow = sum(latency > COMPUTATION for latency in latencies)
        assert slow <= 0.01 * len(latencies), (slow, len(latencies))

        invalidate_computes_once(base, "HOT")
        stats: dict[str, Any] = get_ok(base + "/stats")["all_workers"]["memo"]["app.quote"]
    assert stats["computations"] >= 1 and stats["hits"] > 0 and stats["errors"] == 0


@pytest.mark.parametrize("backend", ["FileSystemCache"])  # Redis under gevent: test_gunicorn
def test_memoize_under_gevent_preload_workers(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Background refreshes are greenlets; the master forked after the demo imported cachekit."""
    env = {**backend_env(backend, request), **QUOTE_ENV}
    args = ["-w", "2", "-k", "gevent", "--preload", "--worker-connections", "300"]
    with gunicorn(tmp_path, *args, "--timeout", "20", env=env) as base:
        cold_calls_compute_once(base, "COLD")
        ran, latencies = sustained_load(base, "HOT")
        assert 1 <= ran <= LOAD_SECONDS / TIMEOUT + 1, ran
        invalidate_computes_once(base, "HOT")
    assert worker_timeouts(tmp_path) == []
