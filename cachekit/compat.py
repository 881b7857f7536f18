"""Every touch of a cachelib, Flask-Caching or redis-py internal, behind one door.

cachekit works on the backends' own objects, so it must read some of their
private attributes. Each one is read here and nowhere else, and a missing one
raises :class:`~cachekit.errors.UnsupportedBackend` naming the installed
version and the versions cachekit is tested with, instead of an
``AttributeError`` deep inside an operation.

Tested with: cachelib 0.15.4 to 0.17, Flask-Caching 2.3.1 to 2.5, redis-py 5.3
to 8.1, Flask 3.0 to 3.1 (the floors are in ``pyproject.toml``; CI runs the lowest and the newest).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .errors import UnsupportedBackend

#: The versions this module was written and tested against, for messages.
TESTED: Final = "cachelib 0.15.4-0.17, Flask-Caching 2.3.1-2.5, redis-py 5.3-8.1"


def version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"not installed"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _get(obj: Any, attribute: str, distribution: str) -> Any:
    try:
        return getattr(obj, attribute)
    except AttributeError:
        raise UnsupportedBackend(
            f"{type(obj).__name__} has no {attribute!r} in {distribution}"
            f" {version(distribution)}; cachekit is tested with {TESTED}",
            backend=type(obj).__name__,
        ) from None


# -- Flask-Caching ------------------------------------------------------------------


def current_flask_app() -> Any:
    """The app of the current app context, or None: what ``flask.current_app`` finds, faster.

    Flask keeps the context in ``flask.globals._cv_app`` (Flask 2.3 to 3.1);
    where it does not, this falls back to ``current_app``.
    """
    context = _app_context_var.get(None) if _app_context_var is not None else None
    if context is not None:
        return context.app
    from flask import current_app, has_app_context

    return current_app._get_current_object() if has_app_context() else None  # type: ignore[attr-defined]


class SessionWatch:
    """Whether the request's session was read or written since :func:`watch_session`.

    Flask keeps the session on the request context, as ``session`` (Flask
    3.0) or ``_session`` (3.1, where touching the ``flask.session`` proxy
    itself marks it accessed, so it is read past the proxy here). A session
    class that does not track access (``accessed`` fixed to ``True``) is
    seen through its writes only, where it tracks those.
    """

    __slots__ = ("_accessed", "_modified", "_session")

    def __init__(self, session: Any) -> None:
        self._session = session
        self._accessed = getattr(session, "accessed", False)
        self._modified = getattr(session, "modified", False)
        if session is not None:
            session.accessed = False

    def end(self) -> bool:
        """Whether the session was used; it gets its own ``accessed`` back (``Vary: Cookie``)."""
        session = self._session
        if session is None:
            return False
        used = bool(session.accessed) or (not self._modified and bool(session.modified))
        session.accessed = self._accessed or session.accessed
        return used


def watch_session() -> SessionWatch:
    """Start watching the current request's session (none outside a request)."""
    from flask import has_request_context
    from flask.globals import request_ctx

    if not has_request_context():
        return SessionWatch(None)
    context = request_ctx._get_current_object()  # type: ignore[attr-defined]
    state = vars(context)
    return SessionWatch(state.get("_session", state.get("session")))


def _find_app_context_var() -> Any:
    import flask.globals

    return getattr(flask.globals, "_cv_app", None)


_app_context_var = _find_app_context_var()


def app_backends(app: Any) -> list[Any]:
    """The backend of every Flask-Caching ``Cache`` initialised on ``app``, first one first.

    Flask-Caching keeps them in ``app.extensions["cache"]``, keyed by ``Cache``.
    """
    return list(dict(app.extensions.get("cache", {})).values())


# -- cachelib ------------------------------------------------------------------


@dataclass(frozen=True)
class FileSystemParts:
    """What cachekit reads of a cachelib ``FileSystemCache``."""

    path: str
    threshold: int
    mode: int | None
    filename: Callable[[str], str]  # the key's file, under ``path`` as the backend spells it


def filesystem_parts(backend: Any) -> FileSystemParts:
    return FileSystemParts(
        path=_get(backend, "_path", "cachelib"),
        threshold=_get(backend, "_threshold", "cachelib"),
        mode=_get(backend, "_mode", "cachelib"),
        filename=_get(backend, "_get_filename", "cachelib"),
    )


@dataclass(frozen=True)
class SimpleParts:
    """What cachekit reads of a cachelib ``SimpleCache``: its dict and the lock around it."""

    lock: Any
    entries: dict[str, Any]


def simple_parts(backend: Any) -> SimpleParts:
    return SimpleParts(
        lock=_get(backend, "_lock", "cachelib"), entries=_get(backend, "_cache", "cachelib")
    )


def wrap_simple_prune(backend: Any, wrapper: Callable[[Callable[[], None]], None]) -> None:
    """Make the backend's ``_prune`` call ``wrapper(original_prune)`` instead."""
    prune = _get(backend, "_prune", "cachelib")
    backend._prune = lambda: wrapper(prune)


# -- Redis backends --------------------------------------------------------------


@dataclass(frozen=True)
class RedisParts:
    """What cachekit reads of a cachelib / Flask-Caching Redis backend."""

    client: Any  # the write client (the master, under Sentinel)
    prefix: Callable[[], str]
    serializer: Any


def redis_parts(backend: Any) -> RedisParts:
    return RedisParts(
        client=_get(backend, "_write_client", "cachelib"),
        prefix=_get(backend, "_get_prefix", "cachelib"),
        serializer=_get(backend, "serializer", "cachelib"),
    )


