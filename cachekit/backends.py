"""The backend registry: which strategy serves which backend class, imported lazily.

In the spirit of dogpile.cache's ``register_backend`` and ``limits``'
``STORAGE_SCHEME``: a backend class is named by ``"module:QualName"`` and its
strategy by ``"module:Class"``, so that nothing is imported until a backend of
that kind is met (the Redis strategy needs redis-py, the LMDB one py-lmdb).
A backend matches the first class of its MRO that is registered, so
subclasses (Flask-Caching's ``RedisSentinelCache``, an app's own
``FileSystemCache`` subclass) find their base's strategy, and a registration
for a subclass wins over its base's.

A third party adds a backend family in one place::

    from cachekit.backends import register_backend

    register_backend("mypkg.cache:TinyCache", "mypkg.cachekit:TinyStrategy")

Invariant: ``resolve``, ``doctor``, ``limits_storage`` and the extension ask
this module, and only this module, which strategy answers for a backend;
none of them tests a backend's type.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any, Final

from .errors import UnsupportedBackend

if TYPE_CHECKING:
    from .strategy import Strategy

#: The backends cachekit itself serves, most specific first within a family.
BUILTIN: Final = (
    ("cachekit.lmdb.backend:LMDBCache", "cachekit.lmdb.strategy:LMDBStrategy"),
    ("cachelib.file:FileSystemCache", "cachekit.filesystem:FileSystemStrategy"),
    ("cachelib.simple:SimpleCache", "cachekit.simple:SimpleStrategy"),
    ("cachelib.redis:RedisCache", "cachekit.redis.strategy:RedisStrategy"),
    ("cachelib.valkey:ValkeyCache", "cachekit.redis.strategy:RedisStrategy"),
)

#: What cachekit advises when a backend has no strategy.
ADVICE: Final = (
    "set CACHE_TYPE to cachekit.LMDBCache or FileSystemCache (one machine), RedisCache"
    " (or RedisSentinelCache, RedisClusterCache, ValkeyCache) across machines, or"
    " SimpleCache (one process)"
)

_registry: dict[str, str | type[Strategy]] = dict(BUILTIN)
_loaded: dict[str, type[Strategy]] = {}
_lock = threading.Lock()


def class_path(cls: type) -> str:
    """``"module:QualName"`` of a class: the name the registry knows it by."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_backend(backend: str | type, strategy: str | type[Strategy]) -> None:
    """Serve instances of ``backend`` (and its subclasses) with ``strategy``.

    Either may be given as a class or as ``"module:QualName"`` (imported at
    the first backend that needs it). A later registration of the same
    backend class replaces the earlier one; strategies already created for
    live backends are kept.
    """
    name = backend if isinstance(backend, str) else class_path(backend)
    if ":" not in name:
        raise ValueError(f"a backend is named 'module:QualName', not {name!r}")
    with _lock:
        _registry[name] = strategy
        _loaded.pop(name, None)


def strategy_class(backend: Any) -> type[Strategy]:
    """The strategy class registered for ``backend``'s class, or :class:`UnsupportedBackend`."""
    kind = type(backend)
    for cls in kind.__mro__:
        name = class_path(cls)
        found = _loaded.get(name)
        if found is not None:
            return found
        registered = _registry.get(name)
        if registered is not None:
            loaded = _load(registered)
            _loaded[name] = loaded
            return loaded
    hint = ""
    if any(cls.__name__ == "NullCache" for cls in kind.__mro__):
        hint = " NullCache stores nothing (it is Flask-Caching's default CACHE_TYPE)."
    raise UnsupportedBackend(
        f"cachekit has no atomic strategy for {kind.__name__}.{hint} {ADVICE[0].upper()}"
        f"{ADVICE[1:]}.",
        backend=kind.__name__,
    )


def _load(registered: str | type[Strategy]) -> type[Strategy]:
    if not isinstance(registered, str):
        return registered
    module, _, name = registered.partition(":")
    found: type[Strategy] = getattr(importlib.import_module(module), name)
    return found


def unavailable(backends: list[Any]) -> tuple[type[Exception], ...]:
    """The exceptions that mean "not now, try again" (503) for any of ``backends``.

    Each strategy class lists its own (:attr:`Strategy.unavailable`: Redis's
    connection errors met by a plain ``cache.get``); a backend without a
    strategy adds none.
    """
    found: list[type[Exception]] = []
    for backend in backends:
        try:
            kinds = strategy_class(backend).unavailable
        except UnsupportedBackend:
            continue
        found += [kind for kind in kinds if kind not in found]
    return tuple(found)
