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
from dataclasses import dataclass
from typing import Any

import cachelib
from flask import Flask

from .compat import (
    app_backends,
    bounded_redis_client,
    filesystem_parts,
    redis_parts,
    socket_timeout_of,
)
from .errors import CachekitError, ConfigurationError
from .filesystem import CACHELIB_SKIPS, check_private_directory
from .lmdb import LMDBCache
from .settings import DEFAULTS, Settings

PROBLEM = "problem"
WARNING = "warning"
#: What kind of problem a finding is: the configuration (refused at start-up), the server
#: not answering (logged at start-up: not configuration), or a per-process backend (warned
#: at start-up: right for one process, refused at first use under several workers).
CONFIGURATION = "configuration"
UNREACHABLE = "unreachable"
PER_PROCESS = "per-process"


@dataclass(frozen=True)
class Finding:
    level: str  # PROBLEM (exit status 1) or WARNING
    what: str
    fix: str
    kind: str = CONFIGURATION


def diagnose(app: Flask, cache: Any = None) -> list[Finding]:
    """Every finding about the app's caches (or only ``cache``'s), problems first.

    Empty: nothing in the setup would lose state. The Redis checks wait at
    most the app's ``CACHEKIT_CHECK_TIMEOUT`` (2 s) for each reply.
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
        timeout = Settings.from_config(app.config).check_timeout
    except ConfigurationError as error:
        setting = error.context.get("setting", "the setting")
        findings.append(Finding(PROBLEM, str(error), f"set {setting} to a number of seconds > 0"))
        timeout = DEFAULTS.check_timeout
    for backend in {id(b): b for b in backends}.values():
        findings += diagnose_backend(backend, timeout)
    findings += _rate_limiters(app)
    return sorted(findings, key=lambda finding: finding.level != PROBLEM)


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


def diagnose_backend(backend: Any, check_timeout: float = DEFAULTS.check_timeout) -> list[Finding]:
    """The findings about one backend instance."""
    findings: list[Finding] = []
    if isinstance(backend, cachelib.SimpleCache):
        findings.append(
            Finding(
                PROBLEM,
                "SimpleCache keeps a separate copy in each worker process",
                "set CACHE_TYPE=FileSystemCache (one machine) or RedisCache; SimpleCache"
                " only suits a single process",
                PER_PROCESS,
            )
        )
    elif isinstance(backend, LMDBCache):
        findings += _lmdb(backend)
    elif isinstance(backend, cachelib.FileSystemCache):
        findings += _filesystem(backend)
    elif isinstance(backend, cachelib.RedisCache):
        findings += _redis(backend, check_timeout)
    else:
        hint = " (NullCache stores nothing)" if isinstance(backend, cachelib.NullCache) else ""
        findings.append(
            Finding(
                PROBLEM,
                f"cachekit has no atomic strategy for {type(backend).__name__}{hint}",
                "set CACHE_TYPE to cachekit.LMDBCache or FileSystemCache (one machine),"
                " RedisCache (or RedisSentinelCache, RedisClusterCache) or, for one process,"
                " SimpleCache",
            )
        )
    timeout = getattr(backend, "default_timeout", 0)
    if timeout:
        findings.append(
            Finding(
                WARNING,
                f"the default timeout is {timeout} s: what plain cache.set stores expires"
                " after it (cachekit's helpers keep no expiry unless asked)",
                "write shared state only through cachekit, or set CACHE_DEFAULT_TIMEOUT=0",
            )
        )
    return findings


def _filesystem(backend: Any) -> list[Finding]:
    findings = []
    parts = filesystem_parts(backend)
    directory = os.path.realpath(parts.path)
    if parts.threshold:
        findings.append(
            Finding(
                PROBLEM,
                f"CACHE_THRESHOLD={parts.threshold}: past that many files FileSystemCache"
                " deletes entries, those that never expire first",
                "set CACHE_THRESHOLD=0",
            )
        )
    try:
        check_private_directory(directory)  # the very check cachekit makes at first use
    except ConfigurationError as error:
        findings.append(
            Finding(
                PROBLEM,
                f"{error}; whoever can write its pickles can run code in every worker",
                f"chown it to uid {os.geteuid()} (the app's user) and chmod 700 {directory}",
            )
        )
    try:  # (scandir: the kind of each entry comes with its name, no stat per entry at boot)
        with os.scandir(directory) as entries:
            foreign = sorted(
                entry.name
                for entry in entries
                if not entry.name.endswith(CACHELIB_SKIPS)
                and (not entry.is_file() or _looks_like_lock(entry.name))
            )
    except OSError:
        return findings  # a missing or unreadable directory was reported just above
    if foreign:
        findings.append(
            Finding(
                PROBLEM,
                f"the cache directory {directory} holds lock files or folders"
                f" ({', '.join(foreign[:5])}): FileSystemCache treats everything there as"
                " entries, so clear() and pruning delete them (and clear() fails on folders)",
                "keep other locks outside CACHE_DIR (cachekit's own lock file ends in"
                f" {CACHELIB_SKIPS}, which cachelib skips)",
            )
        )
    return findings


#: A store fuller than this is reported: past its map_size, writes fail.
LMDB_FULL_WARNING = 0.8


def _lmdb(backend: LMDBCache) -> list[Finding]:
    from .lmdb.store import NETWORK_FILESYSTEMS, filesystem_type

    findings = []
    directory = backend.directory
    kind = filesystem_type(directory)
    if kind in NETWORK_FILESYSTEMS:
        findings.append(
            Finding(
                PROBLEM,
                f"the LMDB store {directory} is on a {kind} network file system, where"
                " LMDB's locks and shared memory do not work",
                "put CACHE_DIR on a local disk, or use RedisCache to share between machines",
            )
        )
    try:
        check_private_directory(directory)
    except ConfigurationError as error:
        findings.append(
            Finding(
                PROBLEM,
                f"{error}; whoever can write the store can plant pickles for every worker",
                f"chown it to uid {os.geteuid()} (the app's user) and chmod 700 {directory}",
            )
        )
    try:
        used, map_size = backend._store.fullness()  # no transaction: see its docstring
    except CachekitError as error:
        fix = (
            "make the directory the app's own (chown, chmod 700) and its files readable"
            " by it; a store that reads as corrupt must be moved aside (its state is lost)"
        )
        return [*findings, Finding(PROBLEM, f"the LMDB store cannot be read: {error}", fix)]
    if used > LMDB_FULL_WARNING * map_size:
        findings.append(
            Finding(
                WARNING,
                f"the LMDB store {directory} uses {used:,} of its"
                f" {map_size:,} bytes: past map_size every write fails",
                "raise CACHE_OPTIONS['map_size'] (and restart every worker), or delete entries",
            )
        )
    return findings


def _looks_like_lock(name: str) -> bool:
    return name.endswith(".lock") or name.startswith(".lock")


def _redis(backend: Any, check_timeout: float) -> list[Finding]:
    from .redis.server import eviction_problem, persistence_warning, read_facts, version_problem
    from .redis.translate import translated

    parts = redis_parts(backend)
    findings = []
    client = None
    try:
        with translated("checking the server"):
            client = bounded_redis_client(parts.client, check_timeout, check_timeout / 2)
            facts = read_facts(client)
    except CachekitError as error:
        return [
            Finding(
                PROBLEM,
                f"Redis does not answer: {error}",
                "start Redis or correct CACHE_REDIS_URL / CACHE_REDIS_HOST",
                UNREACHABLE,
            )
        ]
    finally:
        if client is not None:
            client.close()
    problem = eviction_problem(facts)
    if problem:
        findings.append(
            Finding(PROBLEM, problem, "CONFIG SET maxmemory-policy noeviction (and in redis.conf)")
        )
    too_old = version_problem(facts)
    if too_old:
        findings.append(Finding(PROBLEM, too_old, "upgrade Redis to 6.2 or later"))
    warning = persistence_warning(facts)
    if warning:
        findings.append(Finding(WARNING, warning, "CONFIG SET appendonly yes (and in redis.conf)"))
    for refusal in facts.refused:
        findings.append(
            Finding(
                WARNING,
                f"the server refused a check ({refusal}): cachekit cannot tell whether it"
                " evicts or persists state",
                "allow INFO and CONFIG GET to the app's Redis user, or check by hand",
            )
        )
    if socket_timeout_of(parts.client) is None:
        findings.append(
            Finding(
                WARNING,
                "the app's own Redis client waits forever for a reply: a plain cache.get"
                " hangs while Redis does not answer (cachekit's helpers use a client of"
                " their own, with CACHEKIT_REDIS_TIMEOUT)",
                'set CACHE_OPTIONS={"socket_timeout": 5, "socket_connect_timeout": 1}',
            )
        )
    return findings
