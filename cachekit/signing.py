"""Signed values: a value planted in the cache is refused, never unpickled.

:meth:`cachekit.CacheKit.init_app` installs a :class:`Codec` on each of the
app's backends (:func:`install`): on the backend's own serializer for
FileSystemCache and the Redis family (so plain ``cache.get``, ``cache.set``
and Flask-Caching's ``@cache.memoize`` are covered as well as cachekit's
helpers), and on the store of an :class:`~cachekit.LMDBCache`. SimpleCache is
skipped: its values live in the memory of one process, which nothing outside
that process can write, and whoever can write that memory already runs code
there.

Stored form of a signed value (the *envelope*)::

    b"\\xffck" + format (b"p" pickle, b"j" tagged JSON) + HMAC-SHA256 (32 bytes) + payload

The MAC covers the 4-byte header and the payload. ``0xff`` is not a pickle
opcode, not JSON and not an ASCII digit, so a pre-signing reader takes an
envelope for a bad pickle (cachelib: a miss; cachekit: ``CorruptValue``) and
never for an int. FileSystemCache keeps its 4-byte expiry header before the
envelope; LMDBCache stores the envelope under its own kind byte (3) after its
expiry header; Redis stores it as the whole value. Ints that Redis increments
natively (``INCRBY``) stay plain ASCII and LMDB's native ints stay 8 bytes:
they are parsed as numbers, never unpickled, so a writer can change a number
but never run code.

Keys: ``HMAC-SHA256(secret, b"cachekit signed values v1")`` for the app's
``SECRET_KEY`` (writes and reads) and each of ``SECRET_KEY_FALLBACKS`` (reads
only), so the raw secret is never the MAC key and the same secret signs
nothing else of Flask's. Each key's inner and outer SHA-256 states are
computed once, so a MAC costs two hash copies and the hashing itself; an
envelope byte-for-byte equal to one this codec made or checked before is not
hashed again (:class:`_Trusted`).

Invariants:

- Nothing is unpickled (or JSON-decoded) before its MAC was checked with
  :func:`hmac.compare_digest` against the current key and then each fallback.
- A value that fails the check raises :class:`~cachekit.errors.TamperedValue`
  naming the key, is counted (``tampered`` in the statistics) and logged once
  per key per process; nothing is written because of it.
- A value without an envelope (an old unsigned pickle, or a planted one) is
  refused (``CACHEKIT_UNSIGNED = "refuse"``, the default), read as missing
  (``"miss"``) or, during an upgrade only, read unverified (``"accept"``);
  the last two count ``unsigned``.
- With signing off (``CACHEKIT_SIGN_VALUES = False``, or no ``SECRET_KEY``)
  values are written exactly as before (cachelib's and LMDBCache's own
  forms); envelopes are still read, checked against the keys there are.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import pickle
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

from cachelib.serializers import BaseSerializer
from flask.json.tag import TaggedJSONSerializer

from .errors import (
    ConfigurationError,
    CorruptValue,
    ReadAsMissing,
    Refused,
    SerializationError,
    TamperedValue,
)
from .settings import DEFAULTS, Settings

log = logging.getLogger(__name__)

#: What the MAC key of a secret is derived for: a key of its own, never the raw secret.
PURPOSE: Final = b"cachekit signed values v1"
MAGIC: Final = b"\xffck"
PICKLE: Final = ord("p")
JSON: Final = ord("j")
HEADER_SIZE: Final = 4
TAG_SIZE: Final = 32
OVERHEAD: Final = HEADER_SIZE + TAG_SIZE
#: The longest envelope signed or verified: Redis's own limit on a string (proto-max-bulk-len).
MAX_SIZE: Final = 512 << 20
#: What ``CACHEKIT_UNSIGNED`` may say.
UNSIGNED_MODES: Final = ("refuse", "miss", "accept")
SERIALIZERS: Final = ("pickle", "json")
#: Keys whose refusal a process logs (once each) before it stops logging new ones.
LOGGED_KEYS: Final = 4096
#: Envelopes a codec remembers as checked (:class:`_Trusted`): the longest one, and all together.
TRUSTED_SIZE: Final = 64 << 10
TRUSTED_BUDGET: Final = 4 << 20
#: What an entry costs beside its envelope's bytes: the tag (a bytes object of 32), two
#: objects' headers and the dict's slot, counted so that small envelopes fit the budget too.
ENTRY_OVERHEAD: Final = 160
#: Statistics (:mod:`cachekit.stats`): values refused, and values read without a signature.
TAMPERED: Final = "tampered"
UNSIGNED: Final = "unsigned"


def derive_key(secret: str | bytes) -> bytes:
    """The MAC key for ``secret``: ``HMAC-SHA256(secret, PURPOSE)``."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return hmac.digest(raw, PURPOSE, "sha256")


