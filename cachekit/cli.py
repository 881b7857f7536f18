"""``flask cachekit ...``: read, change and check the app's shared state from a shell.

Registered through Flask's plugin entry point (``flask.commands`` in
pyproject.toml), so every app that has cachekit installed gets it. The
commands act on the app's own configured cache (the first Flask-Caching cache
it initialised), so they work the same on FileSystemCache and Redis.
"""

from __future__ import annotations

import json
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo, pass_script_info

from . import operations
from .compat import app_backends
from .doctor import PROBLEM, diagnose
from .errors import CachekitError
from .extension import deferred_checks
from .resolve import strategy_for

cachekit_cli = AppGroup("cachekit", help="Read, change and check the app's shared state.")


def _backend() -> Any:
    backends = app_backends(current_app)
    if not backends:
        raise click.ClickException("the app has no Flask-Caching cache: call cache.init_app(app)")
    return backends[0]


def _show(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _run(action: Any) -> Any:
    try:
        return action()
    except CachekitError as error:
        raise click.ClickException(f"{type(error).__name__}: {error}") from None


@cachekit_cli.command("get")
@click.argument("key")
def get_command(key: str) -> None:
    """Print KEY's value (as JSON when it can be); exit status 1 if it is missing."""
    entry = _run(lambda: strategy_for(_backend()).read(key))
    if entry is None:
        raise click.ClickException(f"key {key!r} is missing")
    click.echo(_show(entry.value))


@cachekit_cli.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--timeout", type=float, default=None, help="Expiry in seconds (0: never).")
def set_command(key: str, value: str, timeout: float | None) -> None:
    """Store VALUE at KEY atomically; VALUE is read as JSON, else as a string."""
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value

    def store() -> None:
        with operations.transaction(_backend(), key, timeout=timeout) as txn:
            txn[key] = parsed

    _run(store)
    click.echo(_show(parsed))


@cachekit_cli.command("incr")
@click.argument("key")
@click.option("--by", "delta", type=int, default=1, show_default=True, help="The amount to add.")
def incr_command(key: str, delta: int) -> None:
    """Add to the int at KEY atomically and print the new value."""
    click.echo(_run(lambda: operations.incr(_backend(), key, delta)))


@cachekit_cli.command("del")
@click.argument("key")
def del_command(key: str) -> None:
    """Delete KEY (waiting for any cachekit operation on it to finish)."""

    def delete() -> bool:
        with operations.transaction(_backend(), key) as txn:
            return txn.pop(key, None) is not None

    click.echo("deleted" if _run(delete) else "missing")


@cachekit_cli.command("stats")
@click.option("--process", is_flag=True, help="This process's figures instead of all workers'.")
def stats_command(process: bool) -> None:
    """Print cachekit's figures as JSON: every worker's merged, as flushed to the cache."""
    figures = _run(lambda: operations.statistics(_backend(), merged=not process))
    click.echo(json.dumps(figures, indent=2, sort_keys=True))


@cachekit_cli.command("doctor", with_appcontext=False)
@pass_script_info
def doctor_command(info: ScriptInfo) -> None:
    """Check the cache setup: problems first, each with its fix, then warnings.

    Exit status 1 if something would lose or corrupt shared state. It loads the
    app with CacheKit's start-up checks deferred (they would refuse to start
    it), changes nothing on the system it checks, and waits for Redis at most
    CACHEKIT_CHECK_TIMEOUT (2 s) per reply.
    """
    token = deferred_checks.set(True)
    try:
        app = info.load_app()
    except click.ClickException:  # Flask's own "could not locate a Flask application"
        raise
    except Exception as error:  # a cache client that connects when built (RedisClusterCache)
        raise click.ClickException(
            f"the app could not be created, so nothing was checked: {type(error).__name__}:"
            f" {error}\n   fix: if it names the cache server, start it or correct its address"
            " (CACHE_REDIS_URL, CACHE_REDIS_CLUSTER, ...)"
        ) from None
    finally:
        deferred_checks.reset(token)
    with app.app_context():
        findings = diagnose(app)
    problems = [finding for finding in findings if finding.level == PROBLEM]
    warnings = [finding for finding in findings if finding.level != PROBLEM]
    for title, group in (("problems", problems), ("warnings", warnings)):
        if group:
            click.echo(f"{title}:")
        for number, finding in enumerate(group, 1):
            click.echo(f"{number}. {finding.what}\n   fix: {finding.fix}")
    if problems:
        raise click.ClickException(
            f"{len(problems)} problem(s) would lose or corrupt shared state (fixes above)"
        )
    click.echo("ok: nothing in this configuration would lose shared state")
