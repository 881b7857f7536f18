"""cachekit's tunable waits and timeouts, in one value, with the ``CACHEKIT_*`` keys that set them.

A strategy takes its :class:`Settings` when it is created: from the app's
configuration (``CACHEKIT_KEY_WAIT`` and the rest) when the helper is given
the app's ``flask_caching.Cache`` inside an app context, otherwise from
:data:`DEFAULTS`. Every value is in seconds.

>>> Settings.from_config({"CACHEKIT_REDIS_TIMEOUT": "2.5"}).redis_timeout
2.5
>>> Settings.from_config({"CACHEKIT_LEASE": -1})
Traceback (most recent call last):
...
cachekit.errors.ConfigurationError: CACHEKIT_LEASE must be a finite number of seconds > 0, not -1
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .errors import ConfigurationError


@dataclass(frozen=True)
class Settings:
    """Waits and timeouts of one strategy; all finite and > 0."""

    #: Longest wait for the lock of a key (incr, update, transaction).
    key_wait: float = 30.0
    #: Longest wait for another caller's computation in get_or_compute.
    compute_wait: float = 60.0
    #: Redis: how long a holder's lease lasts without renewal (renewed every third of it).
    #: A holder on another machine that dies blocks the others this long at most.
    lease: float = 10.0
    #: Redis: longest wait for one reply; past it the helper raises StorageError.
    redis_timeout: float = 5.0
    #: Redis: longest wait to open a connection.
    redis_connect_timeout: float = 1.0
    #: ``lock()``'s wait when the call names none.
    lock_timeout: float = 10.0
    #: Longest time a process keeps its statistics before adding them to the shared cache
    #: (a timer flushes idle processes too).
    stats_interval: float = 1.0
    #: After a storage error, how long memoized functions of this process skip the cache.
    fail_open_pause: float = 1.0
    #: Redis: longest wait for each reply of the start-up checks and of ``doctor``.
    check_timeout: float = 2.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(
                    f"{CONFIG_KEYS[field.name]} must be a finite number of seconds > 0,"
                    f" not {value!r}",
                    setting=CONFIG_KEYS[field.name],
                )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], base: Settings | None = None) -> Settings:
        """``base`` (default :data:`DEFAULTS`) with the ``CACHEKIT_*`` keys ``config`` sets."""
        base = base or DEFAULTS
        changes: dict[str, Any] = {}
        for name, key in CONFIG_KEYS.items():
            if key in config:
                value = config[key]
                try:
                    changes[name] = float(value) if isinstance(value, str) else value
                except ValueError:
                    changes[name] = value
        return dataclasses.replace(base, **changes) if changes else base


#: The app configuration key of each setting.
CONFIG_KEYS: Final = {
    "key_wait": "CACHEKIT_KEY_WAIT",
    "compute_wait": "CACHEKIT_COMPUTE_WAIT",
    "lease": "CACHEKIT_LEASE",
    "redis_timeout": "CACHEKIT_REDIS_TIMEOUT",
    "redis_connect_timeout": "CACHEKIT_REDIS_CONNECT_TIMEOUT",
    "lock_timeout": "CACHEKIT_LOCK_TIMEOUT",
    "stats_interval": "CACHEKIT_STATS_INTERVAL",
    "fail_open_pause": "CACHEKIT_FAIL_OPEN_PAUSE",
    "check_timeout": "CACHEKIT_CHECK_TIMEOUT",
}

#: The settings of a strategy created without an app's configuration.
DEFAULTS = Settings()
