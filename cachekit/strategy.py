"""The strategy contract, and the generic atomic operations written once over it.

A :class:`Strategy` wraps one backend instance. Its public operations
(``incr``, ``update``, ``transaction``, ``lock``) are a locked
read-modify-write built on a few hooks that each backend module implements:

- :meth:`Strategy._hold`: hold the locks of some names (default: the striped
  locks given to the constructor);
- :meth:`Strategy._load` (and :meth:`Strategy._load_many`): the current
  :class:`Entry` of a key, or ``None``;
- :meth:`Strategy._dumps` and :meth:`Strategy._loads`: the backend's own
  stored form of a value (:mod:`cachekit.codecs` turns their failures into
  cachekit's errors);
- :meth:`Strategy._commit`: write and delete keys, all staged before any lands.

A backend with a native atomic operation overrides the public method instead
(as cachelib's Redis backend overrides ``inc`` with ``INCRBY``). A strategy
also answers for its backend beyond the operations: :meth:`Strategy.diagnose`
(its findings for ``doctor`` and the start-up checks),
:meth:`Strategy.rate_limits` (a native rate-limit implementation, or none),
:attr:`Strategy.unavailable` (the backend's own errors that mean "try later").
Strategies are found through :mod:`cachekit.backends`.

The compute-once engine (:mod:`cachekit.computed`) and the rate limits use the
strategy's public storage interface only: :meth:`~Strategy.load`,
:meth:`~Strategy.load_many`, :meth:`~Strategy.encode`, :meth:`~Strategy.commit`,
:meth:`~Strategy.hold`, :meth:`~Strategy.modifying`, :meth:`~Strategy.holds_lock`,
:meth:`~Strategy.started` and :meth:`~Strategy.finished`.

Expiry, in one place for every backend: for ``incr``, ``update`` and
``transaction`` a ``timeout`` of ``None`` keeps an existing key's expiry and
gives a new key none; a number of seconds sets it, ``0`` meaning never.
Expiry is kept as an absolute Unix time in whole seconds, ``0`` for never, the
form cachelib's FileSystemCache and SimpleCache store.

Statistics (:mod:`cachekit.stats`) are counted here and flushed by that
module's timer; fork handling lives in :mod:`cachekit.forking`.

Assumption: every writer of a key that must not lose updates goes through
cachekit. A plain ``cache.set`` is atomic on its own but is not serialized
with cachekit's read-modify-write.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, TypeVar

from . import codecs
from . import stats as statistics
from .errors import InvalidArgument, LeaseLost, LockTimeout, StorageError, ValueTypeError
from .findings import WARNING, Finding
from .settings import DEFAULTS, Settings
from .stats import PREFIX as STATS_PREFIX
from .stats import UNCONTENDED, Stats, summary
from .stats import names as stat_names
from .threadlocks import KEYS, LOCKS, PerProcessValue, StripedLocks

if TYPE_CHECKING:
    from .ratelimits import RateLimits

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Expiry times are stored as unsigned 32-bit seconds by cachelib's file format.
MAX_EXPIRES: Final = 2**32 - 1

Timeout = int | float | dt.timedelta | None


class Entry(NamedTuple):
    """A stored value as a strategy reads it."""

    value: Any
    expires: int  # absolute Unix time in seconds; 0 for never
    raw: bytes  # the encoded value as stored, to tell a changed value from an unchanged one


def check_key(key: object) -> str:
    """Return ``key`` if it is a non-empty string that UTF-8 can encode, else raise.

    Every backend stores keys as UTF-8 bytes, so a string holding a lone
    surrogate (what ``os.fsdecode`` and ``surrogateescape`` make of bytes
    that are not UTF-8) is refused with :class:`InvalidArgument` here, the
    same on every backend, rather than failing inside one of them.
    """
    if not isinstance(key, str):
        raise InvalidArgument(f"a key must be a str, not {type(key).__name__}", key=key)
    if not key:
        raise InvalidArgument("a key must not be empty", key=key)
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidArgument(
                f"a key must be encodable as UTF-8; {key!r} holds {key[error.start]!r} at"
                f" {error.start}, a lone surrogate (undecodable bytes, as surrogateescape"
                " leaves them)",
                key=key,
            ) from None
    return key


def check_delta(delta: object, key: str) -> int:
    """Return ``delta`` if it is an int (not a bool), else raise :class:`InvalidArgument`."""
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise InvalidArgument(f"delta must be an int, not {type(delta).__name__}", key=key)
    return delta


def seconds(timeout: Timeout, what: str = "timeout") -> float | None:
    """Validate a timeout given in seconds or as a timedelta; ``None`` stays ``None``."""
    if timeout is None:
        return None
    if isinstance(timeout, dt.timedelta):
        value = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        value = float(timeout)
    else:
        raise InvalidArgument(
            f"{what} must be a number of seconds or a timedelta, not {type(timeout).__name__}",
            timeout=timeout,
        )
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(
            f"{what} must be a finite number >= 0, not {timeout!r}", timeout=timeout
        )
    return value


def absolute_expiry(timeout: float) -> int:
    """The absolute expiry of a timeout in seconds from now; 0 stays 0 (never)."""
    if timeout == 0:
        return 0
    expires = int(time.time()) + math.ceil(timeout)
    if expires > MAX_EXPIRES:
        raise InvalidArgument(
            f"timeout {timeout!r} ends after 2106, beyond what the cache can store;"
            " use 0 for no expiry",
            timeout=timeout,
        )
    return expires


class Transaction(MutableMapping[str, Any]):
    """The current values of a transaction's keys; a missing key is absent.

    Only the keys named when the transaction began can be set or deleted:
    they are the ones it holds locks for.
    """

    def __init__(self, keys: Collection[str], values: dict[str, Any]) -> None:
        self._keys = frozenset(keys)
        self._values = values

    def _check(self, key: str) -> None:
        if key not in self._keys:
            raise InvalidArgument(
                f"{key!r} is not locked by this transaction; name it in"
                f" transaction(cache, ...) (it holds {sorted(self._keys)})",
                key=key,
            )

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._check(key)
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        self._check(key)
        del self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Transaction({self._values!r})"


class LockHandle:
    """What ``with cachekit.lock(cache, name) as handle`` gives the block.

    ``handle.token`` is the *fencing token* of this grant: an integer larger
    than that of every earlier grant of the same lock name, across every
    process and host that shares the cache. Pass it to a store you write to
    inside the block and have the store refuse a write whose token is lower
    than one it has already seen: a holder that was paused past its lease
    (and overtaken) then cannot overwrite the newer holder's work.

    ``handle.is_held()`` tells whether the lock is still this holder's (on
    Redis a round trip that checks the lease; a lock held by the kernel or in
    memory is held until the block ends); ``handle.check()`` raises
    :class:`~cachekit.errors.LeaseLost` if not. Leaving the block raises
    ``LeaseLost`` too if the lock was lost while held.
    """

    __slots__ = ("_active", "_still_held", "name", "token")

    def __init__(self, name: str, token: int, still_held: Callable[[], bool]) -> None:
        self.name = name
        self.token = token
        self._still_held = still_held
        self._active = True

    def is_held(self) -> bool:
        """Whether the lock is still this holder's (False once the block has ended)."""
        return self._active and self._still_held()

    def check(self) -> None:
        """Raise :class:`~cachekit.errors.LeaseLost` unless the lock is still held."""
        if not self.is_held():
            raise LeaseLost(
                f"lock {self.name!r} is no longer held by this holder (fencing token"
                f" {self.token}): another holder may be running",
                name=self.name,
            )

    def __repr__(self) -> str:
        return f"LockHandle({self.name!r}, token={self.token})"


