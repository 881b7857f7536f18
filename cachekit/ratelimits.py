"""The native rate limits a strategy may offer ``cachekit://`` (:mod:`cachekit.limits_storage`).

A backend with server-side scripts (Redis) counts each hit in one step on
the server, by the server's clock; :meth:`cachekit.strategy.Strategy.rate_limits`
returns such an implementation, or None for the generic one (one
``update`` per hit). Names are the storage's own keys, before the cache's
prefix, which the implementation applies. Every method raises cachekit's
errors only (:class:`~cachekit.errors.StorageError` when the server fails).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RateLimits(Protocol):
    """One atomic server-side step per hit, for each strategy of ``limits``."""

    def fixed_hit(self, name: str, amount: int, expiry_ms: int) -> int:
        """Add ``amount`` to the open fixed window (opened for ``expiry_ms``); the count."""
        ...

    def fixed_count(self, name: str) -> int:
        """The count of the open fixed window (0 if none)."""
        ...

    def fixed_expiry(self, name: str) -> float:
        """Seconds until the open fixed window ends (0 if none)."""
        ...

    def moving_acquire(self, name: str, limit: int, expiry_ms: int, amount: int) -> bool:
        """Record ``amount`` entries if they fit in the moving window; whether they did."""
        ...

    def moving_window(self, name: str, limit: int, expiry_ms: int) -> tuple[float, int]:
        """(seconds since the oldest entry in the window, entries in the window)."""
        ...

    def sliding_acquire(self, name: str, expiry_ms: int, limit: int, amount: int) -> bool:
        """Count ``amount`` hits if the weighted count of both windows leaves room."""
        ...

    def sliding_window(self, name: str, expiry_ms: int) -> tuple[int, float, int, float]:
        """(previous count, s it still weighs, current count, s the current window lasts)."""
        ...

    def delete(self, names: Sequence[str]) -> None:
        """Forget the windows stored under ``names``."""
        ...

    def reset(self, prefix: str) -> int:
        """Delete every key under ``prefix``; how many."""
        ...