def bounded_redis_client(client: Any, timeout: float, connect_timeout: float) -> Any:
    """A client of cachekit's own to the server ``client`` talks to, with bounded waits.

    Same server, credentials, TLS and database as ``client``, but every reply
    waited for at most ``timeout`` seconds and every connection opened within
    ``connect_timeout``, and no retry of a command: redis-py's retries (the
    default from redis-py 6 on) make a refused connection cost seconds, and
    repeating a write whose reply was lost could apply it twice. The user's
    own client, behind ``cache.get``, is left as it is.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    overrides: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "retry_on_error": [],
    }
    if isinstance(client, redis.RedisCluster):
        return _bounded_cluster(client, overrides)
    pool = _get(client, "connection_pool", "redis")
    kwargs = {**_get(pool, "connection_kwargs", "redis"), **overrides}
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:
        return _bounded_sentinel_master(manager, pool, kwargs)
    extra = {}
    if isinstance(pool, redis.BlockingConnectionPool):  # a full pool waits, boundedly too
        extra["timeout"] = min(pool.timeout or timeout, timeout / 2)
    connection_class = _get(pool, "connection_class", "redis")
    if connection_class in (redis.Connection, redis.UnixDomainSocketConnection):
        connection_class = quick_check(connection_class)
    own = type(pool)(
        connection_class=connection_class,
        max_connections=getattr(pool, "max_connections", None),
        **extra,
        **kwargs,
    )
    return redis.Redis.from_pool(own)  # closing the client closes its pool


def quick_check(connection_class: Any) -> Any:
    """A subclass of redis-py's plain ``connection_class`` that checks an idle connection cheaply.

    Before every command the pool asks the connection whether a reply is
    pending or the server closed it (a restart, an idle kill), so that it is
    reopened instead of failing the command. redis-py answers with three
    system calls (making the socket non-blocking, reading, making it blocking
    again). Here a ``poll`` that does not wait answers for an idle connection
    in one, and only a readable one (data, or the server's close) is handed
    to redis-py's own check. Timeouts stay Python's socket timeouts, so the
    waits stay bounded under gevent and whatever signals the process gets.
    """
    import select

    poll = getattr(select, "poll", None)  # (absent on some platforms; gevent's never waits at 0)

    class QuickCheck(connection_class):  # type: ignore[misc]
        def can_read(self, timeout: float | None = 0) -> bool:
            sock = self._sock
            if timeout == 0 and sock is not None and poll is not None:
                waiter = poll()
                waiter.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
                if not waiter.poll(0):
                    return False  # alive, and nothing pending
            return bool(super().can_read(timeout))

    QuickCheck.__name__ = QuickCheck.__qualname__ = f"Checked{connection_class.__name__}"
    return QuickCheck


def _bounded_sentinel_master(manager: Any, pool: Any, kwargs: dict[str, Any]) -> Any:
    """The master the sentinels name, found through sentinels asked with bounded waits too.

    A new ``Sentinel`` on the same sentinel addresses (the user's own may wait
    forever for a sentinel that does not answer: Flask-Caching passes none of
    the socket options to it), with the same TLS, credentials, database and
    ``force_master_ip`` as the user's, for the sentinels and for the master.
    """
    import redis.sentinel

    accepted = inspect.signature(redis.Redis.__init__).parameters
    sentinels, sentinel_kwargs = [], {}
    for sentinel in _get(manager, "sentinels", "redis"):
        sentinel_pool = sentinel.connection_pool
        options = dict(sentinel_pool.connection_kwargs)
        sentinels.append((options.pop("host"), options.pop("port")))
        # What a pool adds to its connections' options (redis-py 8) is not the client's.
        sentinel_kwargs = {key: value for key, value in options.items() if key in accepted}
        if issubclass(sentinel_pool.connection_class, redis.SSLConnection):
            sentinel_kwargs["ssl"] = True  # a pool keeps TLS as its class, not as an option
    bounded = {key: kwargs[key] for key in ("socket_timeout", "socket_connect_timeout", "retry")}
    own = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        sentinels,
        min_other_sentinels=getattr(manager, "min_other_sentinels", 0),
        sentinel_kwargs={**sentinel_kwargs, **bounded},
        force_master_ip=getattr(manager, "_force_master_ip", None),
        **kwargs,
    )
    return own.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        _get(pool, "service_name", "redis"),
        connection_class=_get(pool, "connection_class", "redis"),  # TLS or not, as the user's
    )


def _bounded_cluster(client: Any, overrides: dict[str, Any]) -> Any:
    import redis
    from redis.cluster import ClusterNode

    manager = _get(client, "nodes_manager", "redis")
    nodes = [
        ClusterNode(node.host, node.port)  # type: ignore[no-untyped-call]
        for node in manager.startup_nodes.values()
    ]
    kwargs = {**manager.connection_kwargs, **overrides}
    for unwanted in ("retry_on_timeout", "retry_on_error", "host", "port"):
        kwargs.pop(unwanted, None)
    if getattr(manager, "address_remap", None) is not None:  # behind NAT, in containers
        kwargs["address_remap"] = manager.address_remap
    if int(redis.__version__.split(".")[0]) < 6:  # from redis-py 6 on, `retry` says it
        kwargs["cluster_error_retry_attempts"] = 0
    return redis.RedisCluster(startup_nodes=nodes, **kwargs)


def socket_timeout_of(client: Any) -> float | None:
    """The reply timeout of a redis-py client's connections (``None``: waits forever)."""
    manager = getattr(client, "nodes_manager", None)
    kwargs = getattr(manager or getattr(client, "connection_pool", None), "connection_kwargs", {})
    timeout = kwargs.get("socket_timeout")
    return None if timeout is None else float(timeout)
