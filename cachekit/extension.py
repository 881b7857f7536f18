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
   naming the key; then signs the backend's values with a key derived from
   ``SECRET_KEY`` (:mod:`cachekit.signing`: installed on the backend's own
   serializer, so plain ``cache.get`` and ``@cache.memoize`` are covered);
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
   handlers (:func:`register_error_handlers`): 400 for
   :class:`InvalidArgument`, 503 with ``Retry-After`` when the shared state
   is unreachable or too busy and nothing changed (:class:`StorageError`,
   :class:`LockTimeout`, :class:`LeaseLost`, :class:`ConcurrentUpdateError`,
   and Redis connection trouble met by a plain ``cache.get``), 500 for the
   rest of cachekit's errors, logged;
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
import sys
from dataclasses import dataclass
from typing import Final

import flask_caching
from flask import Flask, got_request_exception, jsonify
from flask.typing import ResponseReturnValue

from . import signing
from .backends import unavailable as backends_unavailable
from .compat import app_backends, boot_refusal, server_processes
from .doctor import diagnose
from .errors import RETRY_AFTER, UNAVAILABLE, CachekitError, ConfigurationError, InvalidArgument
from .findings import CONFIGURATION, PER_PROCESS, PROBLEM, UNREACHABLE, Finding
from .settings import DEFAULTS, Settings

log = logging.getLogger(__name__)

#: Set by ``flask cachekit doctor`` while it loads the app: the checks are its to report.
deferred_checks: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cachekit_deferred_checks", default=False
)


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
        try:
            settings = Settings.from_config(app.config)
        except ConfigurationError:
            if not deferred_checks.get():
                raise
            settings = DEFAULTS  # doctor reports the bad setting with the rest
        try:
            _install_signing(app, self.cache, settings)
        except ConfigurationError:
            if not deferred_checks.get():
                raise  # (doctor reports it with the rest)
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


def _install_signing(app: Flask, cache: flask_caching.Cache, settings: Settings) -> None:
    """Sign the values of the app's backend of ``cache`` (:mod:`cachekit.signing`).

    Keys from ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``; ``CACHEKIT_SIGN_VALUES``
    (default: on when there is a ``SECRET_KEY``), ``CACHEKIT_UNSIGNED`` and
    ``CACHEKIT_SERIALIZER``. A backend that is not signed (SimpleCache) is
    left as it is; the start-up checks say why when it matters.
    """
    backend = app.extensions["cache"][cache]
    codec = signing.codec_for(app.config, backend, settings)
    reason = signing.install(backend, codec)
    if reason is not None:
        log.debug("cachekit does not sign the values of %s: %s", type(backend).__name__, reason)


def _report(app: Flask, findings: tuple[Finding, ...]) -> None:
    """Raise for the configuration problems; log the rest.

    A per-process finding (SimpleCache, Flask-Limiter's ``memory://``) is
    refused when the server runs several worker processes
    (:func:`~cachekit.compat.server_processes`: gunicorn ``-w``, uWSGI
    processes) and said nothing of in one process (``flask run``, ``-w 1``,
    the CLI, tests), where it is right. Under gunicorn the refusal is one
    message per worker, not a traceback.
    """
    processes = server_processes()
    several = processes is not None and processes > 1
    refused = [
        f
        for f in findings
        if f.level == PROBLEM and (f.kind == CONFIGURATION or (f.kind == PER_PROCESS and several))
    ]
    if refused:
        lines = "\n".join(f"- {f.what}\n  fix: {f.fix}" for f in refused)
        served = f" (the server runs {processes} worker processes)" if several else ""
        raise boot_refusal(
            f"cachekit refuses this cache setup, which would lose, split or corrupt shared"
            f" state{served}:\n{lines}\n(flask cachekit doctor shows every finding)",
            problems=len(refused),
        )
    for finding in findings:
        if finding.kind == UNREACHABLE:
            app.logger.error(
                "cachekit: %s (fix: %s); until then requests answer 503", finding.what, finding.fix
            )
        elif finding.kind == PER_PROCESS:
            continue  # one process (or one not yet known): right; several are refused above
        else:
            app.logger.warning("cachekit: %s (fix: %s)", finding.what, finding.fix)


def register_error_handlers(app: Flask) -> None:
    """JSON answers for cachekit's errors: 400 bad input, 503 try again, 500 the rest.

    - 400: :class:`InvalidArgument`, with its message (it is about the input);
    - 503 with ``Retry-After``: the shared state is not reachable or too busy
      now and nothing was changed (:data:`UNAVAILABLE`; and a Redis
      connection error, timeout, read-only replica or cluster reconfiguration
      met by a plain ``cache.get``), logged as a warning;
    - 500: the rest of cachekit's errors (a configuration refused late, a
      value that cannot be decoded or stored), logged with the traceback as
      Flask logs an unhandled error, and sent as ``got_request_exception``.

    The body is ``{"error": <class name>, "message": ...}``. Outside debug
    mode a 503 or 500 carries a generic message: the reason (paths, keys,
    hosts) is in the log, not in the answer to a client. Any other Redis
    error is left to Flask (a 500).
    """

    def answer(error: Exception, status: int) -> ResponseReturnValue:
        if status == 500:
            got_request_exception.send(app, exception=error)
            app.log_exception(sys.exc_info())  # (a handler runs inside Flask's except block)
        elif status == 503:
            app.logger.warning("cachekit: answering 503: %s: %s", type(error).__name__, error)
        if status == 400 or app.debug:
            message = str(error)
        else:
            message = GENERIC[status]
        response = jsonify(error=type(error).__name__, message=message)
        response.status_code = status
        if status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER)
        return response

    app.register_error_handler(InvalidArgument, lambda error: answer(error, 400))
    for unavailable in UNAVAILABLE:
        app.register_error_handler(unavailable, lambda error: answer(error, 503))
    app.register_error_handler(CachekitError, lambda error: answer(error, 500))
    for transient in backends_unavailable(app_backends(app)):  # each backend's own (Redis's)
        app.register_error_handler(transient, lambda error: answer(error, 503))


#: The message of a 503 or 500 outside debug mode.
GENERIC: Final = {
    503: "the shared cache is unavailable or busy; nothing was changed, try again",
    500: "the shared cache could not serve this request",
}


def state_of(app: Flask) -> AppState | None:
    """The app's cachekit state, if :meth:`CacheKit.init_app` ran on it."""
    state = app.extensions.get("cachekit")
    return state if isinstance(state, AppState) else None


__all__ = [
    "RETRY_AFTER",
    "UNAVAILABLE",
    "AppState",
    "CacheKit",
    "register_error_handlers",
    "state_of",
]
