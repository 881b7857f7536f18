"""cachekit: atomic shared state for Flask apps, over Flask-Caching.

Use the app's one ``flask_caching.Cache`` with these helpers and a counter,
dict or list in the cache stays exact across threads, gunicorn worker
processes and, with Redis, hosts.
"""

from importlib.util import find_spec

from .errors import (
    CachekitError,
    ConcurrentUpdateError,
    ConfigurationError,
    CorruptValue,
    InvalidArgument,
    LeaseLost,
    LockTimeout,
    PerProcessBackend,
    SerializationError,
    StorageError,
    TamperedValue,
    UnsupportedBackend,
    ValueTypeError,
    WriteError,
)
from .extension import CacheKit
from .lmdb import LMDBCache
from .memo import cached, invalidate, memoize
from .operations import get_or_compute, incr, lock, statistics, transaction, update
from .strategy import LockHandle, Transaction

if find_spec("limits") is not None:  # registers cachekit:// with limits (Flask-Limiter)
    from . import limits_storage as limits_storage

__all__ = [
    "CacheKit",
    "CachekitError",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "CorruptValue",
    "InvalidArgument",
    "LMDBCache",
    "LeaseLost",
    "LockHandle",
    "LockTimeout",
    "PerProcessBackend",
    "SerializationError",
    "StorageError",
    "TamperedValue",
    "Transaction",
    "UnsupportedBackend",
    "ValueTypeError",
    "WriteError",
    "cached",
    "get_or_compute",
    "incr",
    "invalidate",
    "lock",
    "memoize",
    "statistics",
    "transaction",
    "update",
]