class _Mac:
    """HMAC-SHA256 under one key, over a 4-byte header and a payload.

    The padded inner state (with each header already hashed into it) and the
    outer state are computed once, so a MAC costs two state copies, the
    hashing of the payload and of the inner digest: RFC 2104's HMAC exactly.
    """

    __slots__ = ("_inner", "_outer", "_headed")

    def __init__(self, key: bytes) -> None:
        padded = key.ljust(64, b"\0")  # (a derived key is 32 bytes: never hashed first)
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
        self._headed: dict[bytes, Any] = {}
        for kind in (PICKLE, JSON):
            header = MAGIC + bytes([kind])
            self._headed[header] = inner = self._inner.copy()
            inner.update(header)

    def __call__(self, header: bytes, payload: bytes | memoryview) -> bytes:
        headed = self._headed.get(header)
        if headed is None:
            inner = self._inner.copy()
            inner.update(header)
        else:
            inner = headed.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class _Trusted:
    """Envelopes this process made or checked under a codec's keys, by their tag.

    An envelope byte-for-byte equal to one whose MAC matched has the same
    MAC, so finding it here is what checking it again would conclude, at the
    cost of a 32-byte dict lookup and a ``memcmp`` instead of hashing the
    payload (a hot value read again, a value read back by the worker that
    wrote it). The lookup is by tag and the whole envelope is compared, so a
    genuine tag over other bytes is checked (and refused) as before.

    Bounded: envelopes of at most :data:`TRUSTED_SIZE` bytes, about
    :data:`TRUSTED_BUDGET` bytes in all (each entry counted with
    :data:`ENTRY_OVERHEAD` for its tag and the dict); when full, all are forgotten at once
    (amortized O(1), no lock: dict reads and writes are atomic, and a race
    between threads only misstates the running size until the next reset).
    The codec's keys never change (installing another key makes another
    codec), so nothing here outlives the keys it was checked with.
    """

    __slots__ = ("_envelopes", "_size")

    def __init__(self) -> None:
        self._envelopes: dict[bytes, bytes] = {}
        self._size = 0

    def holds(self, tag: bytes, stored: bytes, size: int) -> bool:
        """Whether the last ``size`` bytes of ``stored`` are an envelope kept under ``tag``."""
        known = self._envelopes.get(tag)
        return known is not None and len(known) == size and stored.endswith(known)

    def add(self, tag: bytes, envelope: bytes) -> None:
        size = len(envelope)
        if size > TRUSTED_SIZE or tag in self._envelopes:
            return
        size += ENTRY_OVERHEAD
        if self._size + size > TRUSTED_BUDGET:
            self._envelopes.clear()
            self._size = 0
        self._envelopes[tag] = envelope
        self._size += size


#: The reasons that mean "not written by a holder of the key": TamperedValue, counted.
_TAMPERING: Final = frozenset({"unsigned", "signature", "truncated", "oversize", "empty"})


