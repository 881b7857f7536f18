"""cachekit's merged statistics in Prometheus's text format (the ``prometheus`` extra).

``pip install 'flask-cachekit[prometheus]'`` and set ``CACHEKIT_METRICS_PATH =
"/metrics"``: :class:`~cachekit.extension.CacheKit` serves the figures there.

Correct across workers without prometheus-client's multiprocess mode: the
figures are the ones every worker adds to the shared cache
(:mod:`cachekit.stats`), and the worker that answers a scrape flushes its own
first. So any worker gives the same totals (of every host, on Redis), behind
by at most ``CACHEKIT_STATS_INTERVAL`` for the others, and they keep growing
across worker restarts and reloads: counters as Prometheus wants them.

Invariant: every sample is a counter or a histogram of counts already in the
shared cache; a scrape never writes anything but this worker's own pending
counts, and a scrape that cannot read the cache answers 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Flask, Response

from .backends import unavailable as backends_unavailable
from .compat import app_backends
from .errors import RETRY_AFTER, ConfigurationError, StorageError
from .resolve import CacheLike
from .stats import WAIT_BUCKETS

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
except ImportError:  # pragma: no cover - the extra is not installed
    CollectorRegistry = None  # type: ignore[assignment,misc]


def register_endpoint(app: Flask, cache: CacheLike, path: str) -> None:
    """Serve ``cache``'s merged statistics at ``path``; refused at once without the extra.

    A scrape that cannot read the shared cache answers 503 in plain text with
    ``Retry-After`` (JSON error handlers or not), and the worker logs why.
    """
    unavailable: tuple[type[Exception], ...] = (
        StorageError,
        *backends_unavailable(app_backends(app)),
    )

    if CollectorRegistry is None:
        raise ConfigurationError(
            f"CACHEKIT_METRICS_PATH={path!r} needs prometheus-client:"
            " pip install 'flask-cachekit[prometheus]'",
            setting="CACHEKIT_METRICS_PATH",
        )
    if not path.startswith("/"):
        raise ConfigurationError(
            f"CACHEKIT_METRICS_PATH must be a path starting with '/', not {path!r}",
            setting="CACHEKIT_METRICS_PATH",
        )

    def metrics() -> Response:
        try:
            body = exposition(cache)
        except unavailable as error:  # the cache is down: say so
            app.logger.warning("cachekit: %s answers 503: %s", path, error)
            return Response(
                "cachekit: the shared cache is unavailable; try again\n",
                status=503,
                headers={"Retry-After": str(RETRY_AFTER)},
                content_type="text/plain; charset=utf-8",
            )
        return Response(body, mimetype=None, content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule(path, "cachekit_metrics", metrics, methods=["GET"])


def exposition(cache: CacheLike) -> bytes:
    """The merged figures of ``cache`` as a Prometheus text exposition."""
    from .operations import statistics

    figures = statistics(cache)  # flushes this worker first; a StorageError reaches the caller
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(figures))
    return bytes(generate_latest(registry))


class _Collector:
    """Yields the figures of one scrape, read before it started."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self._figures
        operations = CounterMetricFamily(
            "cachekit_operations", "cachekit helper calls, by operation", labels=["operation"]
        )
        for name, count in figures["operations"].items():
            operations.add_metric([name], count)
        yield operations
        for name, documentation in (
            ("locks_taken", "takings of a cachekit lock (of a key, a computation or lock())"),
            ("lock_waits", "takings of a lock that found it held and waited"),
            ("lock_timeouts", "waits for a lock that ran out (LockTimeout)"),
            ("retries", "optimistic updates tried again after a concurrent write"),
            ("computes", "computations by get_or_compute"),
            ("computes_saved", "get_or_compute calls served without computing"),
            ("limit_hits", "rate limit hits counted through cachekit:// (Flask-Limiter)"),
            ("limit_refusals", "rate limit hits refused (moving and sliding windows)"),
            ("tampered", "stored values refused by their signature check (TamperedValue)"),
            ("unsigned", "stored values without a signature read as missing or accepted"),
        ):
            yield CounterMetricFamily(f"cachekit_{name}", documentation, value=figures[name])
        waits = HistogramMetricFamily(
            "cachekit_lock_wait_seconds", "time a lock taking waited, when the lock was held"
        )
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, bucket in zip(WAIT_BUCKETS, figures["lock_wait_buckets"], strict=True):
            cumulative += bucket["waits"]
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", figures["lock_waits"]))
        waits.add_metric([], buckets, sum_value=figures["lock_wait_seconds"])
        yield waits
        memo = CounterMetricFamily(
            "cachekit_memo_events",
            "events of memoized functions: hits, stale, misses, joined, computations,"
            " refreshes, early, refresh_errors, errors, bypassed, tampered",
            labels=["function", "event"],
        )
        for function, counts in sorted(figures["memo"].items()):
            for event, count in sorted(counts.items()):
                memo.add_metric([function, event], count)
        yield memo