class Strategy(ABC):
    """Atomic operations on one backend instance; one instance per backend per process."""

    #: The backend's name in messages and documentation.
    name = "backend"
    #: The backend's own exceptions that mean "not now, try again" when a plain
    #: ``cache.get`` meets them (answered 503 by the JSON error handlers).
    unavailable: ClassVar[tuple[type[Exception], ...]] = ()
    #: Whether the backend keeps its state inside one process (SimpleCache): right for
    #: one process only; refused under several workers and by the CLI's writes.
    per_process: ClassVar[bool] = False
    #: How :func:`cachekit.signing.install` signs this backend's values: ``"file"`` and
    #: ``"redis"`` (a serializer of cachelib's kind), ``"lmdb"`` (LMDBCache's store), or
    #: ``""``: not signed, for :attr:`unsigned_reason`.
    signing: ClassVar[str] = ""
    unsigned_reason: ClassVar[str] = "cachekit does not know this backend's stored form"

    def __init__(
        self, backend: Any, settings: Settings = DEFAULTS, *, locks: StripedLocks | None = None
    ) -> None:
        """Every strategy is made as ``cls(backend, settings)`` (:mod:`cachekit.backends`).

        ``locks``: the striped locks of the backend (default: thread locks, for
        a backend that lives in one process).
        """
        self.backend = backend
        self.settings = settings
        self._locks = StripedLocks() if locks is None else locks
        self._thread_state = PerProcessValue(lambda: threading.local())
        self.stats = Stats()
        statistics.track(self)
        #: The backend's signed form (:mod:`cachekit.signing`), once installed; None before.
        self.form: Any = None
        self.codec: Any = None
        self.use_codec(getattr(backend, "_cachekit_codec", None))

    def use_codec(self, codec: Any) -> None:
        """Read and write through ``codec`` (a :class:`cachekit.signing.Codec`, or None).

        Called when the strategy is made and when :func:`cachekit.signing.install`
        replaces the backend's codec. Under ``CACHEKIT_UNSIGNED = "miss"`` this
        instance's ``_load`` and ``_load_many`` read an unsigned value as missing.
        """
        self.codec = codec
        if codec is not None:  # what it refused before this strategy was made
            for name, amount in codec.take_pending().items():
                self.stats.count(name, amount)
        serializer = getattr(self.backend, "serializer", None)
        installed = codec is not None and getattr(serializer, "codec", None) is codec
        self.form = serializer if installed else None
        for name in ("_load", "_load_many"):
            self.__dict__.pop(name, None)
        if codec is not None and codec.reads_unsigned_as_missing:
            self._read_unsigned_as_missing()

    def _read_unsigned_as_missing(self) -> None:
        from .errors import ReadAsMissing

        load, load_many = self._load, self._load_many

        def _load(key: str) -> Entry | None:
            try:
                return load(key)
            except ReadAsMissing:
                return None

        def _load_many(keys: list[str]) -> list[Entry | None]:
            try:
                return load_many(keys)
            except ReadAsMissing:
                return [_load(key) for key in keys]

        self._load = _load  # type: ignore[method-assign]
        self._load_many = _load_many  # type: ignore[method-assign]

    # -- what the strategy answers for its backend --------------------------------

    @classmethod
    def diagnose(cls, backend: Any, settings: Settings) -> list[Finding]:
        """What in ``backend``'s setup would lose or corrupt state, with the fix.

        Looks at the live backend (its files, its server: each reply waited
        for at most ``settings.check_timeout`` seconds) without creating a strategy,
        and changes nothing. Subclasses add their own findings to these.
        """
        timeout = getattr(backend, "default_timeout", 0)
        if not timeout:
            return []
        return [
            Finding(
                WARNING,
                f"the default timeout is {timeout} s: what plain cache.set stores expires"
                " after it (cachekit's helpers keep no expiry unless asked)",
                "write shared state only through cachekit, or set CACHE_DEFAULT_TIMEOUT=0",
            )
        ]

    def rate_limits(self) -> RateLimits | None:
        """The backend's native rate limits (one server-side step per hit), or None.

        None: ``cachekit://`` counts with this strategy's ``update`` instead.
        """
        return None

    @property
    def stats_interval(self) -> float:
        """How often this strategy's counts are flushed (``CACHEKIT_STATS_INTERVAL``)."""
        return self.settings.stats_interval

    @property
    def _local(self) -> threading.local:
        """This thread's (greenlet's, under gevent) own state: nesting, flushing."""
        return self._thread_state.get()

    # -- hooks ---------------------------------------------------------------

    def _hold(
        self, domain: int, names: Collection[str], timeout: float | None, what: str
    ) -> AbstractContextManager[int]:
        return self._timed_hold(domain, names, timeout, what)

    @contextmanager
    def _timed_hold(
        self, domain: int, names: Collection[str], timeout: float | None, what: str
    ) -> Iterator[int]:
        began = time.monotonic()
        counted = not self._local.__dict__.get("flushing")  # a flush counts nothing of its own
        contentions = self._locks.contentions()
        entered = False
        try:
            with self._locks.hold(domain, names, timeout, what) as token:
                entered = True
                if not counted:
                    pass
                elif self._locks.contentions() != contentions:
                    self.stats.waited(time.monotonic() - began)
                else:
                    self.stats.count(UNCONTENDED)
                yield token
        except LockTimeout:
            if counted and not entered:
                self.stats.count("lock_timeouts")
            raise

    # -- statistics ----------------------------------------------------------

    def _started(self, operation: str) -> None:
        if not self._local.__dict__.get("flushing"):
            self.stats.count(f"operations:{operation}")

    def _finished(self) -> None:
        """An operation ended: flush the statistics if due, then the backend's upkeep.

        Neither runs while this thread holds a lock (no nesting).
        """
        statistics.ensure_timer()
        if self._locks.holds_any():
            return
        if isinstance(sys.exc_info()[1], StorageError):  # (in a finally: the op's own error)
            self.stats.hold_off(self.settings.fail_open_pause)
            return
        if self.stats.due(self.settings.stats_interval):
            self.flush_stats(wait=False)
        self._upkeep()

    def _upkeep(self) -> None:  # noqa: B027 (a hook that most backends leave empty)
        """The backend's housekeeping after an operation, outside every lock (a sweep)."""

    def flush_stats(self, *, wait: bool = True) -> None:
        """Add this process's counts since the last flush to the shared cache; never raises.

        One flush of this strategy runs at a time: a caller that flushes before
        reading the merged figures waits for a flush in flight (the timer's)
        to land; with ``wait=False`` (an operation's own, the timer's) it
        leaves the counts to that flush's successor instead of queueing.
        """
        if self._local.__dict__.get("flushing"):
            return
        flushing = self.stats.flushing
        if not flushing.acquire(blocking=wait):
            return
        self._local.flushing = True
        try:
            pending = self.stats.take_pending()
            for name, amount in pending.items():
                if amount:
                    self.incr(STATS_PREFIX + name, amount, None)
        except Exception:  # statistics must never fail the app
            self.stats.hold_off(self.settings.fail_open_pause)
            log.debug("could not flush cachekit statistics", exc_info=True)
        finally:
            self._local.flushing = False
            flushing.release()

    def merged_stats(self) -> dict[str, Any]:
        """The statistics of every process, as flushed to the shared cache."""
        counts = {}
        for name in stat_names():
            entry = self._load(STATS_PREFIX + name)
            counts[name] = entry.value if entry is not None else 0
        return summary(counts)

    def process_stats(self) -> dict[str, Any]:
        """The statistics of this process since it started (or forked)."""
        return summary(self.stats.total)

    @abstractmethod
    def _load(self, key: str) -> Entry | None:
        """The current value of ``key``; ``None`` if missing or expired.

        Raises :class:`~cachekit.errors.CorruptValue` for a value that cannot be
        decoded: never a silent miss.
        """

    def _load_many(self, keys: list[str]) -> list[Entry | None]:
        """The current entries of ``keys``, in order; a backend with a batch read overrides it.

        Raises :class:`~cachekit.errors.CorruptValue` as :meth:`_load` does.
        """
        return [self._load(key) for key in keys]

    @abstractmethod
    def _dumps(self, value: Any) -> bytes | None:
        """``value`` in stored form; may raise, or return None as cachelib's serializers do."""

    @abstractmethod
    def _loads(self, raw: bytes) -> Any:
        """The value of a stored form; raises if it cannot be decoded."""

    def _encode(self, key: str, value: Any) -> bytes:
        """``value`` in stored form; :class:`~cachekit.errors.SerializationError` if impossible."""
        return codecs.encode(key, value, self._dumps)

    def _decode(self, key: str, raw: bytes, path: str | None = None) -> Any:
        """The value of ``key``'s stored form; :class:`~cachekit.errors.CorruptValue` if bad."""
        return codecs.decode(key, raw, self._loads, path)

    @abstractmethod
    def _commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str],
        read: Mapping[str, Entry | None],
    ) -> None:
        """Store encoded values with their absolute expiry, and delete keys.

        The caller holds the keys' locks. Everything that can fail before the
        first change (staging, space) fails before it, leaving every key as it was.
        ``read`` holds what the caller loaded of the keys it writes, for a
        backend whose writers do not all take the locks (Redis's native
        ``INCRBY``) to check that nothing changed them meanwhile.
        """

    def read(self, key: str) -> Entry | None:
        """The current entry of ``key`` (None if missing); for tools such as the CLI."""
        return self._load(check_key(key))

    def check_usable(self) -> None:  # noqa: B027 (a hook that most backends leave empty)
        """Raise if the backend cannot be shared safely in the current context."""

    def default_timeout(self) -> float:
        """The backend's default timeout in seconds (0: never), for ``get_or_compute``."""
        return float(getattr(self.backend, "default_timeout", 0) or 0)

    # -- the public storage interface (the compute-once engine, rate limits) --------

    def load(self, key: str) -> Entry | None:
        """The current entry of a checked ``key``; ``None`` if missing (CorruptValue if bad)."""
        return self._load(key)

    def load_many(self, keys: list[str]) -> list[Entry | None]:
        """The current entries of checked ``keys``, in order, in one read where the backend can."""
        return self._load_many(keys)

    def encode(self, key: str, value: Any) -> bytes:
        """``value`` in this backend's stored form (SerializationError if impossible)."""
        return self._encode(key, value)

    def commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str] = (),
        read: Mapping[str, Entry | None] | None = None,
    ) -> None:
        """Write encoded values (with absolute expiry) and delete keys; see :meth:`_commit`.

        The caller holds the keys through :meth:`modifying`.
        """
        self._commit(writes, deletes, {} if read is None else read)

    def hold(
        self, domain: int, names: Collection[str], wait: float | None, what: str
    ) -> AbstractContextManager[int]:
        """Hold the stripes of ``names`` in ``domain`` (KEYS, COMPUTE, LOCKS), waiting ``wait``.

        Yields the grant's fencing token; raises :class:`LockTimeout` when the
        wait runs out (``0``: only try).
        """
        return self._hold(domain, names, wait, what)

    def modifying(self, keys: Collection[str]) -> AbstractContextManager[None]:
        """Hold ``keys`` for a read-modify-write (nesting on one key refused)."""
        return self._modifying(keys)

    def holds_lock(self) -> bool:
        """Whether the calling thread holds any of this strategy's locks."""
        return self._locks.holds_any()

    def started(self, operation: str) -> None:
        """Count one ``operation`` (a name of :data:`cachekit.stats.OPERATIONS`)."""
        self._started(operation)

    def finished(self) -> None:
        """End of an operation: statistics flushed when due, the backend's upkeep."""
        self._finished()

    # -- shared helpers ------------------------------------------------------

    @contextmanager
    def _busy(self, keys: Collection[str]) -> Iterator[None]:
        """Mark ``keys`` as being modified by this thread; refuse if one already is.

        A nested read-modify-write of a key by the thread that is already
        modifying it would be overwritten when the outer one commits, so it is
        an error rather than a lost update.
        """
        busy: set[str] = self._local.__dict__.setdefault("busy", set())
        self._refuse_nesting(busy, keys)
        busy.update(keys)
        try:
            yield
        finally:
            busy.difference_update(keys)

    @staticmethod
    def _refuse_nesting(busy: set[str] | None, keys: Collection[str]) -> None:
        clash = busy.intersection(keys) if busy else None
        if clash:
            raise InvalidArgument(
                f"key {sorted(clash)[0]!r} is already being modified by this thread"
                " (an update or transaction inside another on the same key would lose"
                " the inner change)",
                key=sorted(clash)[0],
            )

    @contextmanager
    def _modifying(self, keys: Collection[str]) -> Iterator[None]:
        """Lock ``keys`` for a read-modify-write (see :meth:`_busy` for nesting)."""
        what = f"key {next(iter(keys))!r}" if len(keys) == 1 else f"keys {sorted(keys)!r}"
        with self._busy(keys), self._hold(KEYS, keys, self.settings.key_wait, what):
            yield

    @staticmethod
    def _expires(timeout: float | None, old: Entry | None) -> int:
        if timeout is None:
            return old.expires if old is not None else 0
        return absolute_expiry(timeout)

    # -- public operations ---------------------------------------------------

    def incr(self, key: str, delta: int, timeout: Timeout) -> int:
        check_delta(delta, check_key(key))
        wanted = seconds(timeout)
        self._started("incr")
        try:
            with self._modifying((key,)):
                old = self._load(key)
                current = 0 if old is None else old.value
                if not isinstance(current, int) or isinstance(current, bool):
                    raise ValueTypeError(
                        f"key {key!r} holds a {type(current).__name__}, not an int: incr"
                        " cannot add to it",
                        key=key,
                    )
                new = current + delta
                self._commit(
                    {key: (self._encode(key, new), self._expires(wanted, old))}, (), {key: old}
                )
                return new
        finally:
            self._finished()

    def update(self, key: str, fn: Callable[[Any], T], default: Any, timeout: Timeout) -> T:
        check_key(key)
        wanted = seconds(timeout)
        self._started("update")
        try:
            with self._modifying((key,)):
                old = self._load(key)
                new = fn(copy.deepcopy(default) if old is None else old.value)
                self._commit(
                    {key: (self._encode(key, new), self._expires(wanted, old))}, (), {key: old}
                )
                return new
        finally:
            self._finished()

    @contextmanager
    def transaction(self, keys: Collection[str], timeout: Timeout) -> Iterator[Transaction]:
        for key in keys:
            check_key(key)
        if not keys:
            raise InvalidArgument("transaction needs at least one key")
        wanted = seconds(timeout)
        self._started("transaction")
        with self._modifying(keys):
            entries = {key: self._load(key) for key in keys}
            values = {key: entry.value for key, entry in entries.items() if entry is not None}
            yield Transaction(keys, values)
            writes: dict[str, tuple[bytes, int]] = {}
            deletes: list[str] = []
            for key, old in entries.items():
                if key in values:
                    raw = self._encode(key, values[key])
                    if old is None or raw != old.raw or wanted is not None:
                        writes[key] = (raw, self._expires(wanted, old))
                elif old is not None:
                    deletes.append(key)
            if writes or deletes:
                self._commit(writes, deletes, entries)
        self._finished()

    def lock(self, name: str, timeout: Timeout) -> AbstractContextManager[LockHandle]:
        check_key(name)
        return self._locked(name, seconds(timeout, "lock timeout"))

    @contextmanager
    def _locked(self, name: str, wait: float | None) -> Iterator[LockHandle]:
        self._started("lock")
        number = self._locks.stripe(LOCKS, name)
        with self._hold(LOCKS, (name,), wait, f"lock {name!r}") as token:
            handle = LockHandle(name, token, lambda: self._locks.still_held(number))
            try:
                yield handle
            finally:
                handle._active = False
        self._finished()
