"""From the ``cache`` argument of a helper to the one strategy for its backend.

Every helper accepts either the shared ``flask_caching.Cache`` (resolved to the
backend of the current app, or of the app it was last initialised with when
there is no app context) or a cachelib / Flask-Caching backend instance.

Invariant: exactly one :class:`~cachekit.strategy.Strategy` exists per backend
instance per process, because its in-process locks are what keep that
process's threads apart; creation is therefore serialized. The strategy is
kept on the backend itself (attribute ``_cachekit_strategy``), so that it
lives and dies with it: a mapping from backends to strategies would keep every
backend alive, since each strategy refers to its backend.
"""

from __future__ import annotations

import threading
from typing import Any

import cachelib
import flask_caching

from .errors import ConfigurationError, InvalidArgument, UnsupportedBackend
from .strategy import Strategy

_creating = threading.Lock()


def backend_of(cache: Any) -> Any:
    """The backend instance behind ``cache``."""
    if isinstance(cache, flask_caching.Cache):
        try:
            return cache.cache
        except (AttributeError, KeyError, RuntimeError):
            raise ConfigurationError(
                "this flask_caching.Cache is not initialised for the current app:"
                " did you forget to call cache.init_app(app)?"
            ) from None
    if isinstance(cache, cachelib.BaseCache):
        return cache
    raise InvalidArgument(
        "expected the app's flask_caching.Cache or a cachelib cache backend,"
        f" not {type(cache).__name__}"
    )


def strategy_for(cache: Any) -> Strategy:
    """The strategy of ``cache``'s backend, created on first use, checked on every use."""
    backend = backend_of(cache)
    strategy: Strategy | None = getattr(backend, "_cachekit_strategy", None)
    if strategy is None:
        with _creating:
            strategy = getattr(backend, "_cachekit_strategy", None)
            if strategy is None:
                strategy = _create(backend)
                backend._cachekit_strategy = strategy
    strategy.check_usable()
    return strategy


def _create(backend: Any) -> Strategy:
    if isinstance(backend, cachelib.FileSystemCache):
        from .filesystem import FileSystemStrategy

        return FileSystemStrategy(backend)
    if isinstance(backend, cachelib.SimpleCache):
        from .simple import SimpleStrategy

        return SimpleStrategy(backend)
    if isinstance(backend, cachelib.RedisCache):
        from .rediscache import RedisStrategy

        return RedisStrategy(backend)
    hint = ""
    if isinstance(backend, cachelib.NullCache):
        hint = " NullCache stores nothing (it is Flask-Caching's default CACHE_TYPE)."
    raise UnsupportedBackend(
        f"cachekit has no atomic strategy for {type(backend).__name__}.{hint}"
        " Set CACHE_TYPE to FileSystemCache (one machine), RedisCache (several machines)"
        " or SimpleCache (one process).",
        backend=type(backend).__name__,
    )
