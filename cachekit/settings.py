"""cachekit's tunable waits and timeouts, in one value, with the ``CACHEKIT_*`` keys that set them.

A strategy takes its :class:`Settings` when it is created: from the app's
configuration (``CACHEKIT_KEY_WAIT`` and the rest) when the helper is given
the app's ``flask_caching.Cache`` inside an app context, otherwise from
:data:`DEFAULTS`. Every value is in seconds, but the replica counts
(``CACHEKIT_REDIS_LEASE_REPLICAS``, ``CACHEKIT_REDIS_DURABLE_WRITES``).

>>> Settings.from_config({"CACHEKIT_REDIS_TIMEOUT": "2.5"}).redis_timeout
2.5
>>> Settings.from_config({"CACHEKIT_REDIS_DURABLE_WRITES": "1"}).durable_writes
1
>>> Settings.from_config({"CACHEKIT_REDIS_LEASE_REPLICAS": 0.5})
Traceback (most recent call last):
...
cachekit.errors.ConfigurationError: CACHEKIT_REDIS_LEASE_REPLICAS must be a whole number ...
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
class NearCacheLimits:
    """``CACHEKIT_NEAR_CACHE``: the bounds of each process's near cache (Redis only).

    ``max_entries`` and ``max_bytes`` bound it (least recently used entries go
    first; bytes counted as each entry's stored form and key plus a fixed
    overhead). ``max_silence`` is how long a hit may be served without a
    heartbeat answered on the tracking connection: what a partition that
    silently drops that connection's traffic can leave stale, at most.

    >>> NearCacheLimits.of({"max_entries": 1000})
    NearCacheLimits(max_entries=1000, max_bytes=67108864, max_silence=0.25)
    >>> NearCacheLimits.of(False) is None
    True
    """

    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    max_silence: float = 0.25

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"CACHEKIT_NEAR_CACHE's {name} must be a whole number >= 1, not {value!r}",
                    setting="CACHEKIT_NEAR_CACHE",
                )
        silence = self.max_silence
        if (
            not isinstance(silence, (int, float))
            or isinstance(silence, bool)
            or not 0.01 <= silence <= 60
        ):
            raise ConfigurationError(
                "CACHEKIT_NEAR_CACHE's max_silence must be a number of seconds from 0.01 to"
                f" 60, not {silence!r}",
                setting="CACHEKIT_NEAR_CACHE",
            )

    @classmethod
    def of(cls, value: Any) -> NearCacheLimits | None:
        """The limits a configured value asks for: a mapping, True (the defaults), or off.

        Off: None, False, ``{}``-less falsy values and the strings "0", "false", "off".
        """
        if isinstance(value, cls):
            return value
        if value is None or value is False or (isinstance(value, str) and value.lower() in (
            "", "0", "false", "off", "none"
        )):  # fmt: skip
            return None
        if value is True or (isinstance(value, str) and value.lower() in ("1", "true", "on")):
            return cls()
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"max_entries", "max_bytes", "max_silence"})
            if unknown:
                raise ConfigurationError(
                    f"CACHEKIT_NEAR_CACHE has no setting {unknown[0]!r} (it takes max_entries,"
                    " max_bytes and max_silence)",
                    setting="CACHEKIT_NEAR_CACHE",
                )
            return cls(**value)
        raise ConfigurationError(
            'CACHEKIT_NEAR_CACHE must be a mapping such as {"max_entries": 100000,'
            f' "max_bytes": 67108864}}, True or None, not {value!r}',
            setting="CACHEKIT_NEAR_CACHE",
        )


@dataclass(frozen=True)
class Settings:
    """Waits and timeouts of one strategy, all finite and > 0; and replica counts, ints >= 0."""

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
    #: Redis with replicas (Sentinel, Cluster, or a master with connected replicas): how
    #: many replicas must confirm (``WAIT``) each lease grant, renewal and release and each
    #: transaction commit before it counts. A grant no replica confirmed (on a master being
    #: replaced, or one that lost its replicas) is given back and tried again; so no lease
    #: is granted on a master without that many replicas. 0 turns it off. Ignored where
    #: the server had no replicas when the strategy was made.
    lease_replicas: int = 1
    #: Redis: how many replicas must confirm (``WAIT``) every cachekit write (``incr``,
    #: ``update``, commits, leases) before it is acknowledged; one not confirmed in time
    #: raises StorageError (the write may or may not be kept). 0 (the default): writes are
    #: acknowledged when the master has them, and a master that dies or is replaced can
    #: lose the last ones (Redis replicates asynchronously).
    durable_writes: int = 0
    #: Sign stored values with an HMAC keyed from SECRET_KEY (:mod:`cachekit.signing`);
    #: None: on when the app has a SECRET_KEY.
    sign_values: bool | None = None
    #: What a stored value without a signature does: "refuse" (TamperedValue), "miss"
    #: (reads as missing) or "accept" (read unverified: during an upgrade only).
    unsigned: str = "refuse"
    #: How values are serialized: "pickle", or "json" (Flask's tagged JSON, no pickle at all).
    serializer: str = "pickle"
    #: Redis: the near cache (:mod:`cachekit.redis.near`), each process's own copy of the
    #: memo records and tag generations it read, invalidated by the server; None: off.
    near_cache: NearCacheLimits | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "near_cache":
                if value is not None and not isinstance(value, NearCacheLimits):
                    raise ConfigurationError(
                        f"CACHEKIT_NEAR_CACHE must be None or NearCacheLimits, not {value!r}",
                        setting="CACHEKIT_NEAR_CACHE",
                    )
                continue
            if field.name in CHOICES:
                _check_choice(field.name, value)
                continue
            if field.name in COUNTS:
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                    raise ConfigurationError(
                        f"{CONFIG_KEYS[field.name]} must be a whole number of replicas from 0"
                        f" to 100, not {value!r}",
                        setting=CONFIG_KEYS[field.name],
                    )
                continue
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
                    if name == "near_cache":
                        value = NearCacheLimits.of(value)
                    elif name in CHOICES:
                        value = _choice(name, value)
                    elif isinstance(value, str):
                        value = int(value) if name in COUNTS else float(value)
                    changes[name] = value
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
    "lease_replicas": "CACHEKIT_REDIS_LEASE_REPLICAS",
    "durable_writes": "CACHEKIT_REDIS_DURABLE_WRITES",
    "sign_values": "CACHEKIT_SIGN_VALUES",
    "unsigned": "CACHEKIT_UNSIGNED",
    "serializer": "CACHEKIT_SERIALIZER",
    "near_cache": "CACHEKIT_NEAR_CACHE",
}

#: The settings that count replicas (whole numbers >= 0), not seconds.
COUNTS: Final = frozenset({"lease_replicas", "durable_writes"})

#: The settings that are choices, not numbers: each with the values it may take.
CHOICES: Final = {
    "sign_values": (None, True, False),
    "unsigned": ("refuse", "miss", "accept"),
    "serializer": ("pickle", "json"),
}


def _choice(name: str, value: Any) -> Any:
    """A choice as configured: ``"true"``/``"false"`` (an environment's) for a flag."""
    if name == "sign_values" and isinstance(value, str):
        return {"true": True, "1": True, "false": False, "0": False}.get(value.lower(), value)
    return value


def _check_choice(name: str, value: Any) -> None:
    allowed = CHOICES[name]
    if not any(value is choice or (type(value) is str and value == choice) for choice in allowed):
        shown = " or ".join(repr(choice) for choice in allowed if choice is not None)
        raise ConfigurationError(
            f"{CONFIG_KEYS[name]} must be {shown}, not {value!r}", setting=CONFIG_KEYS[name]
        )


#: The settings of a strategy created without an app's configuration.
DEFAULTS = Settings()


#: The ``CACHEKIT_*`` keys read outside :class:`Settings`: the extension's and signing's.
OTHER_KEYS: Final = frozenset(
    {
        "CACHEKIT_JSON_ERRORS",
        "CACHEKIT_METRICS_PATH",
        "CACHEKIT_SIGN_VALUES",
        "CACHEKIT_UNSIGNED",
        "CACHEKIT_SERIALIZER",
    }
)


def unknown_keys(config: Mapping[str, Any], environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Each ``CACHEKIT_*`` key of ``config`` (and ``FLASK_CACHEKIT_*`` of ``environ``) that
    cachekit does not read, with the nearest real name ('' if none is near).

    A misspelled setting would otherwise change nothing, silently.

    >>> unknown_keys({"CACHEKIT_KEY_WIAT": 5, "CACHEKIT_LEASE": 3}, {})
    [('CACHEKIT_KEY_WIAT', 'CACHEKIT_KEY_WAIT')]
    >>> unknown_keys({}, {"FLASK_CACHEKIT_JSON_ERORRS": "1"})
    [('FLASK_CACHEKIT_JSON_ERORRS', 'FLASK_CACHEKIT_JSON_ERRORS')]
    """
    import difflib

    known = sorted(set(CONFIG_KEYS.values()) | OTHER_KEYS)
    found: list[tuple[str, str]] = []
    named = [(key, key, "") for key in config if isinstance(key, str)]
    named += [(key, key[len("FLASK_") :], "FLASK_") for key in environ if key.startswith("FLASK_")]
    for shown, key, prefix in sorted(set(named)):
        if not key.startswith("CACHEKIT_") or key in known:
            continue
        if prefix and shown[len(prefix) :] in config and any(s == key for s, _, _ in named):
            continue  # (from_prefixed_env copied it into the config: reported once, there)
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        found.append((shown, f"{prefix}{near[0]}" if near else ""))
    return found
