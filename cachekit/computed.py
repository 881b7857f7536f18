"""Computed values without stampedes: single flight, stale while revalidate, early refresh, tags.

The engine under :func:`cachekit.memoize`, :func:`cachekit.cached` and
``get_or_compute(..., stale=, beta=, tags=)``. A computed value is stored
under its key as a *record*, a plain tuple (so that any pickler stores it)::

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

- **One computation of a key at a time, everywhere.** Every computation,
  in the foreground or the background, runs while holding the key's COMPUTE
  stripe and stores its record before releasing it. A background refresh
  only *tries* the stripe (a wait of 0) and, once it has it, computes only
  if the record is still the one that made it start.
- **No caller waits on a recomputation while a value may be served.** A
  refresh runs on a thread of its own (a greenlet under gevent), at most one
  per key per process, with a copy of the caller's Flask context.
- **Tags are immediate.** :func:`invalidate` gives each tag a new random
  generation (63 bits), and a record is served, fresh or stale, only if each
  of its tags still has the generation the record was computed under. So a
  call that starts after ``invalidate`` returned never gets a value computed
  before it. A tag's generation is created (at random) before the first
  computation that reads it: a generation that is lost (a pruned file, a
  cleared cache) is replaced by a new random one, never reset to an old
  value, so it can only cause misses, never bring an invalidated value back.
  Cost: one read per tag per call, in the same round trip as the value
  (``MGET``; one LMDB snapshot).
- **forget() is immediate too.** It holds the key's COMPUTE stripe while it
  deletes the key, so a computation that began before it cannot store after it.
- **Backend trouble fails open.** When the cache cannot be read or written
  (:class:`~cachekit.errors.StorageError`), or another caller's computation
  is not done within ``CACHEKIT_COMPUTE_WAIT``, the function is called and
  its value returned uncached (counted as ``errors``); for
  :data:`RETRY_AFTER` seconds after a storage failure this process then
  calls the function without trying the cache, so that an unreachable server
  costs one bounded wait, not one per call. ``fail_open=False`` raises instead.
  A record that cannot be decoded is a miss, and is overwritten.

Statistics per function name (:func:`statistics`): ``hits`` (fresh values
served), ``stale`` (stale values served), ``misses`` (calls that found
nothing usable), ``joined`` (of those, calls that waited for another
caller's computation and got its value), ``computations`` (runs of the
function, foreground and background), ``refreshes`` (background
computations), ``early`` (of those, started early by XFetch),
``refresh_errors``, ``errors`` (calls served uncached because of backend
trouble) and ``bypassed`` (calls ``unless`` sent straight to the function).
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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from flask import copy_current_request_context, current_app, has_app_context, has_request_context

from .errors import CorruptValue, InvalidArgument, LockTimeout, StorageError
from .strategy import MAX_EXPIRES, Entry, Strategy, Timeout, check_key, seconds
from .threadlocks import COMPUTE, PerProcessValue

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The first item of every record: tells a record from a plain value.
MARK: Final = "cachekit.computed/1"
#: Prefix of a tag's generation key.
TAG_PREFIX: Final = "cachekit:tag:"
#: Seconds a process calls functions directly after the cache failed it (fail open).
RETRY_AFTER: Final = 1.0
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
)
#: Stats counter prefix of the per-function figures: ``memo:<name>:<counter>``.
STATS_PREFIX: Final = "memo:"

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
        NAMES.add(name)
        return cls(name, seconds(timeout), seconds(stale, "stale") or 0.0, float(beta), fail_open)


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
        if type(stored) is tuple and len(stored) == 5 and stored[0] == MARK:
            return cls(stored[1], stored[2], stored[3], stored[4])
        return None

    def stored(self) -> tuple[Any, ...]:
        return (MARK, self.value, self.fresh_until, self.delta, self.generations)


def tag_key(tag: str) -> str:
    """The key of ``tag``'s generation."""
    return TAG_PREFIX + check_key(tag)


def new_generation() -> int:
    """A fresh random generation: never 0, and equal to an earlier one with odds 2**-63."""
    return secrets.randbits(63) | 1


