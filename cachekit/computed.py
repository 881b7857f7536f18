"""Computed values without stampedes: single flight, stale while revalidate, early refresh, tags.

The engine under :func:`cachekit.memoize`, :func:`cachekit.cached` and
``get_or_compute(..., stale=, beta=, tags=)``. A computed value is stored
under its key as a *record*, a plain tuple (unpickling it needs no class of
cachekit's; a serializer that does not keep tuples, such as JSON, is not
supported)::

    (MARK, value, fresh_until, delta, generations)

- ``fresh_until``: the Unix time (a float, of the computing host's clock)
  until which the value is fresh; ``0.0`` for ever.
- ``delta``: how many seconds its computation took: XFetch's δ.
- ``generations``: ``((tag, generation), ...)`` of its tags, as read before
  the computation began.

The key's own expiry in the backend is ``fresh_until + stale``, in whole
seconds rounded up: past it the record is gone.

How a call is served (:func:`fetch`):

- **Fresh** (``now < fresh_until``): the value, at once. With ``beta > 0`` a
  background refresh starts early with XFetch's probability (Vattani,
  Chierichetti, Lowenstein, VLDB 2015): when ``fresh_until - now <= δ·β·(-ln
  U)``, ``U`` uniform in (0, 1], *truncated* so that it never starts more than
  ``δ·β`` before expiry. Untruncated, the expected head start grows as
  ``δ·β·ln(rate·δ·β)``, so a hot key would be recomputed back to back; with
  ``beta <= 1`` the truncation keeps it to at most one computation per
  timeout, with the new value ready about when the old one expires.
- **Stale** (``fresh_until <= now < fresh_until + stale``): the old value,
  at once, and a background refresh.
- **Miss** (nothing usable): *single flight*. The caller takes the key's
  ``COMPUTE`` stripe (a thread lock, a record lock in a file, or a Redis
  lease: across threads, processes and hosts), reads again, and computes only
  if there is still nothing fresh; every other caller waits for the stripe
  (at most ``CACHEKIT_COMPUTE_WAIT``) and reads the result.

Invariants:

- **One stored computation of a key at a time, everywhere.** Every
  computation whose value is stored, in the foreground or the background,
  runs while holding the key's COMPUTE stripe and stores its record before
  releasing it. A background refresh only *tries* the stripe (a wait of 0)
  and, once it has it, computes only if the record is still the one that
  made it start. Computations that store nothing run without it: a caller
  failing open, and a nested caller that found the stripe taken (below). On
  Redis the stripe is a lease: a holder paused past it loses it.
- **No caller waits on a recomputation while a value may be served.** A
  refresh runs on a thread of its own (a greenlet under gevent), at most one
  per key per process and :data:`MAX_REFRESHES` in all, with a copy of the
  caller's Flask context; a key whose refresh failed is not refreshed again
  for ``CACHEKIT_FAIL_OPEN_PAUSE`` seconds (1 s). Starting one never fails the caller.
- **No wait against the lock order.** A caller whose thread already holds a
  cachekit lock only tries the COMPUTE stripe, and computes uncached if it is
  taken. Coroutines of one event loop (one thread, so one holder of the
  stripe) first join a flight of their loop.
- **Tags are immediate.** :func:`invalidate` gives each tag a new random
  generation (63 bits), and a record is served, fresh or stale, only if each
  of its tags still has the generation the record was computed under. So a
  call that starts after ``invalidate`` returned never gets a value computed
  before it (with the Redis near cache, in another process: once the server's
  invalidation has reached it, :mod:`cachekit.redis.near`). A tag's
  generation is created (at random) before the first computation that reads
  it: a generation that is lost (a pruned file, a cleared cache) is replaced
  by a new random one, never reset to an old value, so it can only cause
  misses, never bring an invalidated value back.
  Cost: one read per tag per call, in the same round trip as the value
  (``MGET``; one LMDB snapshot; on a Cluster a ``GET`` each).
- **forget() is immediate too.** It holds the key's COMPUTE stripe while it
  deletes the key, so a computation that began before it cannot store after it.
- **Backend trouble fails open.** When the cache cannot be read or written
  (:class:`~cachekit.errors.StorageError`), or another caller's computation
  is not done within ``CACHEKIT_COMPUTE_WAIT``, the function is called and
  its value returned uncached (counted as ``errors``); for
  ``CACHEKIT_FAIL_OPEN_PAUSE`` seconds (1 s) after a storage failure this process then
  calls the function without trying the cache, so that an unreachable server
  costs one bounded wait, not one per call. ``fail_open=False`` raises instead.
  A record that cannot be decoded is a miss, and is overwritten.

Statistics per function name (:func:`statistics`): ``hits`` (fresh values
served), ``stale`` (stale values served), ``misses`` (calls that found
nothing usable), ``joined`` (of those, calls that waited for another
caller's computation and got its value), ``computations`` (runs of the
function, foreground and background), ``refreshes`` (background
computations), ``early`` (of those, started early by XFetch),
``refresh_errors``, ``errors`` (calls served uncached: backend trouble, a
wait that ran out, a nested caller that found the stripe taken) and
``bypassed`` (calls ``unless`` or a request ``cached`` does not serve sent
straight to the function).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

from flask import copy_current_request_context, current_app, has_app_context, has_request_context

from .errors import CorruptValue, InvalidArgument, LockTimeout, StorageError, TamperedValue
from .resolve import CacheLike, strategy_for
from .settings import DEFAULTS
from .strategy import MAX_EXPIRES, Entry, Strategy, Timeout, absolute_expiry, check_key, seconds
from .threadlocks import COMPUTE, PerProcessValue

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The first item of every record: tells a record from a plain value.
MARK: Final = "cachekit.computed/1"
#: Prefix of a tag's generation key.
TAG_PREFIX: Final = "cachekit:tag:"
#: Seconds a process calls functions directly after the cache failed it (fail open).
RETRY_AFTER: Final = DEFAULTS.fail_open_pause
#: Every per-function statistic.
COUNTERS: Final = (
    "hits",
    "stale",
    "misses",
    "joined",
    "computations",
    "refreshes",
    "early",
    "refresh_errors",
    "errors",
    "bypassed",
    "tampered",  # values refused by their signature check, recomputed (cachekit.signing)
)
#: Stats counter prefix of the per-function figures: ``memo:<name>:<counter>``.
STATS_PREFIX: Final = "memo:"
#: What plain ``get_or_compute`` counts, in the strategy's figures, for each event.
_BARE_COUNTERS: Final = {
    "hits": "computes_saved",
    "joined": "computes_saved",
    "computations": "computes",
}

#: Every name :func:`fetch` counted under in this process, for :func:`statistics`.
NAMES: set[str] = set()


@dataclass(frozen=True)
class Policy:
    """How one function's values are cached; checked once, when it is decorated."""

    name: str
    timeout: float | None  # None: the backend's default timeout
    stale: float = 0.0
    beta: float = 0.0
    fail_open: bool = True
    #: The stored form is the value itself, not a record (plain ``get_or_compute``:
    #: ``cache.get`` reads it); fresh until the backend expires it. No tags, stale or beta.
    bare: bool = False

    @classmethod
    def of(
        cls,
        name: str,
        timeout: Timeout,
        stale: Timeout = 0,
        beta: float = 0.0,
        fail_open: bool = True,
    ) -> Policy:
        if (
            not isinstance(beta, (int, float))
            or isinstance(beta, bool)
            or not math.isfinite(beta)
            or beta < 0
        ):
            raise InvalidArgument(f"beta must be a finite number >= 0, not {beta!r}", beta=beta)
        fresh, stale_s = seconds(timeout), seconds(stale, "stale") or 0.0
        if time.time() + (fresh or 0.0) + stale_s > MAX_EXPIRES:
            raise InvalidArgument(
                f"timeout {timeout!r} plus stale {stale!r} ends after 2106, beyond what the"
                " cache can store; use timeout=0 for no expiry",
                timeout=timeout,
            )
        NAMES.add(name)
        return cls(name, fresh, stale_s, float(beta), fail_open)

    @classmethod
    def plain(cls, timeout: Timeout) -> Policy:
        """Plain ``get_or_compute``: the bare value, never failing open, counted as before."""
        return cls("get_or_compute", seconds(timeout), fail_open=False, bare=True)


