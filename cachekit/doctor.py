"""What in an app's cache configuration would lose or corrupt shared state, with the fix.

Used by ``flask cachekit doctor``; each check reads the app's configuration
and, where it must, looks at the backend itself (the directory, the server).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from flask import Flask

from .errors import CachekitError, ConfigurationError
from .filesystem import LOCK_SUFFIX, TEMP_SUFFIX, check_private_directory
from .resolve import strategy_for

PROBLEM = "problem"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    level: str  # PROBLEM (exit status 1) or WARNING
    what: str
    fix: str


def diagnose(app: Flask) -> list[Finding]:
    """Every finding about the app's cache (empty: nothing would lose state)."""
    config = app.config
    kind = str(config.get("CACHE_TYPE", "NullCache")).rsplit(".", 1)[-1]
    findings: list[Finding] = []
    backends = list(app.extensions.get("cache", {}).values())
    if not backends:
        return [Finding(PROBLEM, "the app has no Flask-Caching cache", "call cache.init_app(app)")]
    backend = backends[0]
    if kind == "SimpleCache":
        findings.append(
            Finding(
                PROBLEM,
                "SimpleCache keeps a separate copy in each worker process",
                "use CACHE_TYPE=FileSystemCache (one machine) or RedisCache; SimpleCache"
                " only suits a single process",
            )
        )
    if kind == "FileSystemCache":
        findings += _filesystem(config, backend)
    timeout = config.get("CACHE_DEFAULT_TIMEOUT", 300)
    if timeout:
        findings.append(
            Finding(
                WARNING,
                f"CACHE_DEFAULT_TIMEOUT={timeout} expires what plain cache.set stores after"
                f" {timeout} s (cachekit's helpers keep no expiry unless asked)",
                "write shared state only through cachekit, or set CACHE_DEFAULT_TIMEOUT=0",
            )
        )
    if kind.startswith("Redis"):
        findings += _redis(backend)
    try:
        strategy_for(backend)
    except CachekitError as error:
        if not any(f.level == PROBLEM for f in findings):
            findings.append(Finding(PROBLEM, str(error), "see the message"))
    return findings


def _filesystem(config: Any, backend: Any) -> list[Finding]:
    findings = []
    directory = os.path.abspath(backend._path)
    if backend._threshold:
        findings.append(
            Finding(
                PROBLEM,
                f"CACHE_THRESHOLD={backend._threshold}: past that many files FileSystemCache"
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
    foreign = sorted(
        name
        for name in os.listdir(directory)
        if not name.endswith(TEMP_SUFFIX)
        and (not os.path.isfile(os.path.join(directory, name)) or _looks_like_lock(name))
    )
    if foreign:
        findings.append(
            Finding(
                PROBLEM,
                f"the cache directory holds lock files or folders ({', '.join(foreign[:5])}):"
                " FileSystemCache treats everything there as entries, so clear() and"
                " pruning delete them (and clear() fails on folders)",
                "keep locks outside CACHE_DIR (cachekit's own lock file is"
                f" {directory}{LOCK_SUFFIX})",
            )
        )
    return findings


def _looks_like_lock(name: str) -> bool:
    return name.endswith((".lock", LOCK_SUFFIX)) or name.startswith(".lock")


def _redis(backend: Any) -> list[Finding]:
    try:
        backend._write_client.ping()
    except Exception as error:
        return [
            Finding(
                PROBLEM,
                f"Redis does not answer ({type(error).__name__}: {error})",
                "start Redis or correct CACHE_REDIS_URL / CACHE_REDIS_HOST",
            )
        ]
    return []
