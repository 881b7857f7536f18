"""Statistics of cachekit's operations, per process and merged across workers.

Every statistic is a counter: operations by kind, lock waits (in buckets of
duration, from which p50 and p99 are read), lock timeouts, retries of an
optimistic update, computations by ``get_or_compute`` and the computations it
saved. A process counts in memory and, at most once per
:data:`FLUSH_INTERVAL` and when it exits, adds what it counted since to keys
``cachekit:stats:<name>`` of the shared cache with cachekit's own ``incr``. So
the merged figures are exact sums over every worker (of every host, on Redis),
behind by at most the interval for workers still running; a worker killed
with SIGKILL loses its last interval of statistics, never any state.

Statistics never fail an operation: a flush that fails is dropped.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from typing import Any, Final

#: Longest time, in seconds, a process keeps counts before adding them to the cache.
FLUSH_INTERVAL: Final = 1.0
#: Upper bounds, in seconds, of the lock-wait buckets (the last bucket has none).
WAIT_BUCKETS: Final = (
    0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0,
)  # fmt: skip
OPERATIONS: Final = ("incr", "update", "transaction", "lock", "get_or_compute")
COUNTERS: Final = ("lock_timeouts", "retries", "computes", "computes_saved")
PREFIX: Final = "cachekit:stats:"


def names() -> list[str]:
    """Every counter's name."""
    return (
        [f"operations:{op}" for op in OPERATIONS]
        + list(COUNTERS)
        + [f"wait:{i}" for i in range(len(WAIT_BUCKETS) + 1)]
    )


class Stats:
    """The counts of one strategy in this process: all since start, and those not yet flushed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flushed: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._last_flush = time.monotonic()

    @property
    def total(self) -> Counter[str]:
        with self._lock:
            return self._flushed + self._pending

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._pending[name] += amount

    def waited(self, seconds: float) -> None:
        self.count(f"wait:{bisect.bisect_left(WAIT_BUCKETS, seconds)}")

    def due(self) -> bool:
        return bool(self._pending) and time.monotonic() - self._last_flush >= FLUSH_INTERVAL

    def take_pending(self) -> Counter[str]:
        with self._lock:
            pending, self._pending = self._pending, Counter()
            self._flushed.update(pending)
            self._last_flush = time.monotonic()
        return pending

    def after_fork(self) -> None:
        """A forked child starts with no counts: the parent's are its own to flush."""
        self._lock = threading.Lock()
        self._flushed = Counter()
        self._pending = Counter()


def summary(counts: Counter[str] | dict[str, int]) -> dict[str, Any]:
    """Readable figures from raw counts: operations, waits with p50/p99, the rest.

    Every value is finite (valid JSON): a percentile is the upper bound, in
    ms, of the bucket that holds it, and ``None`` when there was no wait or
    when it lies beyond the largest bound (then ``lock_waits_over_10s`` counts
    those waits).
    """
    buckets = [int(counts.get(f"wait:{i}", 0)) for i in range(len(WAIT_BUCKETS) + 1)]
    waits = sum(buckets)
    return {
        "operations": {op: int(counts.get(f"operations:{op}", 0)) for op in OPERATIONS},
        "lock_waits": waits,
        "lock_wait_p50_ms": _percentile_ms(buckets, 0.50),
        "lock_wait_p99_ms": _percentile_ms(buckets, 0.99),
        "lock_waits_over_10s": buckets[-1],
        **{name: int(counts.get(name, 0)) for name in COUNTERS},
    }


def _percentile_ms(buckets: list[int], fraction: float) -> float | None:
    """The upper bound of the bucket holding the percentile, in ms; None if none or unbounded."""
    total = sum(buckets)
    seen = 0
    for bound, count in zip(WAIT_BUCKETS, buckets, strict=False):
        seen += count
        if total and seen >= fraction * total:
            return round(bound * 1000, 6)
    return None