# -- reading ---------------------------------------------------------------------------


def _lookup(
    strategy: Strategy, key: str, tags: Sequence[str]
) -> tuple[Record | None, dict[str, Any]]:
    """The key's record, if its tags are current, and the tags' current generations.

    One batch read. A record that cannot be decoded, or whose tags moved on,
    is ``None``.
    """
    keys = [key, *(TAG_PREFIX + tag for tag in tags)]
    try:
        entries = strategy._load_many(keys)
    except CorruptValue as error:
        if error.context.get("key") != key:
            raise
        log.warning("replacing the computed value at %r: %s", key, error)
        entries = [None, *strategy._load_many(keys[1:])]
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
        if not isinstance(generation, int) or isinstance(generation, bool):
            generations[tag] = strategy.update(
                TAG_PREFIX + tag, _kept_or_new, None, 0
            )  # atomic: racing creators agree on one
    return tuple(generations.items())


def _kept_or_new(generation: Any) -> int:
    if isinstance(generation, int) and not isinstance(generation, bool):
        return generation
    return new_generation()


# -- writing ---------------------------------------------------------------------------


def _store(
    strategy: Strategy,
    key: str,
    policy: Policy,
    value: Any,
    delta: float,
    generations: tuple[tuple[str, int], ...],
) -> None:
    """Store ``value``'s record under ``key``; the caller holds the key's COMPUTE stripe."""
    timeout = strategy.default_timeout() if policy.timeout is None else policy.timeout
    now = time.time()
    if timeout == 0:
        fresh_until, expires = 0.0, 0
    else:
        fresh_until = now + timeout
        expires = min(math.ceil(fresh_until + policy.stale), MAX_EXPIRES)
    raw = strategy._encode(key, Record(value, fresh_until, delta, generations).stored())
    with strategy._modifying((key,)):
        strategy._commit({key: (raw, expires)}, (), {})


# -- serving ---------------------------------------------------------------------------

_MISS: Final = object()


def _serve(
    strategy: Strategy,
    key: str,
    record: Record | None,
    policy: Policy,
    refresh: Callable[[float, bool], None],
) -> Any:
    """The value to return at once from ``record``, starting a refresh if due; else _MISS."""
    if record is None:
        return _MISS
    fresh_until = record.fresh_until
    if fresh_until == 0.0:
        count(strategy, policy, "hits")
        return record.value
    now = time.time()
    if now < fresh_until:
        count(strategy, policy, "hits")
        if policy.beta > 0 and record.delta > 0:
            most = record.delta * policy.beta
            head_start = min(most * -math.log(1.0 - random.random()), most)
            if fresh_until - now <= head_start:
                refresh(fresh_until, True)
        return record.value
    if now < fresh_until + policy.stale:
        count(strategy, policy, "stale")
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
        """Whether the cache of ``owner`` (an ``id``) failed less than RETRY_AFTER s ago."""
        until = self.until.get(owner)
        return until is not None and time.monotonic() < until

    def begin(self, owner: int) -> None:
        self.until[owner] = time.monotonic() + RETRY_AFTER


outage = Outage()


def _fail_open(strategy: Strategy, policy: Policy, error: Exception) -> None:
    """Count a backend failure that will be served uncached; raise it if not failing open."""
    if not policy.fail_open:
        raise error
    count(strategy, policy, "errors")
    if isinstance(error, StorageError):
        outage.begin(id(strategy))
    log.warning("serving %s uncached: %s", policy.name, error)


# -- the single flight -----------------------------------------------------------------


