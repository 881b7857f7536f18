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

from typing import Any, TypeAlias

import cachelib
import flask_caching
from flask import current_app, has_app_context

from . import settings as configured
from .backends import strategy_class
from .compat import current_flask_app
from .errors import ConfigurationError, InvalidArgument
from .settings import DEFAULTS, Settings
from .strategy import Strategy

#: What every helper accepts as its ``cache``: the app's ``flask_caching.Cache``, or a
#: backend instance (cachelib's, Flask-Caching's, :class:`cachekit.LMDBCache`).
CacheLike: TypeAlias = flask_caching.Cache | cachelib.BaseCache


def backend_of(cache: CacheLike) -> Any:
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


def strategy_for(cache: CacheLike) -> Strategy:
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
    """A new strategy for ``backend`` (checked as at first use); most callers want strategy_for.

    The registry (:mod:`cachekit.backends`) names its class; a backend it does
    not know raises :class:`~cachekit.errors.UnsupportedBackend`.
    """
    return strategy_class(backend)(backend, settings)