class Record:
    """A decoded record: what :func:`fetch` serves from."""

    __slots__ = ("delta", "fresh_until", "generations", "value")

    def __init__(
        self, value: Any, fresh_until: float, delta: float, generations: tuple[Any, ...]
    ) -> None:
        self.value = value
        self.fresh_until = fresh_until
        self.delta = delta
        self.generations = generations

    @classmethod
    def of(cls, entry: Entry | None) -> Record | None:
        """The record in ``entry``; None if missing or not a record (a plain value)."""
        if entry is None:
            return None
        stored = entry.value
        if is_record(stored):
            return cls(stored[1], stored[2], stored[3], stored[4])
        return None

    @classmethod
    def bare(cls, key: str, entry: Entry | None) -> Record | None:
        """A plain value as a record fresh for ever (its backend expiry governs it).

        A record where a plain value belongs is refused: it was written by
        ``memoize`` or ``get_or_compute`` with ``stale``, ``beta`` or ``tags``.
        """
        if entry is None:
            return None
        if is_record(entry.value):
            raise InvalidArgument(
                f"key {key!r} holds a value of memoize or of get_or_compute with stale, beta"
                " or tags: read it the way it was written",
                key=key,
            )
        return cls(entry.value, 0.0, 0.0, ())

    def stored(self) -> tuple[Any, ...]:
        return (MARK, self.value, self.fresh_until, self.delta, self.generations)


