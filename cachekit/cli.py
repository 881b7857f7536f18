"""``flask cachekit ...``: read, change and check the app's shared state from a shell.

Registered through Flask's plugin entry point (``flask.commands`` in
pyproject.toml), so every app that has cachekit installed gets it. The
commands act on the app's own configured cache (the first Flask-Caching cache
it initialised), so they work the same on FileSystemCache and Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import update_wrapper
from typing import Any, TypeVar

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo, pass_script_info

from . import operations
from .backends import strategy_class
from .compat import app_backends
from .doctor import PROBLEM, diagnose
from .errors import CachekitError
from .extension import deferred_checks
from .resolve import strategy_for

F = TypeVar("F", bound=Callable[..., Any])

cachekit_cli = AppGroup("cachekit", help="Read, change and check the app's shared state.")


def _load_app(info: ScriptInfo) -> Flask:
    """The app, or one ``Error:`` line: a refused configuration is no traceback."""
    try:
        return info.load_app()
    except click.ClickException:  # Flask's own "could not locate a Flask application"
        raise
    except CachekitError as error:
        raise click.ClickException(f"{type(error).__name__}: {error}") from None
    except Exception as error:  # a cache client that connects when built (RedisClusterCache)
        raise click.ClickException(
            f"the app could not be created: {type(error).__name__}: {error}\n   fix: if it"
            " names the cache server, start it or correct its address (CACHE_REDIS_URL,"
            " CACHE_REDIS_CLUSTER, ...)"
        ) from None


def _in_app(command: F) -> F:
    """Run ``command`` in the app's context, the app loaded by :func:`_load_app`."""

    @click.pass_context
    def run(context: click.Context, /, *args: Any, **kwargs: Any) -> Any:
        if not current_app:
            app = _load_app(context.ensure_object(ScriptInfo))
            context.with_resource(app.app_context())
        return context.invoke(command, *args, **kwargs)

    return update_wrapper(run, command)  # type: ignore[return-value]


def _backend(changing: bool = False) -> Any:
    """The app's first cache backend; refused for a change that would die with this process."""
    backends = app_backends(current_app)
    if not backends:
        raise click.ClickException("the app has no Flask-Caching cache: call cache.init_app(app)")
    backend = backends[0]
    if changing and _run(lambda: strategy_class(backend)).per_process:
        raise click.ClickException(
            f"{type(backend).__name__} keeps its state inside one process: what this command"
            " changed would be gone when it exits, and the app's workers would never see it."
            " Use FileSystemCache, cachekit.LMDBCache or RedisCache to share state"
        )
    return backend


def _show(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _run(action: Any) -> Any:
    try:
        return action()
    except CachekitError as error:
        raise click.ClickException(f"{type(error).__name__}: {error}") from None


@cachekit_cli.command("get", with_appcontext=False)
@click.argument("key")
@_in_app
def get_command(key: str) -> None:
    """Print KEY's value (as JSON when it can be); exit status 1 if it is missing."""
    entry = _run(lambda: strategy_for(_backend()).read(key))
    if entry is None:
        raise click.ClickException(f"key {key!r} is missing")
    click.echo(_show(entry.value))


@cachekit_cli.command("set", with_appcontext=False)
@click.argument("key")
@click.argument("value")
@click.option("--timeout", type=float, default=None, help="Expiry in seconds (0: never).")
@click.option(
    "--force", is_flag=True, help="Replace a counter (an int) with a value of another type."
)
@_in_app
def set_command(key: str, value: str, timeout: float | None, force: bool) -> None:
    """Store VALUE at KEY atomically; VALUE is read as JSON, else as a string.

    A key that holds an int is a counter the app adds to: replacing it with
    anything but an int would make every ``incr`` of it fail, so that needs
    ``--force``.
    """
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    backend = _backend(changing=True)

    def store() -> None:
        with operations.transaction(backend, key, timeout=timeout) as txn:
            old = txn.get(key)
            if _is_int(old) and not _is_int(parsed) and not force:
                raise click.ClickException(
                    f"key {key!r} holds the int {old}, a counter the app adds to; storing"
                    f" {_show(parsed)} ({type(parsed).__name__}) would make every incr of it"
                    " fail. Give an int, or pass --force"
                )
            txn[key] = parsed

    _run(store)
    click.echo(_show(parsed))


@cachekit_cli.command("incr", with_appcontext=False)
@click.argument("key")
@click.option("--by", "delta", type=int, default=1, show_default=True, help="The amount to add.")
@_in_app
def incr_command(key: str, delta: int) -> None:
    """Add to the int at KEY atomically and print the new value."""
    backend = _backend(changing=True)
    click.echo(_run(lambda: operations.incr(backend, key, delta)))


@cachekit_cli.command("del", with_appcontext=False)
@click.argument("key")
@_in_app
def del_command(key: str) -> None:
    """Delete KEY (waiting for any cachekit operation on it to finish)."""
    backend = _backend(changing=True)

    def delete() -> bool:
        with operations.transaction(backend, key) as txn:
            return txn.pop(key, None) is not None

    click.echo("deleted" if _run(delete) else "missing")


@cachekit_cli.command("stats", with_appcontext=False)
@click.option("--process", is_flag=True, help="This process's figures instead of all workers'.")
@_in_app
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
        findings = diagnose(app, live_counts=True)
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
