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
    # Counts reach the shared figures within about 1.5 intervals: read them after 1 s.
    "FLASK_CACHEKIT_STATS_INTERVAL": "0.05",
}
SETTLE = 1.0  # seconds for every worker's counts to reach the shared figures


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


def quote_figures(base: str) -> dict[str, int]:
    """``app.quote``'s memo figures summed over every worker, once their counts have settled."""
    time.sleep(SETTLE)
    return dict(get_ok(base + "/stats")["all_workers"]["memo"]["app.quote"])


def sustained_load(base: str, symbol: str) -> tuple[int, int, int]:
    """LOAD_SECONDS of LOAD_CLIENTS closed-loop clients on a warm key.

    Returns the computations during the load, the calls made, and the calls
    that found nothing usable (a miss: they waited for a computation) -- exact
    counts, not latencies, which a busy machine stretches.
    """
    get_ok(f"{base}/quote?symbol={symbol}")  # warm: the cold miss is the other test's
    before_ran, before = computations(base, symbol), quote_figures(base)
    end = time.monotonic() + LOAD_SECONDS

    def client() -> int:
        calls = 0
        while time.monotonic() < end:
            get_ok(f"{base}/quote?symbol={symbol}")
            calls += 1
        return calls

    calls = sum(concurrently(LOAD_CLIENTS, [client] * LOAD_CLIENTS))
    ran, after = computations(base, symbol) - before_ran, quote_figures(base)
    served = sum(after[name] - before[name] for name in ("hits", "stale", "misses"))
    assert served == calls, (served, calls)  # the figures saw every call: the check can bite
    return ran, calls, after["misses"] - before["misses"]


@pytest.mark.parametrize("backend", [*sorted(EMBEDDED), "RedisCache"])
def test_memoize_under_gthread_workers(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    env = {**backend_env(backend, request), **QUOTE_ENV}
    with gunicorn(tmp_path, "-w", "4", "-k", "gthread", "--threads", "8", env=env) as base:
        cold_calls_compute_once(base, "COLD")
        views = concurrently(64, [lambda: get_ok(base + "/page?b=2&a=1")] * 64)
        assert {view["renders"] for view in views} == {1}

        ran, calls, waited = sustained_load(base, "HOT")
        # One computation per timeout at most (plus one), while calls keep coming,
        # and no caller waited for one: expired values are served stale while they refresh.
        assert 1 <= ran <= LOAD_SECONDS / TIMEOUT + 1, ran
        assert calls > LOAD_CLIENTS and waited == 0, (calls, waited)

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
        ran, calls, waited = sustained_load(base, "HOT")
        assert 1 <= ran <= LOAD_SECONDS / TIMEOUT + 1, ran
        assert calls > LOAD_CLIENTS and waited == 0, (calls, waited)
        invalidate_computes_once(base, "HOT")
    assert worker_timeouts(tmp_path) == []
