"""From the ``cache`` argument of a helper to the one strategy for its backend.

Every helper accepts either the shared ``flask_caching.Cache`` (resolved to the
backend of the current app, or of the app it was last initialised with when
there is no app context) or a cachelib / Flask-Caching backend instance.

Invariant: exactly one :class:`~cachekit.strategy.Strategy` is *used* per
backend instance per process, because its in-process locks are what keep that
process's threads apart. Two threads that both find none may both create one
(no lock is held while creating, which may ask a Redis server), but
``dict.setdefault`` is atomic, so they agree on the first one stored. The
strategy is kept on the backend itself (attribute ``_cachekit_strategy``), so
that it lives and dies with it: a mapping from backends to strategies would
keep every backend alive, since each strategy refers to its backend.

Settings (:mod:`cachekit.settings`) come from the app's ``CACHEKIT_*``
configuration when the strategy is created through the app's
``flask_caching.Cache`` in an app context, else from the defaults.
"""

from __future__ import annotations

from typing import Any

import cachelib
import flask_caching
from flask import current_app, has_app_context

from . import settings as configured
from .compat import current_flask_app
from .errors import ConfigurationError, InvalidArgument, UnsupportedBackend
from .lmdb.backend import LMDBCache
from .settings import DEFAULTS, Settings
from .strategy import Strategy


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
    backend = None
    if type(cache) is flask_caching.Cache:  # the hot path: the app's Cache in a request
        app = current_flask_app()
        if app is not None:
            backend = app.extensions.get("cache", {}).get(cache)
    if backend is None:
        backend = backend_of(cache)
    strategy: Strategy | None = getattr(backend, "_cachekit_strategy", None)
    if strategy is None:
        settings = configured.DEFAULTS
        if isinstance(cache, flask_caching.Cache) and has_app_context():
            settings = Settings.from_config(current_app.config)
        strategy = backend.__dict__.setdefault("_cachekit_strategy", create(backend, settings))
    strategy.check_usable()
    return strategy


def create(backend: Any, settings: Settings = DEFAULTS) -> Strategy:
    """A new strategy for ``backend`` (checked as at first use); most callers want strategy_for."""
    if isinstance(backend, LMDBCache):
        from .lmdb.strategy import LMDBStrategy

        return LMDBStrategy(backend, settings)
    if isinstance(backend, cachelib.FileSystemCache):
        from .filesystem import FileSystemStrategy

        return FileSystemStrategy(backend, settings)
    if isinstance(backend, cachelib.SimpleCache):
        from .simple import SimpleStrategy

        return SimpleStrategy(backend, settings)
    if isinstance(backend, cachelib.RedisCache):
        from .redis import RedisStrategy

        return RedisStrategy(backend, settings)
    hint = ""
    if isinstance(backend, cachelib.NullCache):
        hint = " NullCache stores nothing (it is Flask-Caching's default CACHE_TYPE)."
    raise UnsupportedBackend(
        f"cachekit has no atomic strategy for {type(backend).__name__}.{hint}"
        " Set CACHE_TYPE to cachekit.LMDBCache or FileSystemCache (one machine), RedisCache"
        " (several machines)"
        " or SimpleCache (one process).",
        backend=type(backend).__name__,
    )
