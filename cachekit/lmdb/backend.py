"""``LMDBCache``: a complete Flask-Caching backend on LMDB (``CACHE_TYPE = "cachekit.LMDBCache"``).

It implements cachelib's ``BaseCache`` API, so ``cache.get``, ``cache.set``,
``@cache.cached`` and ``@cache.memoize`` work on it unchanged, and its own
``inc``, ``dec`` and ``add`` are atomic across every process of the machine.
The cachekit helpers run on it natively (:mod:`cachekit.lmdb.strategy`).

Configuration, the Flask-Caching way: ``CACHE_DIR`` (required),
``CACHE_DEFAULT_TIMEOUT``, and in ``CACHE_OPTIONS``:

- ``map_size``: the most the store can hold, in bytes (default 8 GiB; the
  file grows only as it fills). Past it a write raises
  :class:`~cachekit.errors.WriteError` with nothing written; nothing is evicted.
- ``durability``: ``"process"`` (the default) keeps everything a returned
  call wrote when any process crashes, even by ``kill -9``, but not
  necessarily when the machine does; ``"machine"`` also flushes every
  commit to disk (an fsync per write), so it survives power loss.

``CACHE_THRESHOLD`` does not apply: the store never evicts. Expired entries
read as missing and are deleted by a bounded sweep.

Timeouts follow cachelib: ``None`` is the default timeout, ``0`` never,
seconds or a ``timedelta`` otherwise. ``inc`` and ``dec``, like Redis's
``INCRBY``, keep an existing key's expiry and give a new key none.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from flask_caching.backends.base import BaseCache

from ..errors import ConfigurationError, InvalidArgument, SerializationError
from ..strategy import MAX_EXPIRES, check_key
from .store import DEFAULT_MAP_SIZE, DURABILITIES, EXPIRED, Options, Store, expiry, pack, value


class LMDBCache(BaseCache):
    """A Flask-Caching backend on an LMDB store in ``cache_dir``, shared by every process."""

    def __init__(
        self,
        cache_dir: str,
        default_timeout: int | dt.timedelta = 300,
        map_size: int = DEFAULT_MAP_SIZE,
        durability: str = "process",
        ignore_delete_many_errors: bool = False,
        **ignored: Any,
    ) -> None:
        super().__init__(
            default_timeout=math.ceil(_seconds(default_timeout, "CACHE_DEFAULT_TIMEOUT"))
        )
        if durability not in DURABILITIES:
            raise ConfigurationError(
                f"LMDBCache durability must be one of {DURABILITIES}, not {durability!r}",
                setting="CACHE_OPTIONS",
            )
        if not isinstance(map_size, int) or isinstance(map_size, bool) or map_size < 1 << 20:
            raise ConfigurationError(
                f"LMDBCache map_size must be a number of bytes of at least 1 MiB, not {map_size!r}",
                setting="CACHE_OPTIONS",
            )
        self.ignore_delete_many_errors = ignore_delete_many_errors
        self._store = Store(cache_dir, Options(map_size, durability))  # type: ignore[arg-type]

    @classmethod
    def factory(
        cls, app: Any, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> LMDBCache:
        """What Flask-Caching calls for ``CACHE_TYPE = "cachekit.LMDBCache"``."""
        directory = config.get("CACHE_DIR")
        if not directory:
            raise ConfigurationError(
                "CACHE_TYPE cachekit.LMDBCache needs CACHE_DIR, the directory of the store",
                setting="CACHE_DIR",
            )
        kwargs.pop("ignore_errors", None)
        return cls(directory, *args, **kwargs)

    @property
    def directory(self) -> str:
        """The real path of the store's directory."""
        return self._store.directory

    @property
    def options(self) -> Options:
        return self._store.options

    # -- timeouts ----------------------------------------------------------------------

    def _expires(self, timeout: int | float | dt.timedelta | None) -> int:
        seconds = self.default_timeout if timeout is None else _seconds(timeout, "timeout")
        if seconds == 0:
            return 0
        expires = int(time.time()) + math.ceil(seconds)
        if expires > MAX_EXPIRES:
            raise InvalidArgument(
                f"timeout {timeout!r} ends after 2106; use 0 for no expiry", timeout=timeout
            )
        return max(expires, 1)  # a negative timeout: already expired

    # -- reading -----------------------------------------------------------------------

    def get(self, key: str) -> Any:
        store = self._store
        try:  # the hot path: a short str key (anything else is checked, and maybe refused)
            name = key.encode("utf-8")
        except (AttributeError, UnicodeEncodeError):
            name = b""
        if not name or len(name) > store.max_key:
            name = store.key(check_key(key))
        stored = store.get(name)
        if stored is None:
            return None
        found = value(key, stored, time.time(), store.codec)
        return None if found is EXPIRED else found

    def get_many(self, *keys: str) -> list[Any]:
        store = self._store
        now = time.time()
        values = []
        for key, stored in zip(
            keys, store.get_many([store.key(check_key(key)) for key in keys]), strict=True
        ):
            found = EXPIRED if stored is None else value(key, stored, now, store.codec)
            values.append(None if found is EXPIRED else found)
        return values

    def has(self, key: str) -> bool:
        stored = self._store.get(self._store.key(check_key(key)))
        return stored is not None and not _expired(expiry(stored), time.time())

    # -- writing -----------------------------------------------------------------------

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        stored = _packed(key, self._expires(timeout), value, self._store.codec)
        name = self._store.key(check_key(key))
        with self._store.writing(len(stored)) as txn:
            txn.put(name, stored)
        return True

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        stored = _packed(key, self._expires(timeout), value, self._store.codec)
        name = self._store.key(check_key(key))
        with self._store.writing(len(stored)) as txn:
            old = txn.get(name)  # judged by its expiry alone: nothing is unpickled in here
            if old is not None and not _expired(expiry(old), time.time()):
                return False
            txn.put(name, stored)
        return True

    def set_many(
        self, mapping: dict[str, Any], timeout: int | dt.timedelta | None = None
    ) -> list[Any]:
        expires = self._expires(timeout)
        items = [
            (self._store.key(check_key(k)), _packed(k, expires, v, self._store.codec))
            for k, v in mapping.items()
        ]
        with self._store.writing(sum(len(stored) for _, stored in items), len(items)) as txn:
            for name, stored in items:
                txn.put(name, stored)
        return list(mapping)

    def delete(self, key: str) -> bool:
        name = self._store.key(check_key(key))
        with self._store.writing() as txn:
            old = txn.pop(name)
        return old is not None and not _expired(expiry(old), time.time())

    def delete_many(self, *keys: str) -> list[Any]:
        names = [self._store.key(check_key(key)) for key in keys]
        with self._store.writing(0, len(names)) as txn:
            for name in names:
                txn.delete(name)
        return list(keys)

    def clear(self) -> bool:
        self._store.clear()
        return True

    def inc(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` atomically (a missing key counts as 0); the new value."""
        from ..resolve import strategy_for

        return strategy_for(self).incr(key, delta, None)

    def dec(self, key: str, delta: int = 1) -> int:
        """Subtract ``delta`` atomically (a missing key counts as 0); the new value."""
        return self.inc(key, -delta)

    def fullness(self) -> tuple[int, int]:
        """(bytes the store uses, its map_size), read without a transaction (see the store)."""
        return self._store.fullness()

    def __repr__(self) -> str:
        return f"LMDBCache({self.directory!r}, {self.options})"


def _expired(expires: int, now: float) -> bool:
    return bool(expires) and expires < now


def _packed(key: str, expires: int, value: Any, codec: Any = None) -> bytes:
    """The stored form of ``value``; :class:`~cachekit.errors.SerializationError` if impossible.

    Signed when a ``codec`` that signs is installed (:mod:`cachekit.signing`).
    """
    try:
        return pack(expires, value, codec)
    except Exception as error:
        raise SerializationError(
            f"cannot store key {key!r}: a {type(value).__name__} value cannot be pickled"
            f" ({type(error).__name__}: {error}); the old value is kept",
            key=key,
        ) from error


def _seconds(timeout: Any, what: str) -> int | float:
    if isinstance(timeout, dt.timedelta):
        return math.ceil(timeout.total_seconds())
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        if not math.isfinite(timeout):
            raise InvalidArgument(f"{what} must be finite, not {timeout!r}", timeout=timeout)
        return timeout
    raise InvalidArgument(
        f"{what} must be a number of seconds or a timedelta, not {type(timeout).__name__}",
        timeout=timeout,
    )
