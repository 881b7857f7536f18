"""redis-py's exceptions turned into cachekit's, in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis

from ..errors import StorageError

T = TypeVar("T")


@contextmanager
def translated(doing: str, key: str | None = None) -> Iterator[None]:
    """Raise :class:`~cachekit.errors.StorageError` for any redis-py error in the block.

    A reply that did not come in time leaves a write's outcome unknown: the
    message says so, and the caller must not assume either way.
    """
    try:
        yield
    except redis.exceptions.TimeoutError as error:
        raise StorageError(
            f"Redis is unreachable while {doing}: no answer in time ({error}); a write"
            " may or may not have been applied",
            key=key,
        ) from error
    except redis.exceptions.OutOfMemoryError as error:
        raise StorageError(
            f"Redis is out of memory while {doing} (its maxmemory is reached and its policy"
            f" refuses writes): {error}; nothing was written",
            key=key,
        ) from error
    except redis.exceptions.ConnectionError as error:
        raise StorageError(f"Redis is unreachable while {doing}: {error}", key=key) from error
    except redis.exceptions.RedisError as error:
        raise StorageError(f"Redis failed while {doing}: {error}", key=key) from error
    except redis.exceptions.RedisClusterException as error:  # not a RedisError
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
    except redis.exceptions.TimeoutError:
        raise
    except redis.exceptions.ConnectionError:
        return call(*args, **kwargs)
