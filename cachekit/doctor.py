"""What in an app's cache setup would lose or corrupt shared state, with the fix.

Used by ``flask cachekit doctor``. Every check looks at what the app really
has, never at ``app.config`` alone: the backend objects Flask-Caching built
(however the configuration was passed: ``app.config``, ``Cache(config=...)``
or ``init_app(app, config=...)``), their class, threshold, default timeout and
resolved directory, and for Redis the live server (eviction policy,
persistence, version), through a client with bounded timeouts so that a dead
server costs seconds, not minutes. Problems come first, then warnings. The
checks change nothing on the system they look at.
"""

from __future__ import annotations

import os
from typing import Any

import flask_caching
from flask import Flask

from .backends import ADVICE, strategy_class
from .compat import app_backends
from .errors import ConfigurationError, UnsupportedBackend
from .findings import (
    CONFIGURATION,
    PER_PROCESS,
    PROBLEM,
    UNREACHABLE,
    WARNING,
    Finding,
)
from .settings import DEFAULTS, Settings, unknown_keys
from .strategy import Strategy

__all__ = [
    "CONFIGURATION",
    "PER_PROCESS",
    "PROBLEM",
    "UNREACHABLE",
    "WARNING",
    "Finding",
    "diagnose",
    "diagnose_backend",
]


def diagnose(
    app: Flask, cache: flask_caching.Cache | None = None, *, live_counts: bool = False
) -> list[Finding]:
    """Every finding about the app's caches (or only ``cache``'s), problems first.

    Empty: nothing in the setup would lose state. The Redis checks wait at
    most the app's ``CACHEKIT_CHECK_TIMEOUT`` (2 s) for each reply.
    ``live_counts``: also read what the workers counted in the cache (values
    refused by their signature), as ``flask cachekit doctor`` does; never at
    start-up, where a read in gunicorn's ``--preload`` master would hand
    LMDB's reader slot to the forked workers.
    """
    if cache is not None:
        backend = app.extensions.get("cache", {}).get(cache)
        backends = [] if backend is None else [backend]
    else:
        backends = app_backends(app)
    if not backends:
        return [Finding(PROBLEM, "the app has no Flask-Caching cache", "call cache.init_app(app)")]
    findings: list[Finding] = []
    try:
        settings = Settings.from_config(app.config)
    except ConfigurationError as error:
        setting = error.context.get("setting", "the setting")
        findings.append(Finding(PROBLEM, str(error), f"set {setting} to a valid value"))
        settings = DEFAULTS
    for key, near in unknown_keys(app.config, os.environ):
        findings.append(
            Finding(
                WARNING,
                f"{key} is not a cachekit setting: it changes nothing"
                + (f" (did you mean {near}?)" if near else ""),
                f"rename it to {near}" if near else "remove it (the settings: README)",
            )
        )
    for backend in {id(b): b for b in backends}.values():
        found = diagnose_backend(backend, settings)
        findings += found
        # The refused values' count is read from the cache by doctor only: at start-up a
        # read in gunicorn's --preload master would leave LMDB's reader slot to the workers.
        live = live_counts and all(f.kind != UNREACHABLE for f in found)
        findings += _signing(app, backend, reachable=live)
    findings += _rate_limiters(app)
    return sorted(findings, key=lambda finding: finding.level != PROBLEM)


def _signing(app: Flask, backend: Any, reachable: bool) -> list[Finding]:
    """Whether the backend's values are signed (:mod:`cachekit.signing`), and what was refused.

    Values not signed: a warning naming ``SECRET_KEY`` and ``CACHEKIT_SIGN_VALUES``;
    a setting that cannot work: a problem; values refused so far (the merged
    ``tampered`` count, read from the live cache): a warning.
    """
    try:
        kind = strategy_class(backend)
        settings = Settings.from_config(app.config)
    except (UnsupportedBackend, ConfigurationError):
        return []  # (reported above)
    if not kind.signing:
        return []  # SimpleCache: nothing outside its process can write it
    secret = app.config.get("SECRET_KEY")
    sign = settings.sign_values if settings.sign_values is not None else bool(secret)
    if sign and not secret:
        return [
            Finding(
                PROBLEM,
                "CACHEKIT_SIGN_VALUES is on but the app has no SECRET_KEY to sign values with",
                "set SECRET_KEY, the same in every worker",
            )
        ]
    if settings.serializer == "json" and not sign:
        return [
            Finding(
                PROBLEM,
                "CACHEKIT_SERIALIZER = 'json' stores signed values, and signing is off",
                "set SECRET_KEY and leave CACHEKIT_SIGN_VALUES on, or use 'pickle'",
            )
        ]
    if not sign:
        why = "CACHEKIT_SIGN_VALUES is off" if secret else "the app has no SECRET_KEY"
        return [
            Finding(
                WARNING,
                f"the cache's values are not signed ({why}): whoever can write the cache"
                " (its directory, the Redis server) can plant a pickle that runs code in every"
                " worker that reads it",
                "set SECRET_KEY (the same in every worker); CACHEKIT_SIGN_VALUES is then on"
                " by default",
            )
        ]
    findings: list[Finding] = []
    if settings.unsigned == "accept":
        findings.append(
            Finding(
                WARNING,
                "CACHEKIT_UNSIGNED = 'accept' reads values without a signature unchecked: an"
                " upgrade's setting, under which a planted pickle still runs",
                "once the 'unsigned' statistic stops growing, set CACHEKIT_UNSIGNED = 'refuse'",
            )
        )
    tampered = _tampered(backend) if reachable else 0
    if tampered:
        findings.append(
            Finding(
                WARNING,
                f"{tampered} stored value(s) failed their signature check and were refused"
                " unread (statistics: tampered; each key is in the workers' logs): someone"
                " without the app's SECRET_KEY wrote to the cache",
                "find who can write the cache (directory permissions, Redis ACLs and"
                " password) and rotate SECRET_KEY if it may have leaked (SECRET_KEY_FALLBACKS"
                " keeps the old one readable)",
            )
        )
    return findings


def _tampered(backend: Any) -> int:
    """The merged count of refused values, as flushed to the cache (0 if it cannot be read)."""
    from .signing import TAMPERED
    from .stats import PREFIX

    try:
        count = backend.get(PREFIX + TAMPERED)
    except Exception:  # (a check never fails on what it reads)
        return 0
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _rate_limiters(app: Flask) -> list[Finding]:
    """Flask-Limiters that count per process (``memory://``, its default)."""
    findings = []
    for limiter in app.extensions.get("limiter", ()):
        storage = getattr(limiter, "_storage", None)
        if type(storage).__name__ == "MemoryStorage":
            findings.append(
                Finding(
                    PROBLEM,
                    "Flask-Limiter counts in memory://, a separate count in each worker"
                    " process: a limit of N lets up to N times the workers through",
                    "set RATELIMIT_STORAGE_URI = 'cachekit://' (the app's own cache, exact"
                    " across workers)",
                    PER_PROCESS,
                )
            )
    return findings


def diagnose_backend(backend: Any, settings: Settings = DEFAULTS) -> list[Finding]:
    """The findings about one backend instance: its strategy's own (:mod:`cachekit.backends`)."""
    try:
        kind = strategy_class(backend)
    except UnsupportedBackend:
        name = type(backend).__name__
        null = any(cls.__name__ == "NullCache" for cls in type(backend).__mro__)
        hint = " (NullCache stores nothing)" if null else ""
        what = f"cachekit has no atomic strategy for {name}{hint}"
        return [Finding(PROBLEM, what, ADVICE), *Strategy.diagnose(backend, settings)]
    return kind.diagnose(backend, settings)
