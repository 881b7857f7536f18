"""``cachekit://``: a storage for Flask-Limiter (through ``limits``) on the app's own cache.

With ``Limiter(key_func, app=app, storage_uri="cachekit://")`` Flask-Limiter
counts in the backend of the app's ``flask_caching.Cache`` (the one
:class:`~cachekit.CacheKit` was set up with), whatever ``CACHE_TYPE`` is:
FileSystemCache, LMDBCache, Redis, Sentinel, Cluster; SimpleCache in one
process only (several workers get :class:`~cachekit.PerProcessBackend`, as
every helper does). The scheme is registered when ``cachekit`` is imported
with ``limits`` installed. ``storage_options={"cache": cache}`` names the
cache outright (for use outside an app context).

All three strategies of ``limits`` are exact across threads, processes and
(on Redis) hosts: each hit is one atomic step that reads the window, decides
and records, so a limit of 100 lets exactly 100 of 300 concurrent hits
through. (The sliding window counter is, by design, an approximation of a
sliding window: its windows are aligned to the clock, and a hit just past an
edge weighs the previous window's count by the share of it still in view,
rounded down, as ``limits``' own storages do. Exact here means no hit is lost
or counted twice.)

- **Redis** (and Sentinel, Cluster): one Lua script per hit
  (``scripts/limit_*.lua``), no lock, on the strategy's own client, under
  the cache's key prefix. Times are the server's clock, so hosts whose
  clocks differ still share one window. Every limit is one key, so Cluster's
  hash slots need nothing.
- **The other backends**: one :func:`cachekit.update` per hit, of one record
  per limit: ``[count, window's end]`` (fixed), the entries' times, newest
  first, at most ``limit`` (moving), ``[window number, previous count,
  current count]`` (sliding window counter). So no hit is lost between two
  keys, and the sliding window never over-admits and then takes a hit back,
  as two counters would.

Keys are ``cachekit:limits:<key>#fixed``, ``#moving`` and ``#sliding``,
stored with a timeout a little past their window so that the backend drops
what no one reads again (Redis and LMDB by expiry, FileSystemCache by its
sweep). :meth:`CachekitStorage.reset` deletes every key of
``cachekit:limits:`` by ``SCAN`` on Redis; elsewhere (no way to list keys)
it bumps a generation that is part of every key
(``cachekit:limits:<generation>:<key>#...``), so the old entries are never
read again and expire on their own.

Invariant: an acquire that answers False has recorded no hit (on the
backends other than Redis it may write back its record with the entries that
left the window dropped), and one that answers True has recorded its hit
before answering.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from flask import current_app, has_app_context
from limits.storage.base import MovingWindowSupport, SlidingWindowCounterSupport, Storage

from .errors import CachekitError, ConfigurationError, InvalidArgument
from .extension import state_of
from .ratelimits import RateLimits
from .resolve import strategy_for
from .strategy import Strategy, check_key

#: Every key of this storage starts with this (after the cache's own prefix).
PREFIX: Final = "cachekit:limits:"
#: The generation of the keys on backends that cannot list them (see the module's docstring).
GENERATION: Final = PREFIX + "generation"
#: Statistics: every hit checked against a limit, and those refused (by a moving window or a
#: sliding window counter; a fixed window's refusal is Flask-Limiter's reading of the count).
HITS: Final = "limit_hits"
REFUSED: Final = "limit_refusals"
_SUFFIXES: Final = ("#fixed", "#moving", "#sliding")


class CachekitStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """The ``cachekit://`` storage; see the module's docstring."""

    STORAGE_SCHEME = ["cachekit"]

    def __init__(
        self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any
    ) -> None:
        cache = options.pop("cache", None)
        if options:
            raise ConfigurationError(
                f"cachekit:// takes no options but 'cache', not {sorted(options)}",
                setting="RATELIMIT_STORAGE_OPTIONS",
            )
        if uri not in (None, "cachekit://"):
            raise ConfigurationError(
                f"the storage URI is just 'cachekit://' (the app's cache), not {uri!r}",
                setting="RATELIMIT_STORAGE_URI",
            )
        self._cache = cache
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return CachekitError

    # -- the backend ---------------------------------------------------------

    def _strategy(self) -> Strategy:
        cache = self._cache
        if cache is None:
            if not has_app_context():
                raise ConfigurationError(
                    "cachekit:// counts in the current Flask app's cache: use it inside an"
                    " app context, or name the cache (storage_options={'cache': cache})"
                )
            state = state_of(current_app)
            if state is None:
                raise ConfigurationError(
                    "cachekit:// needs CacheKit on the app: kit.init_app(app) (or"
                    " CacheKit(cache, app)) after cache.init_app(app)"
                )
            cache = state.kit.cache
        return strategy_for(cache)

    def _key(self, strategy: Strategy, key: str, suffix: str) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"a rate limit key is a non-empty string, not {key!r}")
        check_key(key)  # (UTF-8 encodable: Redis's keys are bytes too)
        if strategy.rate_limits() is not None:
            return f"{PREFIX}{key}{suffix}"
        entry = strategy.read(GENERATION)
        generation = entry.value if entry is not None else 0
        return f"{PREFIX}{generation}:{key}{suffix}"

    @staticmethod
    def _counted(strategy: Strategy, acquired: bool) -> bool:
        strategy.stats.count(HITS)
        if not acquired:
            strategy.stats.count(REFUSED)
        return acquired

    # -- fixed window --------------------------------------------------------

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to the window of ``key`` (opened now for ``expiry`` s if none is)."""
        strategy = self._strategy()
        name = self._key(strategy, key, "#fixed")
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                count = native.fixed_hit(name, amount, _ms(expiry))
            strategy.stats.count(HITS)
            return count

        def hit(record: list[float] | None) -> list[float]:
            now = time.time()
            if record is None or record[1] <= now:
                return [amount, now + expiry]
            return [record[0] + amount, record[1]]

        record = strategy.update(name, hit, None, _keep(expiry))
        strategy.stats.count(HITS)
        return int(record[0])

    def get(self, key: str) -> int:
        """The count of the open fixed window of ``key`` (0 if none)."""
        strategy = self._strategy()
        name = self._key(strategy, key, "#fixed")
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                return native.fixed_count(name)
        record = _live_fixed(strategy, name)
        return 0 if record is None else int(record[0])

    def get_expiry(self, key: str) -> float:
        """When the open fixed window of ``key`` ends (Unix time; now if none is open)."""
        strategy = self._strategy()
        name = self._key(strategy, key, "#fixed")
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                return time.time() + native.fixed_expiry(name)
        record = _live_fixed(strategy, name)
        return time.time() if record is None else float(record[1])

    # -- moving window -------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Record ``amount`` entries if they fit in the last ``expiry`` s, with ``limit``."""
        strategy = self._strategy()
        name = self._key(strategy, key, "#moving")
        if amount > limit:
            return self._counted(strategy, False)
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                acquired = native.moving_acquire(name, limit, _ms(expiry), amount)
            return self._counted(strategy, acquired)
        fitted = False

        def hit(entries: list[float] | None) -> list[float]:
            nonlocal fitted  # (the last run's verdict is the one written)
            now = time.time()
            recent = [at for at in entries or () if at > now - expiry]
            fitted = len(recent) + amount <= limit
            return ([now] * amount + recent)[:limit] if fitted else recent

        strategy.update(name, hit, None, _keep(expiry))
        return self._counted(strategy, fitted)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(Unix time of the oldest entry in the window, or now; entries in the window)."""
        strategy = self._strategy()
        name = self._key(strategy, key, "#moving")
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                age, count = native.moving_window(name, limit, _ms(expiry))
            return time.time() - age, count
        entry = strategy.read(name)
        now = time.time()
        recent = [at for at in (entry.value if entry else ())[:limit] if at > now - expiry]
        return (recent[-1], len(recent)) if recent else (now, 0)

    # -- sliding window counter ----------------------------------------------

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        """Count ``amount`` hits if the weighted count of both windows leaves room."""
        strategy = self._strategy()
        name = self._key(strategy, key, "#sliding")
        if amount > limit:
            return self._counted(strategy, False)
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                acquired = native.sliding_acquire(name, _ms(expiry), limit, amount)
            return self._counted(strategy, acquired)
        fitted = False

        def hit(record: list[int] | None) -> list[int]:
            nonlocal fitted
            now = time.time()
            window, previous, current, left = _rolled(record, now, expiry)
            fitted = math.floor(previous * left / expiry + current) + amount <= limit
            return [window, previous, current + amount if fitted else current]

        strategy.update(name, hit, None, _keep(2 * expiry))
        return self._counted(strategy, fitted)

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        """(previous count, s it still weighs, current count, s the current window lasts)."""
        strategy = self._strategy()
        name = self._key(strategy, key, "#sliding")
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                return native.sliding_window(name, _ms(expiry))
        entry = strategy.read(name)
        _, previous, current, left = _rolled(entry.value if entry else None, time.time(), expiry)
        return previous, (left if previous else 0.0), current, left + expiry

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        self._delete(key, ("#sliding",))

    # -- the rest ------------------------------------------------------------

    def clear(self, key: str) -> None:
        """Forget every window of ``key``, whatever its strategy."""
        self._delete(key, _SUFFIXES)

    def _delete(self, key: str, suffixes: tuple[str, ...]) -> None:
        strategy = self._strategy()
        names = [self._key(strategy, key, suffix) for suffix in suffixes]
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                native.delete(names)
            return
        with strategy.transaction(names, None) as txn:
            for name in names:
                txn.pop(name, None)

    def reset(self) -> int | None:
        """Forget every rate limit; on Redis the number of keys deleted, elsewhere None."""
        strategy = self._strategy()
        if (native := strategy.rate_limits()) is not None:
            with _finishing(strategy):
                return native.reset(PREFIX)
        strategy.incr(GENERATION, 1, None)
        return None

    def check(self) -> bool:
        """True if the cache answers."""
        try:
            self._strategy().read(GENERATION)
        except Exception:  # (the point is to tell, not to raise)
            return False
        return True


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _keep(seconds: float) -> int:
    """How long the backend keeps a record: past its window, in whole seconds."""
    return math.ceil(seconds) + 1


def _live_fixed(strategy: Strategy, name: str) -> list[float] | None:
    entry = strategy.read(name)
    if entry is None or entry.value[1] <= time.time():
        return None
    value: list[float] = entry.value
    return value


def _rolled(record: list[int] | None, now: float, expiry: float) -> tuple[int, int, int, float]:
    """(window number, previous count, current count, s left of the window) at ``now``.

    >>> _rolled([99, 5, 7], 100 * 60.0 + 15, 60)  # one window on: the current one is previous
    (100, 7, 0, 45.0)
    >>> _rolled([97, 5, 7], 100 * 60.0, 60)  # two or more on: both are empty
    (100, 0, 0, 60.0)
    """
    window = math.floor(now / expiry)
    left = expiry - now % expiry
    if record is None:
        return window, 0, 0, left
    at, previous, current = record
    if at == window - 1:
        return window, current, 0, left
    if at < window - 1:
        return window, 0, 0, left
    return max(at, window), previous, current, left  # (this clock went back: stay in the newer)


@contextmanager
def _finishing(strategy: Strategy) -> Iterator[None]:
    """A native step of ``strategy``'s rate limits, ended as every operation is."""
    try:
        yield
    finally:
        strategy.finished()


__all__ = ["CachekitStorage", "RateLimits"]