def is_record(stored: Any) -> bool:
    """Whether ``stored`` is a record (the stored form of a computed value)."""
    return type(stored) is tuple and len(stored) == 5 and stored[0] == MARK


def tag_key(tag: str) -> str:
    """The key of ``tag``'s generation."""
    return TAG_PREFIX + check_key(tag)


def new_generation() -> int:
    """A fresh random generation: never 0, and equal to an earlier one with odds 2**-63."""
    return secrets.randbits(63) | 1


class Call(NamedTuple):
    """One call of a cached function: where its value lives and how it is cached."""

    strategy: Strategy
    key: str
    tags: Sequence[str]
    policy: Policy
    should_cache: Callable[[Any], bool] | None

    def tally(self, counter: str) -> None:
        """Count one event of this call's function (see :func:`count`)."""
        if self.policy.bare:  # plain get_or_compute: the strategy's own figures
            name = _BARE_COUNTERS.get(counter)
            if name is not None:
                self.strategy.stats.count(name)
            return
        count(self.strategy, self.policy, counter)

    def keeps(self, value: Any) -> bool:
        """Whether ``value`` may be stored (``should_cache``)."""
        return self.should_cache is None or self.should_cache(value)


# -- reading ---------------------------------------------------------------------------


def _lookup(call: Call) -> tuple[Record | None, dict[str, Any]]:
    """The key's record, if its tags are current, and the tags' current generations.

    One batch read. A record that cannot be decoded, or whose tags moved on,
    is ``None``.
    """
    strategy, tags = call.strategy, call.tags
    if call.policy.bare:  # (a corrupt value raises: plain get_or_compute never hides one)
        return Record.bare(call.key, strategy.load(call.key)), {}
    keys = [call.key, *(TAG_PREFIX + tag for tag in tags)]
    try:
        entries = strategy.load_many(keys)
    except CorruptValue as first:  # rare: read each key alone, a corrupt one as missing (replaced)
        entries = []
        for one in keys:
            try:
                if one == first.context.get("key"):
                    raise first  # (not read twice: a refusal is counted once)
                entries.append(strategy.load(one))
            except CorruptValue as error:
                log.warning("replacing the undecodable value at %r: %s", one, error)
                if one == call.key and isinstance(error, TamperedValue):
                    call.tally("tampered")
                entries.append(None)
    generations = {
        tag: (None if entry is None else entry.value)
        for tag, entry in zip(tags, entries[1:], strict=True)
    }
    record = Record.of(entries[0])
    if record is not None and record.generations != tuple(generations.items()):
        record = None
    return record, generations


def _current_generations(
    strategy: Strategy, generations: dict[str, Any]
) -> tuple[tuple[str, int], ...]:
    """The generations to store with a new record: a missing (or odd) one is created first."""
    for tag, generation in generations.items():
        if not _is_generation(generation):
            generations[tag] = _set_generation(strategy, TAG_PREFIX + tag, replace=False)
    return tuple(generations.items())


