"""Statistics of cachekit's operations, per process and merged across workers.

Every statistic is a counter: operations by kind, locks taken, lock waits
(only the takings that found the lock held, in buckets of duration, from
which the bounds of p50 and p99 are read, and their total time), lock
timeouts, retries of an optimistic update, computations by
``get_or_compute`` and the computations it saved. A process counts in memory
and adds what it counted since its last flush to keys
``cachekit:stats:<name>`` of the shared cache with cachekit's own ``incr``:
after an operation once ``CACHEKIT_STATS_INTERVAL`` (1 s) has passed, from a
timer thread (a greenlet under gevent) when the process is idle, and when it
exits. So the merged figures are exact sums over every worker (of every host,
on Redis), behind by at most about 1.5 intervals (the timer wakes every half
interval) for workers still running; a worker killed with SIGKILL loses its
last interval of statistics, never any state.

Invariants: a count is taken from the pending ones and added to the flushed
ones in one step under the process's lock, so no count is flushed twice or
lost by a flush racing another; one flush of a strategy runs at a time (an
operation's or the timer's skips when one is in flight, a reader's waits for
it), so a reader that flushes first sees every count this process made before
it.
Statistics never fail an operation: a flush that fails is dropped.

>>> figures = summary({"operations:incr": 3, "locks_uncontended": 2, "wait:4": 1})
>>> figures["locks_taken"], figures["lock_waits"], figures["lock_wait_p99_at_most_ms"]
(3, 1, 1.0)
>>> bound_text(0.001), bound_text(3.0), bound_text(None)
('<= 1 ms', '<= 3 s', 'none')
"""

from __future__ import annotations

import atexit
import bisect
import logging
import threading
import time
import weakref
from collections import Counter
from typing import Any, Final, Protocol

from .forking import at_fork
from .threadlocks import PerProcessValue

log = logging.getLogger(__name__)

#: Upper bounds, in seconds, of the lock-wait buckets (the last bucket has none).
WAIT_BUCKETS: Final = (
    0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0,
)  # fmt: skip
OPERATIONS: Final = ("incr", "update", "transaction", "lock", "get_or_compute")
COUNTERS: Final = (
    "lock_timeouts",
    "retries",
    "computes",
    "computes_saved",
    "limit_hits",  # rate limit hits through cachekit:// (limits_storage)
    "limit_refusals",
    "tampered",  # values refused by their signature check (cachekit.signing)
    "unsigned",  # values without a signature read as missing, or accepted (CACHEKIT_UNSIGNED)
    "swept",  # expired files the FileSystemCache sweep deleted (cachekit.filesystem)
)
#: Takings of a lock that found it free; the waits are the ``wait:<bucket>`` counts.
UNCONTENDED: Final = "locks_uncontended"
#: The total time of the lock waits, in microseconds.
WAITED_US: Final = "lock_wait_us"
PREFIX: Final = "cachekit:stats:"


def names() -> list[str]:
    """Every counter's name."""
    return (
        [f"operations:{op}" for op in OPERATIONS]
        + list(COUNTERS)
        + [UNCONTENDED, WAITED_US]
        + [f"wait:{i}" for i in range(len(WAIT_BUCKETS) + 1)]
    )


class Stats:
    """The counts of one strategy in this process: all since start, and those not yet flushed."""

    def __init__(self) -> None:
        # Both locks are made in the process that uses them, after gevent (if any) patched
        # ``threading``: a real lock made in a --preload master would block a gevent worker's
        # whole hub while one greenlet holds ``flushing`` across the network.
        self._guard = PerProcessValue(lambda: threading.Lock())
        self._flushing = PerProcessValue(lambda: threading.Lock())
        self._flushed: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._last_flush = time.monotonic()
        self._held_off_until = 0.0

    @property
    def flushing(self) -> threading.Lock:
        """Held by the one flush running (taken before the pending counts, released after
        they reached the shared cache)."""
        return self._flushing.get()

    @property
    def _lock(self) -> threading.Lock:
        return self._guard.get()

    @property
    def total(self) -> Counter[str]:
        with self._lock:
            return self._flushed + self._pending

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._pending[name] += amount

    def waited(self, seconds: float) -> None:
        """A taking that found the lock held and waited ``seconds`` for it."""
        with self._lock:
            self._pending[f"wait:{bisect.bisect_left(WAIT_BUCKETS, seconds)}"] += 1
            self._pending[WAITED_US] += round(seconds * 1_000_000)

    def due(self, interval: float) -> bool:
        """Whether a flush is due: counts pending, the interval passed, not held off."""
        if not self._pending:
            return False
        now = time.monotonic()
        return now - self._last_flush >= interval and now >= self._held_off_until

    def hold_off(self, seconds: float) -> None:
        """No flush for ``seconds``: the shared cache just failed (the counts stay pending).

        So an unreachable server costs an operation one bounded wait, never a
        second one for its statistics.
        """
        self._held_off_until = time.monotonic() + seconds

    def take_pending(self) -> Counter[str]:
        with self._lock:
            pending, self._pending = self._pending, Counter()
            self._flushed.update(pending)
            self._last_flush = time.monotonic()
        return pending

    def after_fork(self) -> None:
        """A forked child starts with no counts (the parent's to flush); its locks are made anew
        at first use (:class:`PerProcessValue`)."""
        self._flushed = Counter()
        self._pending = Counter()


