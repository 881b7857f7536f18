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

import functools
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


def server_processes() -> int | None:
    """How many worker processes the server loading this app runs, where that can be known.

    - gunicorn: its ``workers`` setting, read from the worker (or, with
      ``--preload``, the arbiter) whose call is loading the app: the caller's
      frames are searched for a gunicorn object with a ``cfg`` (gunicorn 20
      to 23 keep it there).
    - uWSGI: ``uwsgi.numproc``.

    None anywhere else (``flask run``, the CLI, tests, other servers): the
    request's ``wsgi.multiprocess`` tells later, at first use.
    """
    import sys

    if "gunicorn" in sys.modules:
        frame = sys._getframe(1)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if type(owner).__module__.startswith("gunicorn."):
                workers = getattr(getattr(owner, "cfg", None), "workers", None)
                if isinstance(workers, int):
                    return workers
            frame = frame.f_back  # type: ignore[assignment]
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        return int(getattr(uwsgi, "numproc", 1))
    return None


def boot_refusal(message: str, **context: Any) -> Exception:
    """A :class:`ConfigurationError` that gunicorn reports as one message, not a traceback.

    Under gunicorn it is also gunicorn's ``AppImportError``, which a worker
    prints as its message alone and which stops the arbiter ("App failed to
    load"): each worker says the reason once.
    """
    from .errors import ConfigurationError

    try:
        from gunicorn.errors import AppImportError  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return ConfigurationError(message, **context)
    if server_processes() is None:
        return ConfigurationError(message, **context)
    refusal = type("ConfigurationError", (ConfigurationError, AppImportError), {})
    return refusal(message, **context)  # type: ignore[no-any-return]


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


def client_family(client: Any) -> Any:
    """The client library of a redis-py or valkey client: the module ``redis`` or ``valkey``.

    The two have the same API under other class names (``Redis``/``Valkey``,
    ``RedisCluster``/``ValkeyCluster``); :func:`family_class` finds either.
    """
    import importlib

    top = type(client).__module__.split(".", 1)[0]
    return importlib.import_module(top if top in ("redis", "valkey") else "redis")


def family_class(family: Any, name: str) -> Any:
    """``family``'s class named ``name`` in redis-py's spelling (``"RedisCluster"``)."""
    if family.__name__ == "valkey":
        name = name.replace("Redis", "Valkey")
    return getattr(family, name)


def is_cluster_client(client: Any) -> bool:
    """Whether ``client`` is a redis-py or valkey cluster client."""
    return isinstance(client, family_class(client_family(client), "RedisCluster"))