def _is_generation(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _set_generation(strategy: Strategy, key: str, replace: bool) -> int:
    """Give ``key`` a new random generation (``replace``), or one if it has none; return it.

    A plain write under the key's lock, so that racing creators agree on one,
    and a generation that cannot be decoded is replaced rather than raised.
    """
    with strategy.modifying((key,)):
        try:
            entry = strategy.load(key)
        except CorruptValue as error:
            log.warning("replacing the tag generation at %r: %s", key, error)
            entry = None
        if not replace and entry is not None and _is_generation(entry.value):
            return entry.value  # type: ignore[no-any-return]
        generation = new_generation()
        strategy.commit({key: (strategy.encode(key, generation), 0)}, (), {})
        return generation


# -- writing ---------------------------------------------------------------------------


def _store(call: Call, value: Any, delta: float, generations: tuple[tuple[str, int], ...]) -> None:
    """Store ``value``'s record under the call's key; the caller holds its COMPUTE stripe."""
    strategy, key, policy = call.strategy, call.key, call.policy
    timeout = strategy.default_timeout() if policy.timeout is None else policy.timeout
    if policy.bare:
        raw = strategy.encode(key, value)
        with strategy.modifying((key,)):
            strategy.commit({key: (raw, absolute_expiry(timeout))})
        return
    now = time.time()
    if timeout == 0:
        fresh_until, expires = 0.0, 0
    else:
        fresh_until = now + timeout
        expires = min(math.ceil(fresh_until + policy.stale), MAX_EXPIRES)
    raw = strategy.encode(key, Record(value, fresh_until, delta, generations).stored())
    with strategy.modifying((key,)):
        strategy.commit({key: (raw, expires)}, (), {})


# -- serving ---------------------------------------------------------------------------

_MISS: Final = object()


def _serve(call: Call, record: Record | None, refresh: Callable[[float, bool], None]) -> Any:
    """The value to return at once from ``record``, starting a refresh if due; else _MISS."""
    if record is None:
        return _MISS
    policy = call.policy
    fresh_until = record.fresh_until
    if fresh_until == 0.0:
        call.tally("hits")
        return record.value
    now = time.time()
    if now < fresh_until:
        call.tally("hits")
        if policy.beta > 0 and record.delta > 0:
            most = record.delta * policy.beta
            head_start = min(most * -math.log(1.0 - random.random()), most)
            if fresh_until - now <= head_start:
                refresh(fresh_until, True)
        return record.value
    if now < fresh_until + policy.stale:
        call.tally("stale")
        refresh(fresh_until, False)
        return record.value
    return _MISS


def count(strategy: Strategy | None, policy: Policy, counter: str) -> None:
    """Count one event of ``policy``'s function in ``strategy``'s statistics (if there is one)."""
    if strategy is None:
        return
    strategy.stats.count(f"{STATS_PREFIX}{policy.name}:{counter}")


class Outage:
    """Until when this process calls functions without trying the cache, per cache or strategy."""

    def __init__(self) -> None:
        self.until: dict[int, float] = {}

    def skip(self, owner: int) -> bool:
        """Whether the cache of ``owner`` (an ``id``) failed less than its pause ago."""
        until = self.until.get(owner)
        return until is not None and time.monotonic() < until

    def begin(self, owner: int, pause: float = RETRY_AFTER) -> None:
        self.until[owner] = time.monotonic() + pause


outage = Outage()


def resolved(cache: CacheLike, policy: Policy) -> Strategy | None:
    """The strategy of ``cache``; None (fail open) if it cannot be made for want of a server.

    The one fail-open policy of the decorators, with :func:`_fail_open`: for
    ``CACHEKIT_FAIL_OPEN_PAUSE`` after a failure the cache is not tried again.
    """
    if outage.skip(id(cache)):
        return None
    try:
        return strategy_for(cache)
    except StorageError as error:
        if not policy.fail_open:
            raise
        outage.begin(id(cache))
        log.warning("serving %s uncached: %s", policy.name, error)
        return None


def _fail_open(call: Call, error: Exception) -> None:
    """Count a backend failure that will be served uncached; raise it if not failing open."""
    if not call.policy.fail_open:
        raise error
    call.tally("errors")
    if isinstance(error, StorageError):
        pause = call.strategy.settings.fail_open_pause
        outage.begin(id(call.strategy), pause)
        call.strategy.stats.hold_off(pause)  # (no second wait to flush the statistics)
    log.warning("serving %s uncached: %s", call.policy.name, error)


# -- the single flight -----------------------------------------------------------------


class _Flight:
    """A miss's single flight: hold the COMPUTE stripe, read again, compute if still missing.

    ``with _Flight(call) as flight``: if ``flight.found`` is not ``_MISS``,
    serve it; else compute and call ``flight.done(value, delta)``. Backend
    failures fail open (``flight.found`` stays ``_MISS`` and ``done`` stores
    nothing).
    """

    def __init__(self, call: Call) -> None:
        self.call = call
        self.found: Any = _MISS
        self._generations: tuple[tuple[str, int], ...] | None = None
        self._hold: Any = None

    def __enter__(self) -> _Flight:
        call = self.call
        strategy = call.strategy
        call.tally("misses")
        # A caller that already holds a cachekit lock (a memoized call inside an update, or
        # inside another computation) does not wait: waiting against the lock order could
        # deadlock. It computes uncached if another caller is computing.
        # (Plain get_or_compute waits as it always did: it never computes uncached.)
        nested = strategy.holds_lock() and not call.policy.bare
        wait = 0.0 if nested else strategy.settings.compute_wait
        hold = strategy.hold(COMPUTE, (call.key,), wait, f"computation of {call.key!r}")
        try:
            hold.__enter__()
        except (StorageError, LockTimeout) as error:
            _fail_open(call, error)
            return self
        self._hold = hold
        try:
            try:
                record, generations = _lookup(call)
                if record is not None and (
                    record.fresh_until == 0.0 or time.time() < record.fresh_until
                ):
                    call.tally("joined")
                    self.found = record.value
                else:
                    self._generations = _current_generations(strategy, generations)
            except (StorageError, LockTimeout) as error:
                _fail_open(call, error)
        except BaseException:
            self._release(*sys.exc_info())
            raise
        return self

    def done(self, value: Any, delta: float) -> None:
        """Store the computed ``value`` (unless ``should_cache`` refuses it or the cache failed)."""
        self.call.tally("computations")
        if self._generations is None or not self.call.keeps(value):
            return
        try:
            _store(self.call, value, delta, self._generations)
        except StorageError as error:
            _fail_open(self.call, error)

    def _release(self, *exc: Any) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            try:
                hold.__exit__(*exc)
            except StorageError as error:  # the value is computed and served: say why not kept
                log.warning("releasing the computation of %r: %s", self.call.key, error)

    def __exit__(self, *exc: Any) -> None:
        self._release(*exc)


# -- background refresh ----------------------------------------------------------------


#: Most background refreshes one process runs at once; more are skipped (the stale value served).
MAX_REFRESHES: Final = 16


class _Refreshing:
    """This process's background refreshes: one per key at most, MAX_REFRESHES in all.

    ``failed`` remembers, per key, until when a refresh that failed is not
    tried again (``CACHEKIT_FAIL_OPEN_PAUSE``), so that a failing origin is not called on
    every stale hit.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: set[tuple[int, str]] = set()
        self.failed: dict[tuple[int, str], float] = {}

    def claim(self, mine: tuple[int, str]) -> bool:
        now = time.monotonic()
        with self.lock:
            if mine in self.keys or len(self.keys) >= MAX_REFRESHES:
                return False
            if self.failed.get(mine, 0.0) > now:
                return False
            self.keys.add(mine)
            return True

    def release(self, mine: tuple[int, str], failed: bool, pause: float = RETRY_AFTER) -> None:
        with self.lock:
            self.keys.discard(mine)
            if failed:
                if len(self.failed) > 10_000:
                    now = time.monotonic()
                    self.failed = {k: t for k, t in self.failed.items() if t > now}
                self.failed[mine] = time.monotonic() + pause
            else:
                self.failed.pop(mine, None)


_refreshing = PerProcessValue(_Refreshing)


def _refresh_in_background(
    call: Call, compute: Callable[[], Any], seen: float, early: bool
) -> None:
    """Start recomputing the call's key on a thread of its own, if this process may; never raises.

    ``seen`` is the ``fresh_until`` of the record that made the caller start
    it: the thread computes only if the record is still that one once it
    holds the COMPUTE stripe, so a value refreshed meanwhile (by another
    process) is not computed again.
    """
    refreshing = _refreshing.get()
    mine = (id(call.strategy), call.key)
    if not refreshing.claim(mine):
        return
    try:
        compute = _with_flask_context(compute)

        def run() -> None:
            failed = True
            try:
                failed = not _refresh(call, compute, seen, early)
            finally:
                refreshing.release(mine, failed, call.strategy.settings.fail_open_pause)

        threading.Thread(target=run, name=f"cachekit refresh {call.key}", daemon=True).start()
    except Exception:  # no thread to be had (a limit, shutdown): serve the value anyway
        refreshing.release(mine, True, call.strategy.settings.fail_open_pause)
        call.tally("refresh_errors")
        log.warning("could not start refreshing %r", call.key, exc_info=True)


def _with_flask_context(compute: Callable[[], T]) -> Callable[[], T]:
    """``compute`` to run on another thread inside a copy of the caller's Flask context.

    A copy of the request context (as ``flask.copy_current_request_context``
    makes) when there is a request, else a new context of the same app: the
    thread pushes its own and pops it (running teardown) when done.
    """
    if has_request_context():
        return copy_current_request_context(compute)
    if has_app_context():
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def in_app_context() -> T:
            with app.app_context():
                return compute()

        return in_app_context
    return compute


def _refresh(call: Call, compute: Callable[[], Any], seen: float, early: bool) -> bool:
    """Recompute the call's key if no one else is (a try of the stripe); False if that failed."""
    strategy = call.strategy
    try:
        hold = strategy.hold(COMPUTE, (call.key,), 0.0, f"refresh of {call.key!r}")
        try:
            hold.__enter__()
        except LockTimeout:
            return True  # another thread or process is computing it
        with ExitStack() as held:
            held.push(hold)  # entered above: released however the block ends
            record, generations = _lookup(call)
            if record is not None and record.fresh_until != seen:
                return True  # refreshed meanwhile
            fresh = _current_generations(strategy, generations)
            call.tally("refreshes")
            if early:
                call.tally("early")
            started = time.monotonic()
            value = compute()
            delta = time.monotonic() - started
            call.tally("computations")
            if not call.keeps(value):
                return False  # not stored: back off, as after a failure
            _store(call, value, delta, fresh)
            return True
    except Exception:
        log.exception(
            "refreshing %s (key %r) failed; the old value is served meanwhile",
            call.policy.name,
            call.key,
        )
        call.tally("refresh_errors")
        return False
    finally:
        strategy.finished()


# -- the entry points ------------------------------------------------------------------


_UNCACHED: Final = object()


def _at_once(call: Call, compute: Callable[[], Any]) -> Any:
    """What a call gets without computing in the foreground: a value, _MISS or _UNCACHED.

    ``compute`` is what a background refresh runs; _UNCACHED means the cache
    failed (fail open: compute and return, storing nothing).
    """
    if call.policy.fail_open and outage.skip(id(call.strategy)):
        call.tally("errors")
        return _UNCACHED
    try:
        record, _ = _lookup(call)
    except StorageError as error:
        _fail_open(call, error)
        return _UNCACHED

    def refresh(seen: float, early: bool) -> None:
        _refresh_in_background(call, compute, seen, early)

    return _serve(call, record, refresh)


def fetch(
    strategy: Strategy,
    key: str,
    compute: Callable[[], T],
    policy: Policy,
    tags: Sequence[str] = (),
    should_cache: Callable[[Any], bool] | None = None,
) -> T:
    """``key``'s value: served, refreshed or computed once, as the module describes."""
    call = Call(strategy, key, tags, policy, should_cache)
    try:
        found = _at_once(call, compute)
        if found is _UNCACHED:
            call.tally("computations")
            return compute()
        if found is not _MISS:
            return found  # type: ignore[no-any-return]
        with _Flight(call) as flight:
            if flight.found is not _MISS:
                return flight.found  # type: ignore[no-any-return]
            started = time.monotonic()
            value = compute()
            flight.done(value, time.monotonic() - started)
            return value
    finally:
        strategy.finished()


async def fetch_async(
    strategy: Strategy,
    key: str,
    compute: Callable[[], Awaitable[T]],
    policy: Policy,
    tags: Sequence[str] = (),
    should_cache: Callable[[Any], bool] | None = None,
) -> T:
    """:func:`fetch` for a coroutine function.

    Waits (for the single flight, for the cache) block the calling thread, as
    they do in :func:`fetch`: Flask runs each async view in a thread and
    event loop of its own. A background refresh runs the coroutine in a new
    event loop on its own thread.
    """
    call = Call(strategy, key, tags, policy, should_cache)
    try:
        found = _at_once(call, lambda: asyncio.run(_awaited(compute)))
        if found is _UNCACHED:
            call.tally("computations")
            return await compute()
        if found is not _MISS:
            return found  # type: ignore[no-any-return]
        # The stripe is a thread's lock, and every coroutine of this loop runs on one
        # thread: coroutines of one loop join a flight of their own first.
        loop = asyncio.get_running_loop()
        mine = (id(strategy), key)
        with _loops_lock:
            flights = _loop_flights.setdefault(loop, {})
        while (pending := flights.get(mine)) is not None:
            try:
                value = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and not (task and task.cancelling()):
                    continue  # the computing coroutine was cancelled, not this one
                raise
            call.tally("misses")
            call.tally("joined")
            return value  # type: ignore[no-any-return]
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(_retrieved)
        flights[mine] = future
        try:
            with _Flight(call) as flight:
                if flight.found is not _MISS:
                    value = flight.found
                else:
                    started = time.monotonic()
                    value = await compute()
                    flight.done(value, time.monotonic() - started)
            future.set_result(value)
            return value  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            future.cancel()  # its waiters try again
            raise
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            del flights[mine]
    finally:
        strategy.finished()


#: Per event loop, the misses its coroutines are computing: (id(strategy), key) -> result.
_loop_flights: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, str], asyncio.Future[Any]]
] = weakref.WeakKeyDictionary()
_loops_lock = threading.Lock()


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a flight's exception as seen (its waiters, if any, raise it themselves)."""
    if not future.cancelled():
        future.exception()