def summary(counts: Counter[str] | dict[str, int]) -> dict[str, Any]:
    """Readable figures from raw counts: operations, locks and their waits, the rest.

    ``locks_taken`` counts every taking of a lock; ``lock_waits`` only those
    that found it held. A percentile is known only as the bucket that holds
    it: ``lock_wait_p50_at_most_ms`` is that bucket's upper bound, in ms
    (``None`` when there was no wait, or when it lies beyond the largest
    bound; ``lock_waits_over_10s`` counts those). ``lock_wait_buckets`` is
    the whole distribution. Every value is finite: the figures are valid JSON.
    """
    buckets = [int(counts.get(f"wait:{i}", 0)) for i in range(len(WAIT_BUCKETS) + 1)]
    waits = sum(buckets)
    return {
        "operations": {op: int(counts.get(f"operations:{op}", 0)) for op in OPERATIONS},
        "locks_taken": int(counts.get(UNCONTENDED, 0)) + waits,
        "lock_waits": waits,
        "lock_wait_seconds": round(int(counts.get(WAITED_US, 0)) / 1_000_000, 6),
        "lock_wait_p50_at_most_ms": _percentile_ms(buckets, 0.50),
        "lock_wait_p99_at_most_ms": _percentile_ms(buckets, 0.99),
        "lock_waits_over_10s": buckets[-1],
        "lock_wait_buckets": [
            {"at_most_ms": round(bound * 1000, 6), "waits": count}
            for bound, count in zip(WAIT_BUCKETS, buckets, strict=False)
        ],
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


def bound_text(seconds: float | None) -> str:
    """A bucket bound for people: ``<= 30 us``, ``<= 1 ms``, ``<= 3 s``; ``none`` for None."""
    if seconds is None:
        return "none"
    for unit, scale in (("s", 1.0), ("ms", 0.001), ("us", 0.000001)):
        if seconds >= scale:
            return f"<= {seconds / scale:g} {unit}"
    return f"<= {seconds / 0.000001:g} us"


# -- flushing: the timer, the fork gate and the exit flush, for every strategy -----------


class Flushes(Protocol):
    """What the timer needs of a strategy: its counts, its interval, and its flush."""

    stats: Stats

    @property
    def stats_interval(self) -> float: ...

    def flush_stats(self, *, wait: bool = True) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def track(owner: Flushes) -> None:
    """Flush ``owner``'s counts from the timer when idle, and at exit (kept weakly)."""
    _live.add(owner)


def flush_all() -> None:
    """Flush the statistics of every tracked strategy of this process (at exit, say)."""
    for owner in list(_live):
        owner.flush_stats()


def ensure_timer() -> None:
    """Start this process's timer if it has none (at an operation's end: cheap when started)."""
    if not _timer.started:
        _timer.start()


class _Timer:
    """One daemon thread per process that flushes the statistics of idle strategies.

    Started at the first operation of a process (so under gevent, after the
    worker patched ``threading``, it is a greenlet); a forked child starts its
    own, since threads do not survive a fork. A race may start two: harmless,
    since a flush that finds another in flight leaves its counts to the next.

    Invariant: no fork happens while the timer flushes. Its flushes hold the
    fork gate, which ``os.fork`` takes first (for at most
    :data:`FORK_WAIT`): so gunicorn's ``--preload`` master, whose timer
    flushes the counts of its start-up, never forks a worker while that flush
    is inside the store (a child forked mid-call would refuse LMDB).
    """

    def __init__(self) -> None:
        self.started = False
        self._generation = 0

    def start(self) -> None:
        self.started = True
        self._generation += 1
        thread = threading.Thread(
            target=self._run, args=(self._generation,), name="cachekit statistics", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown: the exit flush will do
            pass

    def _run(self, generation: int) -> None:
        while generation == self._generation:
            try:
                time.sleep(min((o.stats_interval for o in list(_live)), default=1.0) / 2)
                _flush_due()  # (a function: no strategy is kept alive while this one sleeps)
            except Exception:  # the timer outlives any one failure (flushes never raise)
                log.debug("cachekit statistics timer", exc_info=True)
                time.sleep(1.0)

    def after_fork_in_child(self) -> None:
        self.started = False
        self._generation += 1  # the parent's thread is gone; this one's starts afresh


def _flush_due() -> None:
    gate = _fork_gate.get()
    if not gate.acquire(blocking=False):  # a fork is under way: flush after it
        return
    try:
        for owner in list(_live):
            if owner.stats.due(owner.stats_interval):
                owner.flush_stats(wait=False)
    finally:
        gate.release()


#: Held by the timer while it flushes, and by a fork (see :class:`_Timer`).
_fork_gate = PerProcessValue(lambda: threading.Lock())
#: The longest a fork waits for the timer's flush (a Redis that does not answer).
FORK_WAIT: Final = 10.0
_gate_held_by_fork = False


def _gate_before_fork() -> None:
    global _gate_held_by_fork
    _gate_held_by_fork = _fork_gate.get().acquire(timeout=FORK_WAIT)


def _gate_after_fork_in_parent() -> None:
    global _gate_held_by_fork
    if _gate_held_by_fork:
        _gate_held_by_fork = False
        _fork_gate.get().release()


_timer = _Timer()


def _reset_after_fork() -> None:
    global _gate_held_by_fork
    _gate_held_by_fork = False  # the child's gate is made anew (PerProcessValue)
    _timer.after_fork_in_child()
    for owner in list(_live):
        owner.stats.after_fork()


atexit.register(flush_all)
at_fork(
    before=_gate_before_fork,
    after_in_parent=_gate_after_fork_in_parent,
    after_in_child=_reset_after_fork,
)
