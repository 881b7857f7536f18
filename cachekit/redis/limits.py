"""Rate limits on Redis (and Sentinel, Cluster, Valkey): one Lua script per hit.

The native implementation of :class:`cachekit.ratelimits.RateLimits` that
:meth:`cachekit.redis.strategy.RedisStrategy.rate_limits` offers
``cachekit://``. Each hit is one script (``scripts/limit_*.lua``) that reads
the window, decides and records, by the server's clock, so hosts whose clocks
differ still share one window; no lock is taken. Every limit is one key, so a
Cluster's hash slots need nothing. Errors are translated at this boundary.

With ``CACHEKIT_REDIS_DURABLE_WRITES = N`` a hit counts only once ``N``
replicas have it (the script and ``WAIT`` on one connection,
:class:`~.replication.Replication`): a failover then loses no hit that was
let through, so the new master does not let it through again. A hit fewer
replicas confirmed raises :class:`~cachekit.errors.StorageError` (it may or
may not be counted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .replication import Replication
from .scripts import Scripts
from .translate import translated


class RedisRateLimits:
    """The rate-limit scripts on a strategy's own client, under the cache's key prefix."""

    def __init__(
        self,
        client: Any,
        scripts: Scripts,
        key: Callable[[str], str],
        replication: Replication | None = None,
        durable: int = 0,
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._key = key
        self._replication = replication
        self._durable = durable if replication is not None else 0

    def _hit(self, script: Any, name: str, args: list[Any]) -> Any:
        """Run a hit's ``script`` on ``name``'s key, confirmed by the durable replicas if any."""
        key = self._key(name)
        if self._replication is None or not self._durable:
            return script(keys=[key], args=args)
        reply, confirmed = self._replication.run(script, [key], args, self._durable)
        self._replication.confirm(confirmed, self._durable, "counting a rate limit hit", name)
        return reply

    def fixed_hit(self, name: str, amount: int, expiry_ms: int) -> int:
        with translated("counting a rate limit hit", name):
            return int(self._hit(self._scripts.limit_fixed, name, [amount, expiry_ms]))

    def fixed_count(self, name: str) -> int:
        with translated("reading a rate limit", name):
            return int(self._client.get(self._key(name)) or 0)

    def fixed_expiry(self, name: str) -> float:
        with translated("reading a rate limit", name):
            return max(int(self._client.pttl(self._key(name))), 0) / 1000

    def moving_acquire(self, name: str, limit: int, expiry_ms: int, amount: int) -> bool:
        with translated("counting a rate limit hit", name):
            args = ["acquire", limit, expiry_ms, amount]
            return bool(self._hit(self._scripts.limit_moving, name, args))

    def moving_window(self, name: str, limit: int, expiry_ms: int) -> tuple[float, int]:
        with translated("reading a rate limit", name):
            oldest, count, now = self._scripts.limit_moving(
                keys=[self._key(name)], args=["read", limit, expiry_ms]
            )
        return (int(now) - int(oldest)) / 1000, int(count)

    def sliding_acquire(self, name: str, expiry_ms: int, limit: int, amount: int) -> bool:
        with translated("counting a rate limit hit", name):
            args = ["acquire", expiry_ms, limit, amount]
            return bool(self._hit(self._scripts.limit_sliding, name, args))

    def sliding_window(self, name: str, expiry_ms: int) -> tuple[int, float, int, float]:
        with translated("reading a rate limit", name):
            previous, weighs, current, lasts = self._scripts.limit_sliding(
                keys=[self._key(name)], args=["read", expiry_ms]
            )
        return int(previous), int(weighs) / 1000, int(current), int(lasts) / 1000

    def delete(self, names: Sequence[str]) -> None:
        with translated("clearing a rate limit", names[0] if names else None):
            for name in names:  # (one at a time: on a Cluster they may be in other slots)
                self._client.delete(self._key(name))

    def reset(self, prefix: str) -> int:
        pattern = _glob_escape(self._key(prefix)) + "*"
        deleted = 0
        with translated("resetting the rate limits"):
            for full_key in self._client.scan_iter(match=pattern, count=1000):
                deleted += int(self._client.delete(full_key))
        return deleted


def _glob_escape(text: str) -> str:
    r"""``text`` with the glob characters of ``SCAN MATCH`` escaped.

    >>> _glob_escape("a*b?[c]")
    'a\\*b\\?\\[c\\]'
    """
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


__all__ = ["RedisRateLimits"]