async def _awaited(compute: Callable[[], Awaitable[T]]) -> T:
    return await compute()


def forget(strategy: Strategy, key: str) -> None:
    """Delete ``key``'s value, after any computation of it in flight has stored its own."""
    check_key(key)
    with (
        strategy.hold(COMPUTE, (key,), strategy.settings.compute_wait, f"computation of {key!r}"),
        strategy.modifying((key,)),
    ):
        if strategy.load_many([key])[0] is not None:
            strategy.commit({}, (key,), {})


def invalidate(strategy: Strategy, tags: Iterable[str]) -> None:
    """Give each tag a new generation: every value computed under the old one is gone.

    Raises (never fails open): a call that returns has invalidated every tag.
    """
    if isinstance(tags, (str, bytes)):
        raise InvalidArgument(f"tags must be a collection of str, not the str {tags!r}")
    keys = [tag_key(tag) for tag in tags]
    try:
        for key in keys:
            _set_generation(strategy, key, replace=True)
    finally:
        strategy.finished()


def statistics(strategy: Strategy, merged: bool) -> dict[str, dict[str, int]]:
    """Per-function figures: every process's (``merged``, as flushed) or this one's."""
    figures: dict[str, dict[str, int]] = {}
    if merged:
        names = sorted(NAMES.copy())
        keys = [f"cachekit:stats:{STATS_PREFIX}{n}:{c}" for n in names for c in COUNTERS]
        entries = iter(strategy.load_many(keys)) if keys else iter(())
        for name in names:
            figures[name] = {
                counter: int(entry.value) if (entry := next(entries)) is not None else 0
                for counter in COUNTERS
            }
        return figures
    total = strategy.stats.total
    for name in sorted(NAMES.copy()):
        figures[name] = {c: int(total.get(f"{STATS_PREFIX}{name}:{c}", 0)) for c in COUNTERS}
    return figures
