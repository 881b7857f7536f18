"""A value and its stored form, with the backend's own serializer, failures as cachekit's errors.

Every strategy encodes and decodes through these two functions, so a value
that cannot be stored is always a :class:`~cachekit.errors.SerializationError`
(the old value kept) and a stored form that cannot be read is always a
:class:`~cachekit.errors.CorruptValue` naming the key: never a silent miss. A
value refused by its signature check (:mod:`cachekit.signing`) is a
:class:`~cachekit.errors.TamperedValue`, counted and logged by its codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import CorruptValue, Refused, SerializationError


def encode(key: str, value: Any, dumps: Callable[[Any], bytes | None]) -> bytes:
    """``dumps(value)``; :class:`SerializationError` if it raises or rejects the value."""
    try:
        raw = dumps(value)
    except Exception as error:
        raise SerializationError(
            f"cannot store key {key!r}: a {type(value).__name__} value cannot be"
            f" serialized ({type(error).__name__}: {error}); the old value is kept",
            key=key,
        ) from error
    if raw is None:
        raise SerializationError(
            f"cannot store key {key!r}: the serializer rejected a {type(value).__name__}",
            key=key,
        )
    return raw


def decode(key: str, raw: bytes, loads: Callable[[bytes], Any], path: str | None = None) -> Any:
    """``loads(raw)``; :class:`CorruptValue` naming the key (and file) if it raises."""
    try:
        return loads(raw)
    except Refused as refused:  # (a signature check: named, counted, logged by its codec)
        raise refused.codec.named(refused, key, path) from None
    except Exception as error:
        where = f" ({path})" if path else ""
        raise CorruptValue(
            f"key {key!r}{where} holds {raw[:40]!r}, which cannot be decoded"
            f" ({type(error).__name__}: {error}); it was left as it is",
            key=key,
            path=path,
        ) from error
