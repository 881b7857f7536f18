"""Every exception cachekit raises, under one base class.

Each exception keeps the context a caller needs (the key, the lock name, the
timeout) as attributes, puts it in its message, and pickles with it, so an
error raised in a worker process survives the trip back to a parent.

An exception raised by the caller's own function (``fn`` of ``update`` or
``get_or_compute``, the body of a ``transaction`` or ``lock``) is never
wrapped: it reaches the caller unchanged, after the locks are released and
with nothing written.
"""

from __future__ import annotations

from typing import Any, Final

#: Seconds a client is asked to wait before retrying after a 503 (``Retry-After``).
RETRY_AFTER: Final = 1


class CachekitError(Exception):
    """Base class of every error cachekit raises itself."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        for name, value in context.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[CachekitError], message: str, context: dict[str, Any]) -> CachekitError:
    error = cls.__new__(cls)
    CachekitError.__init__(error, message, **context)
    return error


class ConfigurationError(CachekitError):
    """The cache is set up in a way that would lose or split shared state.

    The message names the setting to change. Raised at first use, never
    turned into a silent fallback.
    """


class UnsupportedBackend(ConfigurationError):
    """The backend has no atomic strategy (NullCache, memcached, anything unknown)."""


class PerProcessBackend(ConfigurationError):
    """A per-process backend (SimpleCache) is used by several worker processes."""


class InvalidArgument(CachekitError, ValueError, TypeError):
    """An argument has the wrong type or value (a key that is not a string, a negative timeout)."""


class LockTimeout(CachekitError, TimeoutError):
    """A lock could not be taken within its wait time; nothing was changed."""

    name: str
    timeout: float | None


class CorruptValue(CachekitError):
    """A stored value cannot be decoded; it is left as it is, never reset to a default."""

    key: str


class TamperedValue(CorruptValue):
    """A stored value failed its signature check (:mod:`cachekit.signing`); nothing was decoded.

    Its signature is missing, truncated, or made with a key the app does not
    have or over other bytes. The value is left as it is, counted
    (``tampered``) and logged once per key; ``memoize`` and ``cached``
    recompute over it. ``reason`` says which check failed.
    """

    key: str
    reason: str


class ValueTypeError(CachekitError, TypeError):
    """The stored value has the wrong type for the operation (``incr`` on a string, say)."""

    key: str


class SerializationError(CachekitError, TypeError):
    """A new value cannot be serialized by the backend; the old value is kept."""

    key: str


class StorageError(CachekitError, OSError):
    """The backend failed to read or write (I/O error, permission, server down)."""

    key: str


class WriteError(StorageError):
    """The backend failed to store a value (disk full, read-only, I/O error); old value kept."""


class ConcurrentUpdateError(CachekitError):
    """An optimistic update lost the race on every one of its bounded attempts; nothing written."""

    key: str
    attempts: int


class LeaseLost(CachekitError):
    """A lock's lease ran out (its owner could not renew it in time); nothing was written."""

    name: str


# -- inside a signed value's decoding (cachekit.signing) -------------------------------


class Refused(CorruptValue):
    """Inside a decode: the stored bytes were refused before anything was decoded.

    Raised without the key (a serializer does not know it) and turned into the
    error the caller sees by :meth:`cachekit.signing.Codec.named`, which counts and logs it.
    Being a :class:`CorruptValue` itself, it is never mistaken for a value.
    """

    def __init__(self, codec: Any, reason: str, message: str) -> None:
        super().__init__(message, key=None, reason=reason)
        self.codec = codec


class ReadAsMissing(TamperedValue):
    """A value without a signature, under ``CACHEKIT_UNSIGNED = "miss"``: the key reads as missing.

    Caught where cachekit reads (a strategy's ``_load``, LMDBCache and the
    serializers' ``get``) and turned into a miss; a
    :class:`~cachekit.errors.TamperedValue` if it ever escapes.
    """


#: cachekit's errors that mean "the shared state is not reachable or too busy now, nothing
#: was changed": 503, try again.
UNAVAILABLE: Final = (StorageError, LockTimeout, LeaseLost, ConcurrentUpdateError)
