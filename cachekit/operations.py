"""The public helpers: atomic read-modify-write on the app's shared cache.

Each helper takes the shared ``flask_caching.Cache`` (or a backend instance)
first, finds the strategy for its backend (:mod:`cachekit.resolve`) and
delegates to it (:mod:`cachekit.strategy`). They work inside or outside a
request once the cache is initialised.

>>> from cachelib import SimpleCache
>>> cache = SimpleCache()
>>> incr(cache, "hits"), incr(cache, "hits", 10)
(1, 11)
>>> update(cache, "state", lambda d: {**d, "n": d["n"] + 1}, default={"n": 0})
{'n': 1}
>>> with transaction(cache, "alice", "bob") as txn:
...     txn["alice"], txn["bob"] = txn.get("alice", 10) - 3, txn.get("bob", 0) + 3
>>> cache.get("alice"), cache.get("bob")
(7, 3)
>>> with lock(cache, "report", timeout=5):
...     pass
>>> get_or_compute(cache, "answer", lambda: 6 * 7)
42
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Final, TypeVar

from . import computed
from .errors import InvalidArgument
from .resolve import CacheLike, strategy_for
from .strategy import LockHandle, Timeout, Transaction, check_key

T = TypeVar("T")


class _Configured(enum.Enum):
    """The default of :func:`lock`'s wait: the strategy's ``lock_timeout`` setting."""

    WAIT = "CACHEKIT_LOCK_TIMEOUT"


#: ``lock(cache, name)`` waits ``CACHEKIT_LOCK_TIMEOUT`` (default 10 s).
CONFIGURED: Final = _Configured.WAIT


def incr(cache: CacheLike, key: str, delta: int = 1, timeout: Timeout = None) -> int:
    """Add ``delta`` to the int at ``key`` atomically and return the new value.

    A missing (or expired) key counts as 0. ``timeout=None`` keeps an existing
    key's expiry and gives a new key none; a number of seconds sets it, 0
    meaning never. Raises :class:`~cachekit.errors.ValueTypeError` if the key
    holds something other than an int.
    """
    return strategy_for(cache).incr(key, delta, timeout)


def update(
    cache: CacheLike,
    key: str,
    fn: Callable[[Any], T],
    default: Any = None,
    timeout: Timeout = None,
) -> T:
    """Replace the value ``v`` at ``key`` with ``fn(v)`` atomically and return it.

    ``fn`` receives ``default`` (a deep copy of it) when the key is missing; it
    may mutate its argument and return it. If ``fn`` raises, its exception
    propagates and nothing is written. ``fn`` runs while the key is locked:
    keep it short, and do not update the same key from inside it.
    Expiry as for :func:`incr`.
    """
    return strategy_for(cache).update(key, fn, default, timeout)


def transaction(
    cache: CacheLike, *keys: str, timeout: Timeout = None
) -> AbstractContextManager[Transaction]:
    """Lock ``keys`` and yield a mutable mapping of their current values.

    Missing keys are absent from the mapping. On normal exit every change,
    including in-place edits of nested values, is written back; a key removed
    with ``del`` is deleted. If the block raises, nothing is written. Several
    keys are locked in a fixed order, so two transactions never deadlock
    whatever order they name their keys in. Expiry as for :func:`incr`, for
    the keys the block writes.
    """
    return strategy_for(cache).transaction(keys, timeout)


def lock(
    cache: CacheLike, name: str, timeout: Timeout | _Configured = CONFIGURED
) -> AbstractContextManager[LockHandle]:
    """Mutual exclusion across threads, processes and hosts for the block, by ``name``.

    Waits at most ``timeout`` seconds (``None``: no limit; by default the
    ``CACHEKIT_LOCK_TIMEOUT`` setting, 10 s), then raises
    :class:`~cachekit.errors.LockTimeout`. Re-entrant within a thread. A
    process that dies holding it releases it at once (on Redis: at once on
    the same machine, after the lease from another). The block gets a
    :class:`~cachekit.strategy.LockHandle` with the grant's fencing token;
    if the lock was lost while held (a holder paused past its lease), leaving
    the block raises :class:`~cachekit.errors.LeaseLost`.
    """
    strategy = strategy_for(cache)
    if timeout is CONFIGURED:
        return strategy.lock(name, strategy.settings.lock_timeout)
    return strategy.lock(name, timeout)


def get_or_compute(
    cache: CacheLike,
    key: str,
    fn: Callable[[], T],
    timeout: Timeout = None,
    *,
    stale: Timeout = 0,
    beta: float = 0.0,
    tags: Iterable[str] = (),
) -> T:
    """Return the cached value at ``key``; on a miss compute it once with ``fn()``.

    However many threads and workers miss at the same moment, ``fn`` runs once
    and the others wait for its result. ``timeout`` is a cache timeout:
    ``None`` means the cache's default, as for ``cache.set``. If ``fn`` raises,
    nothing is cached and the next caller computes again.

    ``stale``, ``beta`` and ``tags`` are :func:`cachekit.memoize`'s (stale
    while revalidate, early refresh, :func:`cachekit.invalidate`). With any of
    them the key holds a record of :mod:`cachekit.computed` rather than the
    bare value, so read such a key through ``get_or_compute`` alone, always
    with the same parameters. Unlike the decorators it never fails open.
    """
    strategy = strategy_for(cache)
    strategy.started("get_or_compute")
    if not stale and not beta and not tags:
        policy = computed.Policy.plain(timeout)
        return computed.fetch(strategy, check_key(key), fn, policy)
    if isinstance(tags, str):
        raise InvalidArgument(f"tags must be a collection of str, not the str {tags!r}")
    policy = computed.Policy.of("get_or_compute", timeout, stale, beta, fail_open=False)
    return computed.fetch(strategy, check_key(key), fn, policy, [check_key(t) for t in tags])


def statistics(cache: CacheLike, *, merged: bool = True) -> dict[str, Any]:
    """cachekit's figures for ``cache``: operations, lock waits (p50, p99), timeouts, retries.

    ``"memo"`` holds the figures of each memoized function and view (see
    :mod:`cachekit.computed`), of every function decorated in this process.

    ``merged=True``: every worker's, as they flushed them into the shared cache
    (this process flushes first); ``merged=False``: this process's alone.
    See :mod:`cachekit.stats`.
    """
    strategy = strategy_for(cache)
    if not merged:
        return {**strategy.process_stats(), "memo": computed.statistics(strategy, merged=False)}
    strategy.flush_stats()
    return {**strategy.merged_stats(), "memo": computed.statistics(strategy, merged=True)}