def bounded_redis_client(
    client: Any, timeout: float, connect_timeout: float, *, quick: bool = True
) -> Any:
    """A client of cachekit's own to the server ``client`` talks to, with bounded waits.

    Same server, credentials, TLS and database as ``client``, but every reply
    waited for at most ``timeout`` seconds and every connection opened within
    ``connect_timeout``, and no retry of a command: redis-py's retries (the
    default from redis-py 6 on) make a refused connection cost seconds, and
    repeating a write whose reply was lost could apply it twice. The user's
    own client, behind ``cache.get``, is left as it is. ``quick=False`` keeps
    redis-py's own idle check (:func:`quick_check` looks at the socket only,
    not at replies already buffered: wrong for a subscribed connection).
    """
    import importlib

    redis = client_family(client)  # redis-py, or valkey (cachelib's ValkeyCache)
    NoBackoff = importlib.import_module(f"{redis.__name__}.backoff").NoBackoff
    Retry = importlib.import_module(f"{redis.__name__}.retry").Retry

    overrides: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "retry_on_error": [],
    }
    if is_cluster_client(client):
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
    if quick and connection_class in (redis.Connection, redis.UnixDomainSocketConnection):
        connection_class = quick_check(connection_class)
    client_class = family_class(redis, "Redis")
    own = type(pool)(
        connection_class=connection_class,
        max_connections=getattr(pool, "max_connections", None),
        **extra,
        **kwargs,
    )
    return client_class.from_pool(own)  # closing the client closes its pool


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
    own = _prompt_sentinel()(
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


@functools.cache
def _prompt_sentinel() -> Any:
    """redis-py's ``Sentinel``, but it finds the master as soon as a failover has promoted one.

    redis-py reads the master's address from ``SENTINEL MASTERS``, which names
    the old master until the failover ends (seconds after the promotion:
    every replica must be seen following the new master), while the old master
    still accepts writes that it can no longer pass on. ``SENTINEL
    GET-MASTER-ADDR-BY-NAME`` names the promoted replica from the promotion on,
    and this class takes the address from there: a new connection goes to the
    master that will be kept. A sentinel whose state is unusable (the master
    down and none promoted yet, too few other sentinels) is skipped as
    redis-py skips it; if none answers, redis-py's own discovery runs and
    raises its error.
    """
    import redis.sentinel

    errors = (redis.ConnectionError, redis.ResponseError, redis.TimeoutError)

    class PromptSentinel(redis.sentinel.Sentinel):
        def discover_master(self, service_name: str) -> Any:
            manager: Any = self
            for position, sentinel in enumerate(self.sentinels):
                asked: Any = sentinel
                try:
                    state = asked.sentinel_master(service_name)
                    address = asked.sentinel_get_master_addr_by_name(service_name)
                except errors:
                    continue
                if not address:
                    continue
                host, port = address[0], int(address[1])
                promoted = (host, port) != (state.get("ip"), int(state.get("port", 0)))
                if promoted or manager.check_master_state(state, service_name):
                    self.sentinels[0], self.sentinels[position] = sentinel, self.sentinels[0]
                    forced = self._force_master_ip
                    return (forced if forced is not None else host), port
            return super().discover_master(service_name)

    return PromptSentinel


def sentinel_service(client: Any) -> tuple[Any, str] | None:
    """The ``Sentinel`` that finds ``client``'s master and the service name; None if none does.

    redis-py keeps both on a Sentinel-managed pool (``sentinel_manager``,
    ``service_name``); a client of a plain pool has neither.
    """
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None)
    if manager is None:
        return None
    return manager, _get(pool, "service_name", "redis")


def cluster_node_client(
    client: Any, key: str | None = None, address: tuple[str, int] | None = None
) -> Any:
    """A plain client of the Cluster node serving ``key``'s slot (or at ``address``), or None.

    The cluster client's own per-node client (its pool, its bounded waits):
    commands that must share one connection (a write and ``WAIT``) go there.
    None when the cluster client knows no such node (its map is out of date).
    """
    if address is not None:
        node = client.get_node(host=address[0], port=address[1])
    else:
        node = client.get_node_from_key(key)
    return None if node is None else client.get_redis_connection(node)


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


# -- redis-py connections held by the near cache (cachekit.redis.near) -------------------


def take_connection(client: Any) -> Any:
    """A connected connection of ``client``'s pool, the caller's alone until :func:`give_back`.

    What redis-py's own ``PubSub`` does: ``pool.get_connection()`` (no
    arguments, as redis-py 5.3 and later want), the connection handed back
    with ``pool.release``. Works for plain and Sentinel-managed pools (a
    Sentinel's connection finds the current master as it connects).
    """
    return _get(client, "connection_pool", "redis").get_connection()


def own_connection(client: Any) -> Any:
    """A new connection to ``client``'s server, made as its pool makes them but never in it:
    its owner alone uses it and closes it (``disconnect``). Not connected yet: redis-py
    connects it at its first command."""
    pool = _get(client, "connection_pool", "redis")
    return _get(pool, "connection_class", "redis")(**_get(pool, "connection_kwargs", "redis"))


def give_back(client: Any, connection: Any) -> None:
    """Return a connection taken with :func:`take_connection` to its pool."""
    _get(client, "connection_pool", "redis").release(connection)


def connection_socket(connection: Any) -> Any:
    """The socket of a connected redis-py connection (``_sock``, redis-py 5.3 to 8.x); or None."""
    return getattr(connection, "_sock", None)


def send_commands(connection: Any, commands: list[tuple[Any, ...]]) -> None:
    """Send ``commands`` on ``connection`` in one write (their replies read with read_reply).

    No health check first (``check_health=False``): on a subscribed connection
    redis-py's own ``PING`` would read a message meant for the caller.
    """
    connection.send_packed_command(connection.pack_commands(commands), check_health=False)


def read_reply(connection: Any) -> Any:
    """The next reply on ``connection``, undecoded (bytes, whatever ``decode_responses`` says).

    An error reply raises redis-py's ``ResponseError`` (the connection stays usable).
    """
    return connection.read_response(disable_decoding=True)