class Codec:
    """The signing of one backend: keys, serializer and what an unsigned value does.

    ``secrets``: the current secret first, then the fallbacks (read only).
    ``sign``: whether new values are signed (needs a secret). Thread-safe.
    """

    def __init__(
        self,
        secrets: Sequence[str | bytes],
        *,
        sign: bool,
        unsigned: str = "refuse",
        serializer: str = "pickle",
        backend: Any = None,
        settings: Settings = DEFAULTS,
    ) -> None:
        if sign and not secrets:
            raise ConfigurationError(
                "CACHEKIT_SIGN_VALUES needs the app's SECRET_KEY", setting="SECRET_KEY"
            )
        if unsigned not in UNSIGNED_MODES:
            raise ConfigurationError(
                f"CACHEKIT_UNSIGNED must be one of {UNSIGNED_MODES}, not {unsigned!r}",
                setting="CACHEKIT_UNSIGNED",
            )
        if serializer not in SERIALIZERS:
            raise ConfigurationError(
                f"CACHEKIT_SERIALIZER must be one of {SERIALIZERS}, not {serializer!r}",
                setting="CACHEKIT_SERIALIZER",
            )
        if serializer == "json" and not sign:
            raise ConfigurationError(
                "CACHEKIT_SERIALIZER = 'json' stores signed envelopes: it needs SECRET_KEY and"
                " CACHEKIT_SIGN_VALUES on",
                setting="CACHEKIT_SERIALIZER",
            )
        self.sign = sign
        self.unsigned = unsigned
        self.serializer = serializer
        self.max_size = MAX_SIZE
        self._macs = [_Mac(derive_key(secret)) for secret in secrets]
        self._header = MAGIC + bytes([JSON if serializer == "json" else PICKLE])
        self._json = TaggedJSONSerializer()
        self._backend = weakref.ref(backend) if backend is not None else None
        self._settings = settings
        self._logged: set[str] = set()
        self._guard = threading.Lock()
        self._pending: dict[str, int] = {}
        self._trusted = _Trusted()

    @property
    def reads_unsigned_as_missing(self) -> bool:
        return self.sign and self.unsigned == "miss"

    # -- writing -----------------------------------------------------------------------

    def serialize(self, value: Any) -> bytes:
        """The payload of ``value``: a pickle, or tagged JSON (tuples, bytes, datetimes...).

        JSON refuses (:class:`SerializationError`) what it would change rather
        than keep: a dict key that is not a str (``json`` would make ``1`` the
        str ``"1"``, and a memoized value would differ between a miss and a hit).
        """
        if self._header[3] == PICKLE:
            return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        _refuse_odd_keys(value)
        try:
            text = json.dumps(self._json.tag(value), separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as error:
            raise SerializationError(
                f"a {type(value).__name__} value cannot be stored as JSON"
                f" (CACHEKIT_SERIALIZER = 'json'): {error}",
                key=None,
            ) from None
        return text.encode("utf-8")

    def seal(self, value: Any, prefix: bytes = b"") -> bytes:
        """``prefix`` and the envelope of ``value``, signed with the current key (signing on).

        The envelope is remembered as checked (:class:`_Trusted`): reading it
        back costs no MAC.
        """
        payload = self.serialize(value)
        if len(payload) + OVERHEAD > self.max_size:
            raise SerializationError(
                f"a {type(value).__name__} value of {len(payload):,} bytes is longer than the"
                f" {self.max_size:,} bytes a signed value may be; nothing was written",
                key=None,
            )
        header = self._header
        tag = self._macs[0](header, payload)
        envelope = b"".join((header, tag, payload))
        self._trusted.add(tag, envelope)
        return envelope if not prefix else prefix + envelope

    # -- reading -----------------------------------------------------------------------

    def open(self, stored: bytes | memoryview, start: int = 0) -> Any:
        """The value in the envelope at ``stored[start:]``, decoded only once its MAC matched.

        Raises :class:`Refused`. An envelope equal to one made or checked
        here before is not hashed again (:class:`_Trusted`); any other is
        checked against the current key, then each fallback.
        """
        if type(stored) is not bytes:
            stored, start = bytes(stored[start:]), 0
        size = len(stored) - start
        if size > self.max_size:
            raise Refused(
                self,
                "oversize",
                f"a signed value of {size:,} bytes is longer than any cachekit signs",
            )
        if size < OVERHEAD:
            raise Refused(
                self,
                "truncated",
                f"its signature is truncated ({size} bytes, an envelope has at least {OVERHEAD})",
            )
        if not stored.startswith(MAGIC, start):
            raise Refused(self, "unsigned", "it has no signature")
        if not self._macs:
            raise Refused(
                self,
                "no key",
                "it is signed, but this app has no SECRET_KEY to check it with",
            )
        tag = stored[start + HEADER_SIZE : start + OVERHEAD]
        if not self._trusted.holds(tag, stored, size):
            header = stored[start : start + HEADER_SIZE]
            payload = memoryview(stored)[start + OVERHEAD :]
            macs = self._macs
            if not hmac.compare_digest(macs[0](header, payload), tag) and not any(
                hmac.compare_digest(mac(header, payload), tag) for mac in macs[1:]
            ):
                raise Refused(
                    self,
                    "signature",
                    "its signature does not match (made with a key this app does not have, or"
                    " over other bytes)",
                )
            self._trusted.add(tag, stored[start:] if start else stored)
        kind = stored[start + HEADER_SIZE - 1]
        if kind == PICKLE:
            if self._header[3] == JSON:
                raise Refused(
                    self,
                    "serializer",
                    "it is a signed pickle, and CACHEKIT_SERIALIZER = 'json' reads no pickle",
                )
            return pickle.loads(stored[start + OVERHEAD :])
        if kind == JSON:
            return json.loads(stored[start + OVERHEAD :], object_hook=self._json.untag)
        raise Refused(self, "format", f"it is signed in an unknown format {kind!r}")

    def unsigned_value(self, decode: Callable[[], Any]) -> Any:
        """What a stored value without an envelope reads as: ``decode()`` only if allowed.

        Signing off: ``decode()`` (the pre-signing behaviour). Signing on:
        refused (:class:`Refused`), read as missing (:class:`Refused` that
        :meth:`named` turns into :class:`ReadAsMissing`), or, with ``"accept"``,
        ``decode()`` counted as ``unsigned``.
        """
        if not self.sign:
            return decode()
        if self.unsigned == "accept":
            self._count(UNSIGNED)
            return decode()
        raise Refused(self, "unsigned", "it has no signature")

    def is_envelope(self, stored: bytes | memoryview) -> bool:
        return bytes(stored[:3]) == MAGIC

    # -- refusals ----------------------------------------------------------------------

    def named(self, refused: Refused, key: str | None, path: str | None = None) -> CorruptValue:
        """The error for ``refused`` at ``key``, counted in the statistics and logged once per key.

        :class:`ReadAsMissing` for an unsigned value under ``"miss"`` (count
        ``unsigned``); :class:`~cachekit.errors.TamperedValue` for the rest of
        a failed check (count ``tampered``); a plain
        :class:`~cachekit.errors.CorruptValue` for a value that was signed by
        a key holder but cannot be read here (no key, another serializer).
        """
        reason = str(refused.context.get("reason"))
        where = f" ({path})" if path else ""
        name = "a value" if key is None else f"key {key!r}{where}"
        if reason == "unsigned" and self.unsigned == "miss":
            self._count(UNSIGNED)
            self._log_once(key, f"cachekit: {name} has no signature: read as missing")
            return ReadAsMissing(
                f"{name} has no signature and reads as missing (CACHEKIT_UNSIGNED = 'miss')",
                key=key,
                path=path,
                reason=reason,
            )
        if reason in _TAMPERING:
            self._count(TAMPERED)
            message = (
                f"{name} was refused unread: {refused.message}. Nothing was decoded and it was"
                " left as it is: whoever wrote it does not hold the app's SECRET_KEY"
                + (
                    " (or it is an old unsigned value: see CACHEKIT_UNSIGNED)"
                    if reason == "unsigned"
                    else ""
                )
            )
            self._log_once(key, f"cachekit: {message}")
            return TamperedValue(message, key=key, path=path, reason=reason)
        return CorruptValue(
            f"{name} cannot be decoded: {refused.message}; it was left as it is",
            key=key,
            path=path,
            reason=reason,
        )

    def _log_once(self, key: str | None, message: str) -> None:
        with self._guard:
            if key in self._logged or len(self._logged) >= LOGGED_KEYS:
                return
            self._logged.add(str(key))
        log.warning("%s", message)

    def _count(self, name: str) -> None:
        """Count ``name`` in the statistics of the backend's strategy, or keep it until one is.

        Never makes a strategy (for Redis that would connect inside a read):
        a strategy made later takes the pending counts (:meth:`take_pending`).
        """
        backend = self._backend() if self._backend is not None else None
        strategy = None if backend is None else backend.__dict__.get("_cachekit_strategy")
        if strategy is not None:
            strategy.stats.count(name)
            return
        with self._guard:
            self._pending[name] = self._pending.get(name, 0) + 1

    def take_pending(self) -> dict[str, int]:
        """The counts made before the backend had a strategy; they are then forgotten here."""
        with self._guard:
            pending, self._pending = self._pending, {}
        return pending


# -- the serializers installed on cachelib's backends -------------------------------------


class _Form:
    """A backend's stored form through a :class:`Codec`: ``encode`` and a strict ``decode``.

    Installed as the backend's ``serializer``, it also answers cachelib's
    interface (``dumps``, ``loads``, ``dump``, ``load``). A refusal raises
    :class:`Refused` out of cachelib's ``get``, which :func:`install` wraps:
    there it is named, counted and logged, and a value read as missing is
    ``None``, as cachelib reads a miss.
    """

    def __init__(self, codec: Codec, inner: Any) -> None:
        self.codec = codec
        self.inner = inner  # the backend's serializer before; used for unsigned forms

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def decode(self, raw: bytes) -> Any:
        raise NotImplementedError

    # cachelib's interface
    def dumps(self, value: Any, *args: Any, **kwargs: Any) -> bytes:
        return self.encode(value)

    def loads(self, raw: bytes | None, *args: Any, **kwargs: Any) -> Any:
        """cachelib's read: raises :class:`Refused` (the backend's ``get`` names the key).

        A value without an envelope, where unsigned values are read (signing
        off, or ``"accept"``), is read by the backend's own serializer exactly
        as before signing, its leniency included (cachelib reads a bad pickle
        as a miss). cachekit's helpers decode strictly instead (:meth:`decode`).
        """
        if raw is None:
            return None
        codec = self.codec
        if codec.is_envelope(raw) or (codec.sign and codec.unsigned != "accept"):
            return self.decode(raw)
        return self.unsigned_read(raw)

    def unsigned_read(self, raw: bytes) -> Any:
        """A value without an envelope, read by the backend's serializer as before signing."""
        raise NotImplementedError

    def dump(self, value: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(self.encode(value))

    def load(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self.loads(f.read())


class FileForm(_Form):
    """FileSystemCache's value after its expiry header: an envelope, or the pickle it was."""

    def encode(self, value: Any) -> bytes:
        if self.codec.sign:
            return self.codec.seal(value)
        out = io.BytesIO()
        self.inner.dump(value, out)
        return out.getvalue()

    def decode(self, raw: bytes) -> Any:
        codec = self.codec
        if raw[:3] == MAGIC:
            return codec.open(raw)
        if not raw and codec.sign:
            raise Refused(codec, "empty", "it is empty")
        return codec.unsigned_value(lambda: _strict_pickle(self.inner, raw))

    def unsigned_read(self, raw: bytes) -> Any:
        return self.codec.unsigned_value(lambda: self.inner.load(io.BytesIO(raw)))


class RedisForm(_Form):
    """A Redis value: a plain ASCII int, an envelope, or cachelib's ``!`` + pickle."""

    def encode(self, value: Any) -> bytes:
        if type(value) is int:  # (not a bool) INCRBY adds to it: never signed, never pickled
            return str(value).encode("ascii")
        if self.codec.sign:
            return self.codec.seal(value)
        return b"!" + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def decode(self, raw: bytes) -> Any:
        codec = self.codec
        if raw[:3] == MAGIC:
            return codec.open(raw)
        if raw[:1] == b"!":
            return codec.unsigned_value(lambda: pickle.loads(memoryview(raw)[1:]))
        if not raw and codec.sign:
            raise Refused(codec, "empty", "it is empty")
        try:
            return int(raw)  # parsed, never unpickled
        except ValueError:
            if not codec.sign:
                raise
        return codec.unsigned_value(lambda: int(raw))

    def unsigned_read(self, raw: bytes) -> Any:
        if raw[:1] != b"!":
            try:
                return int(raw)  # a plain int is no unsigned value: INCRBY writes it so
            except ValueError:
                pass
        return self.codec.unsigned_value(lambda: self.inner.loads(raw))


def _refuse_odd_keys(value: Any) -> None:
    """Raise SerializationError for a dict key JSON cannot keep (anything but a str)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise SerializationError(
                        f"a dict key {key!r} ({type(key).__name__}) cannot be stored as JSON"
                        " (CACHEKIT_SERIALIZER = 'json' keeps str keys only: it would come"
                        " back as a str)",
                        key=None,
                    )
                pending.append(inner)
        elif isinstance(item, (list, tuple)):
            pending.extend(item)


def _strict_pickle(serializer: Any, raw: bytes) -> Any:
    """``raw`` as the pre-signing FileSystemCache read it, raising where cachelib logs."""
    if type(serializer).load is BaseSerializer.load:
        return pickle.loads(raw)
    return serializer.load(io.BytesIO(raw))


FORMS: Final[dict[str, type[_Form]]] = {"file": FileForm, "redis": RedisForm}


# -- installing ------------------------------------------------------------------------


def codec_for(config: Any, backend: Any = None, settings: Settings = DEFAULTS) -> Codec:
    """The codec an app's configuration asks for (``SECRET_KEY``, fallbacks, ``CACHEKIT_*``)."""
    secret = config.get("SECRET_KEY")
    fallbacks = [f for f in (config.get("SECRET_KEY_FALLBACKS") or ()) if f]
    secrets = [secret, *fallbacks] if secret else []
    sign = settings.sign_values if settings.sign_values is not None else bool(secret)
    if sign and not secret:
        raise ConfigurationError(
            "CACHEKIT_SIGN_VALUES is on but the app has no SECRET_KEY to sign with: set"
            " SECRET_KEY (the same in every worker)",
            setting="SECRET_KEY",
        )
    return Codec(
        secrets,
        sign=sign,
        unsigned=settings.unsigned,
        serializer=settings.serializer,
        backend=backend,
        settings=settings,
    )


def install(backend: Any, codec: Codec) -> str | None:
    """Sign ``backend``'s values with ``codec``; None, or why this backend is not signed.

    Where: the ``serializer`` of a FileSystemCache or a Redis-family backend
    (its ``get`` and ``get_many`` wrapped to name the key of a refusal), the
    store of an LMDBCache. Installing again replaces the codec. The backend's
    strategy, if one exists already, switches to the new codec at once.
    """
    from .backends import strategy_class
    from .errors import UnsupportedBackend

    try:
        kind = strategy_class(backend)
    except UnsupportedBackend:
        return "cachekit has no strategy for this backend"
    form = getattr(kind, "signing", "")
    if not form:
        return str(getattr(kind, "unsigned_reason", "cachekit does not know its stored form"))
    if form == "lmdb":
        backend._store.codec = codec
    else:
        current = backend.serializer
        inner = current.inner if isinstance(current, _Form) else current
        backend.serializer = FORMS[form](codec, inner)
        _name_refusals(backend, codec)
    backend.__dict__["_cachekit_codec"] = codec
    strategy = backend.__dict__.get("_cachekit_strategy")
    if strategy is not None:
        strategy.use_codec(codec)
    return None


def _name_refusals(backend: Any, codec: Codec) -> None:
    """Wrap the backend's ``get`` and ``get_many``: a refusal names its key, or reads as missing."""
    kind = type(backend)
    plain_get = kind.get.__get__(backend)
    plain_many = kind.get_many.__get__(backend)

    def get(key: str) -> Any:
        try:
            return plain_get(key)
        except Refused as refused:
            error = refused.codec.named(refused, key)
            if isinstance(error, ReadAsMissing):
                return None
            raise error from None

    def get_many(*keys: str) -> list[Any]:
        try:
            return list(plain_many(*keys))
        except Refused:
            return [get(key) for key in keys]  # one at a time: each refusal names its key

    backend.get = get
    backend.get_many = get_many