class _Flight:
    """A miss's single flight: hold the COMPUTE stripe, read again, compute if still missing.

    ``with _Flight(...) as flight``: if ``flight.found`` is not ``_MISS``,
    serve it; else compute and call ``flight.done(value, delta)``. Backend
    failures fail open (``flight.found`` stays ``_MISS`` and ``done`` stores
    nothing).
    """

    def __init__(self, strategy: Strategy, key: str, tags: Sequence[str], policy: Policy) -> None:
        self.strategy = strategy
        self.key = key
        self.tags = tags
        self.policy = policy
        self.found: Any = _MISS
        self._generations: tuple[tuple[str, int], ...] | None = None
        self._hold: Any = None

    def __enter__(self) -> _Flight:
        strategy, policy = self.strategy, self.policy
        count(strategy, policy, "misses")
        hold = strategy._hold(
            COMPUTE, (self.key,), strategy.settings.compute_wait, f"computation of {self.key!r}"
        )
        try:
            hold.__enter__()
        except (StorageError, LockTimeout) as error:
            _fail_open(strategy, policy, error)
            return self
        self._hold = hold
        try:
            try:
                record, generations = _lookup(strategy, self.key, self.tags)
                if record is not None and (
                    record.fresh_until == 0.0 or time.time() < record.fresh_until
                ):
                    count(strategy, policy, "joined")
                    self.found = record.value
                else:
                    self._generations = _current_generations(strategy, generations)
            except StorageError as error:
                _fail_open(strategy, policy, error)
        except BaseException:
            self._release(*sys.exc_info())
            raise
        return self

    def done(self, value: Any, delta: float, should_cache: Callable[[Any], bool] | None) -> None:
        """Store the computed ``value`` (unless ``should_cache`` refuses it or the cache failed)."""
        count(self.strategy, self.policy, "computations")
        if self._generations is None or (should_cache is not None and not should_cache(value)):
            return
        try:
            _store(self.strategy, self.key, self.policy, value, delta, self._generations)
        except StorageError as error:
            _fail_open(self.strategy, self.policy, error)

    def _release(self, *exc: Any) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            try:
                hold.__exit__(*exc)
            except StorageError as error:  # the value is computed and served: say why not kept
                log.warning("releasing the computation of %r: %s", self.key, error)

    def __exit__(self, *exc: Any) -> None:
        self._release(*exc)


# -- background refresh ----------------------------------------------------------------


