"""``CacheKit``: the Flask extension that binds cachekit to an app's ``flask_caching.Cache``.

In ``common.py``, beside the cache, and in the app factory after it::

    cache = Cache()
    kit = CacheKit(cache)

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config.from_mapping(CACHE_TYPE="FileSystemCache", CACHE_DIR="...", CACHE_THRESHOLD=0)
        cache.init_app(app)
        kit.init_app(app)  # or CacheKit(cache, app) for a single app
        return app

``init_app`` does, in this order:

1. reads the ``CACHEKIT_*`` settings (:mod:`cachekit.settings`), each with
   its default, and refuses a bad one with :class:`ConfigurationError`
   naming the key;
2. checks the live backend with the checks of ``flask cachekit doctor``
   (:func:`cachekit.doctor.diagnose`). A setup that would lose or corrupt
   state raises :class:`ConfigurationError` listing every problem with its
   fix: the app factory fails, so gunicorn refuses to boot with the reason
   in its log instead of answering 500 on the first request. A server that
   does not answer (Redis down) is logged as an error, not raised:
   availability is not configuration, and requests answer 503 until it is
   back. A per-process backend (SimpleCache) and the warnings are logged;
3. registers the app's state in ``app.extensions["cachekit"]``;
4. with ``CACHEKIT_JSON_ERRORS`` (default off) registers JSON error
   handlers: 400 for :class:`InvalidArgument`, 503 with ``Retry-After`` for
   storage trouble (:class:`StorageError`, :class:`LockTimeout`,
   :class:`LeaseLost`, a per-process or unsupported backend, and a Redis
   error met by a plain ``cache.get``), 500 for the rest of cachekit's errors;
5. with ``CACHEKIT_METRICS_PATH`` (say ``"/metrics"``) serves every
   worker's merged statistics there in Prometheus's text format
   (:mod:`cachekit.metrics`, the ``prometheus`` extra).

The helpers keep working without the extension; it adds the checks, the
settings in one place and the handlers. ``flask cachekit doctor`` loads the
app with the start-up checks deferred, so that it can report what they
would refuse.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Final

import flask_caching
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from .doctor import CONFIGURATION, PER_PROCESS, PROBLEM, UNREACHABLE, Finding, diagnose
from .errors import (
    CachekitError,
    ConfigurationError,
    InvalidArgument,
    LeaseLost,
    LockTimeout,
    PerProcessBackend,
    StorageError,
    UnsupportedBackend,
)
from .settings import Settings

log = logging.getLogger(__name__)

#: Set by ``flask cachekit doctor`` while it loads the app: the checks are its to report.
deferred_checks: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cachekit_deferred_checks", default=False
)

#: Errors that mean "the shared state is not reachable now": 503, try again.
UNAVAILABLE: Final = (StorageError, LockTimeout, LeaseLost, PerProcessBackend, UnsupportedBackend)
#: Seconds a client is asked to wait before retrying after a 503.
RETRY_AFTER: Final = 1


@dataclass(frozen=True)
class AppState:
    """What :meth:`CacheKit.init_app` found for one app: ``app.extensions["cachekit"]``."""

    kit: CacheKit
    settings: Settings
    #: The start-up checks' findings (empty when deferred to ``doctor``).
    findings: tuple[Finding, ...]


class CacheKit:
    """cachekit's Flask extension for one ``flask_caching.Cache``; one object, many apps."""

    def __init__(self, cache: flask_caching.Cache, app: Flask | None = None) -> None:
        if not isinstance(cache, flask_caching.Cache):
            raise InvalidArgument(
                f"CacheKit takes the app's flask_caching.Cache, not {type(cache).__name__}"
            )
        self.cache = cache
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Settings, start-up checks, registration, handlers: see the module's docstring.

        Raises :class:`ConfigurationError` if ``cache.init_app(app)`` has not
        run, if a ``CACHEKIT_*`` setting is invalid, or if the live backend
        would lose or corrupt state.
        """
        if self.cache not in app.extensions.get("cache", {}):
            raise ConfigurationError(
                "call cache.init_app(app) before CacheKit(cache).init_app(app): cachekit"
                " checks the backend Flask-Caching builds"
            )
        settings = Settings.from_config(app.config)
        findings: tuple[Finding, ...] = ()
        if not deferred_checks.get():
            findings = tuple(diagnose(app, self.cache))
            _report(app, findings)
        app.extensions["cachekit"] = AppState(self, settings, findings)
        if app.config.get("CACHEKIT_JSON_ERRORS", False):
            register_error_handlers(app)
        path = app.config.get("CACHEKIT_METRICS_PATH")
        if path:
            from .metrics import register_endpoint

            register_endpoint(app, self.cache, str(path))


def _report(app: Flask, findings: tuple[Finding, ...]) -> None:
    """Raise for the configuration problems; log the rest."""
    refused = [f for f in findings if f.level == PROBLEM and f.kind == CONFIGURATION]
    if refused:
        lines = "\n".join(f"- {f.what}\n  fix: {f.fix}" for f in refused)
        raise ConfigurationError(
            f"cachekit refuses this cache setup, which would lose or corrupt shared state:\n"
            f"{lines}\n(flask cachekit doctor shows every finding)",
            problems=len(refused),
        )
    for finding in findings:
        if finding.kind == UNREACHABLE:
            app.logger.error(
                "cachekit: %s (fix: %s); until then requests answer 503", finding.what, finding.fix
            )
        elif finding.kind == PER_PROCESS:
            app.logger.warning(
                "cachekit: %s: right for one process only (fix: %s)", finding.what, finding.fix
            )
        else:
            app.logger.warning("cachekit: %s (fix: %s)", finding.what, finding.fix)


def register_error_handlers(app: Flask) -> None:
    """JSON answers for cachekit's errors: 400 bad input, 503 storage trouble, 500 the rest.

    The body is ``{"error": <class name>, "message": <the reason>}``; a 503
    carries ``Retry-After``. Messages name hosts and keys, never passwords.
    """

    def answer(error: Exception, status: int) -> ResponseReturnValue:
        response = jsonify(error=type(error).__name__, message=str(error))
        response.status_code = status
        if status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER)
        return response

    app.register_error_handler(InvalidArgument, lambda error: answer(error, 400))
    for unavailable in UNAVAILABLE:
        app.register_error_handler(unavailable, lambda error: answer(error, 503))
    app.register_error_handler(CachekitError, lambda error: answer(error, 500))
    try:
        from redis.exceptions import RedisError
    except ImportError:  # no Redis client installed: no Redis errors to meet
        return

    def unreachable(error: Exception) -> ResponseReturnValue:
        reason = f"the cache server did not answer ({type(error).__name__}: {error})"
        return answer(StorageError(reason), 503)

    app.register_error_handler(RedisError, unreachable)


def state_of(app: Flask) -> AppState | None:
    """The app's cachekit state, if :meth:`CacheKit.init_app` ran on it."""
    state = app.extensions.get("cachekit")
    return state if isinstance(state, AppState) else None


__all__ = ["AppState", "CacheKit", "register_error_handlers", "state_of"]
