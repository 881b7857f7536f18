"""The client libraries' exceptions turned into cachekit's, in one place.

Both client families are known: redis-py (``redis``, behind cachelib's
``RedisCache`` and Flask-Caching's Redis backends) and its fork ``valkey``
(behind cachelib's ``ValkeyCache``); their exceptions have the same names and
shapes. Everything the Redis strategy sends goes through :func:`translated`,
so a caller only ever sees :class:`~cachekit.errors.StorageError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Final, TypeVar

from ..errors import StorageError

T = TypeVar("T")


def _exceptions_of(family: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{family}.exceptions")
    except ImportError:
        return None


_FAMILIES: Final = tuple(
    module for module in (_exceptions_of("redis"), _exceptions_of("valkey")) if module is not None
)


def _each(name: str) -> tuple[type[Exception], ...]:
    return tuple(getattr(module, name) for module in _FAMILIES if hasattr(module, name))


def _base(module: ModuleType) -> type[Exception]:
    found: type[Exception] = getattr(module, "RedisError", None) or module.ValkeyError
    return found


#: Every client error (``RedisError`` / ``ValkeyError``).
CLIENT_ERRORS: Final = tuple(_base(module) for module in _FAMILIES)
TIMEOUTS: Final = _each("TimeoutError")
CONNECTION_ERRORS: Final = _each("ConnectionError")
RESPONSE_ERRORS: Final = _each("ResponseError")
OUT_OF_MEMORY: Final = _each("OutOfMemoryError")
#: Cluster errors that are not a client error (``RedisClusterException`` and its fork's).
CLUSTER_ERRORS: Final = _each("RedisClusterException") + _each("ValkeyClusterException")

#: The errors a plain ``cache.get`` may meet that mean "not now" rather than a bug: a
#: connection error (also a server loading its data, Sentinel finding no master), a
#: timeout, a replica promoted away from under the client, a cluster reconfiguring.
UNAVAILABLE: Final = (
    CONNECTION_ERRORS
    + TIMEOUTS
    + _each("ReadOnlyError")
    + _each("ClusterDownError")
    + _each("TryAgainError")
)


@contextmanager
def translated(doing: str, key: str | None = None) -> Iterator[None]:
    """Raise :class:`~cachekit.errors.StorageError` for any client error in the block.

    A reply that did not come in time leaves a write's outcome unknown: the
    message says so, and the caller must not assume either way.
    """
    try:
        yield
    except TIMEOUTS as error:
        raise StorageError(
            f"Redis is unreachable while {doing}: no answer in time ({error}); a write"
            " may or may not have been applied",
            key=key,
        ) from error
    except OUT_OF_MEMORY as error:
        raise StorageError(
            f"Redis is out of memory while {doing} (its maxmemory is reached and its policy"
            f" refuses writes): {error}; nothing was written",
            key=key,
        ) from error
    except CONNECTION_ERRORS as error:
        # A connection that could not be opened sent nothing; one lost after it was open
        # may have carried the write before it went.
        sent = "connecting to" not in str(error)
        unknown = "; a write may or may not have been applied" if sent else ""
        raise StorageError(
            f"Redis is unreachable while {doing}: {error}{unknown}", key=key
        ) from error
    except CLIENT_ERRORS as error:
        raise StorageError(f"Redis failed while {doing}: {error}", key=key) from error
    except CLUSTER_ERRORS as error:  # not a client error
        raise StorageError(
            f"Redis Cluster is unreachable while {doing}: {error}", key=key
        ) from error


def once_more_if_cut_off(call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, repeated once if its connection was cut (a killed client, a blip).

    Only for calls that may safely run twice (reads, a lease grant or renewal
    with the same token): a write whose reply was lost must not be repeated.
    A timeout is not repeated either: it already cost the whole wait.
    """
    try:
        return call(*args, **kwargs)
    except TIMEOUTS:
        raise
    except CONNECTION_ERRORS:
        return call(*args, **kwargs)