class _Refreshing:
    """The keys this process is refreshing in the background: one thread per key at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: set[tuple[int, str]] = set()


_refreshing = PerProcessValue(_Refreshing)


def _refresh_in_background(
    strategy: Strategy,
    key: str,
    tags: Sequence[str],
    policy: Policy,
    compute: Callable[[], Any],
    should_cache: Callable[[Any], bool] | None,
    seen: float,
    early: bool,
) -> None:
    """Start recomputing ``key`` on a thread of its own, unless this process already is.

    ``seen`` is the ``fresh_until`` of the record that made the caller start
    it: the thread computes only if the record is still that one once it
    holds the COMPUTE stripe, so a value refreshed meanwhile (by another
    process) is not computed again.
    """
    refreshing = _refreshing.get()
    mine = (id(strategy), key)
    with refreshing.lock:
        if mine in refreshing.keys:
            return
        refreshing.keys.add(mine)
    compute = _with_flask_context(compute)

    def run() -> None:
        try:
            _refresh(strategy, key, tags, policy, compute, should_cache, seen, early)
        finally:
            with refreshing.lock:
                refreshing.keys.discard(mine)

    try:
        threading.Thread(target=run, name=f"cachekit refresh {key}", daemon=True).start()
    except BaseException:
        with refreshing.lock:
            refreshing.keys.discard(mine)
        raise


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


def _refresh(
    strategy: Strategy,
    key: str,
    tags: Sequence[str],
    policy: Policy,
    compute: Callable[[], Any],
    should_cache: Callable[[Any], bool] | None,
    seen: float,
    early: bool,
) -> None:
    try:
        with strategy._hold(COMPUTE, (key,), 0.0, f"refresh of {key!r}"):
            record, generations = _lookup(strategy, key, tags)
            if record is not None and record.fresh_until != seen:
                return  # refreshed meanwhile
            fresh = _current_generations(strategy, generations)
            count(strategy, policy, "refreshes")
            if early:
                count(strategy, policy, "early")
            started = time.monotonic()
            value = compute()
            delta = time.monotonic() - started
            count(strategy, policy, "computations")
            if should_cache is None or should_cache(value):
                _store(strategy, key, policy, value, delta, fresh)
    except LockTimeout:
        pass  # another thread or process is computing it
    except Exception:
        log.exception(
            "refreshing %s (key %r) failed; the old value is served meanwhile", policy.name, key
        )
        count(strategy, policy, "refresh_errors")
    finally:
        strategy._finished()


# -- the entry points ------------------------------------------------------------------


_UNCACHED: Final = object()


def _at_once(
    strategy: Strategy,
    key: str,
    compute: Callable[[], Any],
    policy: Policy,
    tags: Sequence[str],
    should_cache: Callable[[Any], bool] | None,
) -> Any:
    """What a call gets without computing in the foreground: a value, _MISS or _UNCACHED.

    ``compute`` is what a background refresh runs; _UNCACHED means the cache
    failed (fail open: compute and return, storing nothing).
    """
    if outage.skip(id(strategy)):
        count(strategy, policy, "errors")
        return _UNCACHED
    try:
        record, _ = _lookup(strategy, key, tags)
    except StorageError as error:
        _fail_open(strategy, policy, error)
        return _UNCACHED

    def refresh(seen: float, early: bool) -> None:
        _refresh_in_background(strategy, key, tags, policy, compute, should_cache, seen, early)

    return _serve(strategy, key, record, policy, refresh)


def fetch(
    strategy: Strategy,
    key: str,
    compute: Callable[[], T],
    policy: Policy,
    tags: Sequence[str] = (),
    should_cache: Callable[[Any], bool] | None = None,
) -> T:
    """``key``'s value: served, refreshed or computed once, as the module describes."""
    try:
        found = _at_once(strategy, key, compute, policy, tags, should_cache)
        if found is _UNCACHED:
            return compute()
        if found is not _MISS:
            return found  # type: ignore[no-any-return]
        with _Flight(strategy, key, tags, policy) as flight:
            if flight.found is not _MISS:
                return flight.found  # type: ignore[no-any-return]
            started = time.monotonic()
            value = compute()
            flight.done(value, time.monotonic() - started, should_cache)
            return value
    finally:
        strategy._finished()


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
    try:
        found = _at_once(
            strategy, key, lambda: asyncio.run(_awaited(compute)), policy, tags, should_cache
        )
        if found is _UNCACHED:
            return await compute()
        if found is not _MISS:
            return found  # type: ignore[no-any-return]
        with _Flight(strategy, key, tags, policy) as flight:
            if flight.found is not _MISS:
                return flight.found  # type: ignore[no-any-return]
            started = time.monotonic()
            value = await compute()
            flight.done(value, time.monotonic() - started, should_cache)
            return value
    finally:
        strategy._finished()


async def _awaited(compute: Callable[[], Awaitable[T]]) -> T:
    return await compute()


def forget(strategy: Strategy, key: str) -> None:
    """Delete ``key``'s value, after any computation of it in flight has stored its own."""
    check_key(key)
    with (
        strategy._hold(COMPUTE, (key,), strategy.settings.compute_wait, f"computation of {key!r}"),
        strategy._modifying((key,)),
    ):
        if strategy._load_many([key])[0] is not None:
            strategy._commit({}, (key,), {})


def invalidate(strategy: Strategy, tags: Iterable[str]) -> None:
    """Give each tag a new generation: every value computed under the old one is gone.

    Raises (never fails open): a call that returns has invalidated every tag.
    """
    for tag in tags:
        strategy.update(tag_key(tag), _new_generation_of, None, 0)


def _new_generation_of(_: Any) -> int:
    return new_generation()


def statistics(strategy: Strategy, merged: bool) -> dict[str, dict[str, int]]:
    """Per-function figures: every process's (``merged``, as flushed) or this one's."""
    figures: dict[str, dict[str, int]] = {}
    if merged:
        names = sorted(NAMES.copy())
        keys = [f"cachekit:stats:{STATS_PREFIX}{n}:{c}" for n in names for c in COUNTERS]
        entries = iter(strategy._load_many(keys)) if keys else iter(())
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
